"""One 2-process DDP run (Lightning's launcher, gloo, 2 staged workers a rank) of a model that only
unpacks ``x, y = batch``: every train row read once across the ranks, as tuples, and both ranks on
rank 0's ``seed_everything`` seed though each rank seeded itself differently."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from lance_lightning import LanceDataModule
from tests.distributed._ddp import clean_env, run_processes

pytestmark = pytest.mark.distributed
SCRIPT = Path(__file__).parent / "scripts" / "batch_keys_ddp.py"


def test_tuple_batches_and_one_seed_under_ddp(tmp_path):
    rows = 80
    x = np.zeros((rows, 4), dtype=np.float32)
    x[:, 0] = np.arange(rows)  # x[:, 0] is the row id: the model records it
    data = pa.table(
        {"x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4), "y": (np.arange(rows) % 3).astype(np.int64)}
    )
    uri = str(tmp_path / "db")
    lancedb.connect(uri).create_table("rows", data)
    out = tmp_path / "out"
    out.mkdir()
    run_processes([([sys.executable, str(SCRIPT), uri, str(out), "2"], clean_env())], tmp_path, "batch-keys")
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["seed"], r["seed_from"]) for r in records] == [(11, "seed_everything")] * 2
    expected = LanceDataModule(uri, "rows", columns=["x"], splits={"train": 64, "val": 16}, seed=11)
    expected.setup("fit")
    train_ids = sorted(expected.datasets["train"][np.arange(64)]["x"][:, 0].long().tolist())
    read = [i for r in records for i in r["ids"]]
    assert len(records[0]["ids"]) == len(records[1]["ids"]) == 32
    assert sorted(read) == train_ids  # every train row of seed 11's split, once
