"""Workers of a staged split hand their batches over through reused shared-memory slots
(lance_lightning/slots.py): every batch a loop receives is its own, exact, whatever it keeps,
edits or leaves unread, and a slot is reused only once its batch was copied out or dropped."""

from __future__ import annotations

import gc
import os
import pickle
import time

import numpy as np
import pytest
import torch

import lance_lightning.slots as slot_layer
from lance_lightning import LanceDataModule
from lance_lightning.dataset import StagedBatchDataset
from lance_lightning.slots import ALIGN
from tests.conftest import toy_database, toy_table

ROWS = 100_000  # 16 batches of 1,024 rows make one hand-over: ~6 of them an epoch
BATCH = 1024


@pytest.fixture(scope="module")
def table_uri(tmp_path_factory):
    return toy_database(tmp_path_factory, "slots", ROWS)


@pytest.fixture(scope="module")
def expected_x():
    x = toy_table(ROWS).column("x").combine_chunks().flatten().to_numpy()
    return x.reshape(ROWS, -1)


def staged(uri: str, **kwargs) -> LanceDataModule:
    settings = {"columns": ["id", "x", "y"], "batch_size": BATCH, "seed": 3, "splits": {"train": 1.0}}
    dm = LanceDataModule(uri, "toy", **{**settings, **kwargs})
    dm.setup("fit")
    assert isinstance(dm.datasets["train"], StagedBatchDataset)
    return dm


def epoch(dm: LanceDataModule, number: int, loader_=None) -> list[dict[str, torch.Tensor]]:
    dm.samplers["train"].set_epoch(number)
    return list(loader_ if loader_ is not None else dm.train_dataloader())


def check_rows(batches: list[dict[str, torch.Tensor]], expected_x: np.ndarray) -> list[int]:
    ids = []
    for batch in batches:
        got = batch["id"].numpy()
        np.testing.assert_array_equal(batch["x"].numpy(), expected_x[got])
        np.testing.assert_array_equal(batch["y"].numpy(), got % 3)
        ids.extend(got.tolist())
    return ids


def slot_flags(train_loader) -> list[int]:
    slots = train_loader._iterator._lance_slots
    return [int(ring.busy.sum()) for ring in slots.rings]


@pytest.mark.parametrize("context", [None, "forkserver"], ids=["fork", "forkserver"])
def test_kept_batches_stay_exact_while_the_slots_are_reused(table_uri, expected_x, context):
    """Two epochs' batches, every one kept until the end: each still holds its own rows (a slot
    reused for a later batch never shows through), in the same order as without workers. Forked
    workers inherit the slots; fork-server ones receive them with the dataset."""
    reference = staged(table_uri)
    want = [epoch(reference, n) for n in range(2)]
    dm = staged(table_uri, num_workers=2, persistent_workers=True, multiprocessing_context=context)
    train = dm.train_dataloader()
    kept = [epoch(dm, n, train) for n in range(2)]
    assert train._iterator._lance_slots is not None
    for n in range(2):
        assert [b["id"].tolist() for b in kept[n]] == [b["id"].tolist() for b in want[n]]
        assert sorted(check_rows(kept[n], expected_x)) == list(range(ROWS))
        # copied out of the slots: the training process's own memory, not a worker's
        assert not any(t.is_shared() for b in kept[n] for t in b.values())
    assert slot_flags(train) == [0, 0]  # every slot free once its batch was taken
    assert all(ring.slot_bytes % ALIGN == 0 for ring in train._iterator._lance_slots.rings)
    # once the workers have them, the dataset lets go of its slots: pickling it (to spawn a
    # process, as ddp_spawn does) or forking a second plain DataLoader over it sees none
    assert dm.datasets["train"].slots is None
    assert pickle.loads(pickle.dumps(dm.datasets["train"])).slots is None


def test_a_loop_stopped_early_frees_the_slots_of_batches_it_never_read(table_uri, expected_x):
    dm = staged(table_uri, num_workers=2, persistent_workers=True)
    train = dm.train_dataloader()
    dm.samplers["train"].set_epoch(0)
    for i, _batch in enumerate(train):
        if i == 2:
            break  # the workers have more hand-overs in flight
    full = epoch(dm, 1, train)  # the persistent workers drop what the stopped epoch left unread
    gc.collect()
    assert sorted(check_rows(full, expected_x)) == list(range(ROWS))
    assert slot_flags(train) == [0, 0]


def test_with_every_slot_busy_a_worker_hands_over_fresh_shared_memory(table_uri, expected_x, monkeypatch):
    """One slot a worker and a slow loop: the worker's next hand-over finds its slot still held and
    goes the old way (fresh shared memory). Both kinds arrive exact, in order."""
    monkeypatch.setattr(slot_layer, "SPARE_SLOTS", -1)  # prefetch_factor 2 - 1: one slot a worker
    reference = staged(table_uri)
    want = [b["id"].tolist() for b in epoch(reference, 0)]
    dm = staged(table_uri, num_workers=2)
    dm.samplers["train"].set_epoch(0)
    got = []
    for batch in dm.train_dataloader():
        got.append(batch)
        time.sleep(0.02)  # the step: the workers fill their slot and wait
    assert [b["id"].tolist() for b in got] == want
    assert sorted(check_rows(got, expected_x)) == list(range(ROWS))
    shared = [all(t.is_shared() for t in b.values()) for b in got]
    assert any(shared) and not all(shared), "expected batches through a slot and batches past busy slots"


def double_x(batch):
    batch["x"] = batch["x"] * 2
    return batch


def in_a_slot(tensor: torch.Tensor, train_loader) -> bool:
    """Whether ``tensor`` lies in one of the loader's slot blocks (lent, not fresh memory)."""
    address = tensor.untyped_storage().data_ptr()
    rings = train_loader._iterator._lance_slots.rings
    return any(r._block is not None and 0 <= address - r._block.data_ptr() < r._block.numel() for r in rings)


@pytest.mark.parametrize("context", [None, "forkserver"], ids=["fork", "forkserver"])
def test_a_transforms_output_is_lent_from_reused_slots_and_kept_batches_stay_exact(table_uri, expected_x, context):
    """With a transform, the workers copy its output into slots sized from the first batch; the
    loop gets views of them, and a slot is reused only once the batch it lent is gone: batches a
    loop keeps stay exact (later ones then come in fresh memory), the same rows in the same order
    as without workers."""
    reference = [b["id"].tolist() for b in epoch(staged(table_uri, transform=double_x), 0)]
    dm = staged(table_uri, num_workers=2, transform=double_x, multiprocessing_context=context)
    train = dm.train_dataloader()
    dm.samplers["train"].set_epoch(0)
    kept, lent = [], []
    for i, batch in enumerate(train):
        lent.append(in_a_slot(batch["x"], train))
        if i % 2 == 0:
            kept.append(batch)  # every other batch kept to the end: its slot stays busy
        else:
            np.testing.assert_array_equal(batch["x"].numpy(), 2 * expected_x[batch["id"].numpy()])
        del batch
    assert [b["id"].tolist() for b in kept] == reference[::2]
    for batch in kept:
        np.testing.assert_array_equal(batch["x"].numpy(), 2 * expected_x[batch["id"].numpy()])
        np.testing.assert_array_equal(batch["y"].numpy(), batch["id"].numpy() % 3)
    assert sum(lent) > len(train._iterator._lance_slots.rings) * 4, "expected slots reused across the epoch"
    assert dm.datasets["train"].slots is None
    rings = train._iterator._lance_slots.rings
    assert all(r.slot_bytes == 0 for r in rings)  # the workers size their own; this process only maps the block
    image_bytes = BATCH * expected_x.shape[1] * 4 + BATCH * 8 * 2  # x, id and y of a batch
    # made by each worker at its first batch: its slots, each the batch's bytes and 25% more
    assert all(r._block.numel() <= 4 * (1.25 * image_bytes + slot_layer.SLOT_ROUND + 3 * ALIGN) for r in rings)


def note_shared(batch):
    return {**batch, "rows_shared": torch.full((len(batch["id"]),), batch["x"].is_shared())}


@pytest.mark.parametrize("output_slots", [True, False], ids=["slots", "no-slots"])
def test_a_transform_reads_rows_in_the_workers_own_memory_when_its_output_is_lent(
    table_uri, expected_x, monkeypatch, output_slots
):
    """Where a transform's output goes into a slot, the rows it is given are gathered into the
    worker's own memory (fresh shared memory would be made and dropped every batch); without output
    slots they stay in shared memory, so a column the transform passes on is handed over without a
    copy. Either way the same rows, in the same order, as without workers."""
    import lance_lightning.loader as loader_layer

    monkeypatch.setattr(loader_layer, "OUTPUT_SLOTS", output_slots)
    reference = [b["id"].tolist() for b in epoch(staged(table_uri, transform=note_shared), 0)]
    batches = epoch(staged(table_uri, num_workers=2, transform=note_shared), 0)
    assert [b["id"].tolist() for b in batches] == reference
    check_rows(batches, expected_x)
    assert {bool(b["rows_shared"].all()) for b in batches} == {not output_slots}


def test_dropped_lent_batches_free_their_slots(table_uri, expected_x):
    dm = staged(table_uri, num_workers=2, transform=double_x, persistent_workers=True)
    train = dm.train_dataloader()
    for number in (0, 1):
        dm.samplers["train"].set_epoch(number)
        ids = []
        for batch in train:
            np.testing.assert_array_equal(batch["x"].numpy(), 2 * expected_x[batch["id"].numpy()])
            ids.extend(batch["id"].tolist())
        del batch
        assert sorted(ids) == list(range(ROWS))
        gc.collect()
        slots = train._iterator._lance_slots
        slots.free_returned()
        assert slot_flags(train) == [0, 0]


def grow(batch):
    """An output that grows with the batch's first id: later batches outgrow the first one's slot."""
    times = 1 + int(batch["id"][0]) % 4
    return {"id": batch["id"], "x": batch["x"].repeat(1, times), "times": np.array([times])}


def test_an_output_over_its_slot_is_handed_over_whole_in_fresh_memory(table_uri, expected_x):
    """Slots are sized from the first batch (and 25% more): a larger batch is never cut to fit, it
    goes in fresh shared memory; NumPy output still arrives as tensors, as DataLoader's collate makes it."""
    reference = [(b["id"].tolist(), b["times"].tolist()) for b in epoch(staged(table_uri, transform=grow), 0)]
    dm = staged(table_uri, num_workers=2, transform=grow)
    train = dm.train_dataloader()
    dm.samplers["train"].set_epoch(0)
    lent = {}
    got = []
    for batch in train:
        assert isinstance(batch["times"], torch.Tensor)
        ids, times = batch["id"].numpy(), int(batch["times"][0])
        np.testing.assert_array_equal(batch["x"].numpy(), np.tile(expected_x[ids], (1, times)))
        lent.setdefault(in_a_slot(batch["x"], train), set()).add(times)
        got.append((batch["id"].tolist(), batch["times"].tolist()))
    assert got == reference
    assert lent.get(True) and lent.get(False), lent  # some through a slot, the largest past it


def test_slot_sizing_never_hands_out_a_batch_over_its_slot():
    """The unit under the test above: a slot is sized from the first output; an output that does
    not fit is refused whole (None), one that fits is copied exactly."""
    from lance_lightning.slots import LentBatch, lend_into_slot, output_slots

    slots = output_slots(1, 2)
    first = {"a": torch.arange(1000, dtype=torch.int64), "b": torch.ones(3, 5)}
    lent = lend_into_slot(slots, 0, first)
    assert isinstance(lent, LentBatch)
    ring = slots.rings[0]
    assert ring.slot_bytes >= 1.25 * (8000 + 64) and ring.slot_bytes % slot_layer.SLOT_ROUND == 0
    over = {"a": torch.arange(ring.slot_bytes // 8 + 1, dtype=torch.int64)}
    assert lend_into_slot(slots, 0, over) is None
    lent._receiver = os.getpid()
    lent._slots = slots
    back = lent.take()
    assert torch.equal(back["a"], first["a"]) and torch.equal(back["b"], first["b"])


def wide_table(tmp_path, rows: int = 1500, width: int = 16_384) -> tuple[str, np.ndarray]:
    """Rows of ``width`` float32 (64 KB: an image each, say) and their ``id``."""
    import lancedb
    import pyarrow as pa

    values = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    table = pa.table(
        {"id": np.arange(rows), "pixels": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), width)}
    )
    uri = str(tmp_path / "db")
    lancedb.connect(uri).create_table("wide", table)
    return uri, values


def test_wide_rows_are_handed_over_a_few_megabytes_at_a_time(tmp_path):
    """Rows of 64 KB (an image each, say): a worker hands over at most READ_GROUP_BYTES at a
    time instead of 16k rows (1 GB here), and every row still arrives exact."""
    from lance_lightning.assembly import READ_GROUP_BYTES

    uri, values = wide_table(tmp_path)
    rows, width = values.shape
    dm = LanceDataModule(uri, "wide", batch_size=64, seed=1, splits={"train": 1.0}, num_workers=2)
    dm.setup("fit")
    sampler = dm.samplers["train"]
    assert 1 < sampler.group_batches < 1500 // 64  # several hand-overs, of several batches each
    assert sampler.group_batches * 64 * width * 4 <= READ_GROUP_BYTES
    dm.samplers["train"].set_epoch(0)
    train = dm.train_dataloader()
    seen = []
    for batch in train:
        ids = batch["id"].numpy()
        np.testing.assert_array_equal(batch["pixels"].numpy(), values[ids])
        seen.extend(ids.tolist())
    assert sorted(seen) == list(range(rows))
    slots = train._iterator._lance_slots
    assert slots is not None and slots.rings[0].slot_bytes <= READ_GROUP_BYTES + 4096


def test_wide_rows_read_from_the_table_in_bounded_range_scans(tmp_path):
    """In table order (predict, val, ``shuffle="none"``) ~16k rows are read at a time; rows of
    64 KB come READ_GROUP_BYTES at a time instead (1 GB a read otherwise), every row exact."""
    from lance_lightning.assembly import READ_GROUP_BYTES

    uri, values = wide_table(tmp_path)
    dm = LanceDataModule(uri, "wide", splits=None, eval_batch_size=64)
    dm.setup("predict")
    group = dm.samplers["predict"].group_batches
    assert 1 < group < len(values) // 64 and group * 64 * values.shape[1] * 4 <= READ_GROUP_BYTES
    ids = []
    for batch in dm.predict_dataloader():
        np.testing.assert_array_equal(batch["pixels"].numpy(), values[batch["id"].numpy()])
        ids.extend(batch["id"].tolist())
    assert ids == list(range(len(values)))
