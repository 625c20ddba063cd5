"""Every supported Arrow type, written to a real table and read back through the datamodule."""

from __future__ import annotations

import datetime

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from lance_lightning import LanceBatchDataset, LanceBatchSampler, LanceDataModule

N = 24


def every_type_table() -> pa.Table:
    rng = np.random.default_rng(0)
    bf16 = torch.arange(N, dtype=torch.float32).to(torch.bfloat16)
    columns = {
        "id": pa.array(np.arange(N, dtype=np.int64)),
        "i8": pa.array(np.arange(N, dtype=np.int8)),
        "i16": pa.array(np.arange(N, dtype=np.int16)),
        "i32": pa.array(np.arange(N, dtype=np.int32)),
        "u8": pa.array(np.arange(N, dtype=np.uint8)),
        "u32": pa.array(np.arange(N, dtype=np.uint32)),
        "f16": pa.array(np.arange(N, dtype=np.float16)),
        "f32": pa.array(rng.standard_normal(N).astype(np.float32)),
        "f64": pa.array(rng.standard_normal(N)),
        "flag": pa.array(np.arange(N) % 2 == 0),
        "emb": pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(N * 3).astype(np.float32)), 3),
        "grid": pa.FixedSizeListArray.from_arrays(
            pa.FixedSizeListArray.from_arrays(pa.array(np.arange(N * 4, dtype=np.int32)), 2), 2
        ),
        "img": pa.FixedShapeTensorArray.from_numpy_ndarray(rng.standard_normal((N, 2, 3)).astype(np.float32)),
        "text": pa.array([f"row {i} ü" for i in range(N)]),
        "big_text": pa.array([f"t{i}" for i in range(N)], pa.large_string()),
        "blob": pa.array([bytes([i, 0, 255]) for i in range(N)]),
        "ragged": pa.array([list(range(i % 4)) for i in range(N)], pa.list_(pa.int64())),
        "ts": pa.array(
            [datetime.datetime(2024, 1, 1) + datetime.timedelta(seconds=i) for i in range(N)], pa.timestamp("ms")
        ),
    }
    table = pa.table(columns)
    bf_field = pa.field("bf16", pa.binary(2), metadata={"ARROW:extension:name": "lance.bfloat16"})
    bf_array = pa.Array.from_buffers(pa.binary(2), N, [None, pa.py_buffer(bf16.view(torch.int16).numpy().tobytes())])
    return table.append_column(bf_field, bf_array)


def test_every_type_round_trips_through_a_real_table(make_table):
    source = every_type_table()
    uri, _ = make_table("types", source)
    dm = LanceDataModule(uri, "types", splits={"train": 1.0}, batch_size=5, shuffle="uniform", seed=2)
    dm.setup("fit")
    expected = {
        "i8": torch.int8,
        "i16": torch.int16,
        "i32": torch.int32,
        "u8": torch.uint8,
        "u32": torch.int64,
        "f16": torch.float16,
        "f32": torch.float32,
        "f64": torch.float64,
        "flag": torch.bool,
        "emb": torch.float32,
        "grid": torch.int32,
        "img": torch.float32,
        "ts": torch.int64,
        "bf16": torch.bfloat16,
    }
    seen = 0
    for batch in dm.train_dataloader():
        rows = batch["id"].tolist()
        seen += len(rows)
        for name, dtype in expected.items():
            assert batch[name].dtype == dtype, name
        assert batch["emb"].shape == (len(rows), 3)
        assert batch["grid"].shape == (len(rows), 2, 2)
        assert batch["img"].shape == (len(rows), 2, 3)
        for pos, i in enumerate(rows):
            for name in ("i8", "i16", "i32", "u8", "u32", "f16", "f32", "f64", "flag", "emb", "grid"):
                assert batch[name][pos].tolist() == source[name][i].as_py(), name
            assert batch["img"][pos].tolist() == source["img"].chunk(0).to_numpy_ndarray()[i].tolist()
            assert batch["text"][pos] == source["text"][i].as_py()
            assert batch["big_text"][pos] == source["big_text"][i].as_py()
            assert batch["blob"][pos] == source["blob"][i].as_py()
            assert batch["ragged"][pos].tolist() == source["ragged"][i].as_py()
            assert batch["ts"][pos].item() == source["ts"].cast(pa.int64())[i].as_py()
            assert batch["bf16"][pos].item() == float(i)
    assert seen == N


def test_plain_pytorch_dataloader_without_lightning(make_table):
    """The public dataset and sampler give the datamodule's batches to a plain DataLoader."""
    uri, _ = make_table("toy", 50)
    dm = LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=8, seed=4)
    dm.setup("fit")
    split = dm.splits["train"]
    dataset = LanceBatchDataset.of_rows(split.source, ["id", "x"], split.row_ids)  # position i: i-th row of the split
    sampler = LanceBatchSampler(len(split), batch_size=8, shuffle="uniform", seed=4)
    sampler.set_epoch(1)
    dm.samplers["train"].set_epoch(1)
    plain = [b["id"].tolist() for b in DataLoader(dataset, sampler=sampler, batch_size=None)]
    assert plain == [b["id"].tolist() for b in dm.train_dataloader()]
    assert sorted(i for b in plain for i in b) == list(range(50))
