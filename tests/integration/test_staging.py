"""Staging through a real LanceDataModule: a staged split reads exactly what the table reads.

Each test sets up real datamodules on on-disk tables and compares what a staged split yields
(the default for the ``uniform`` train split; every split with ``staging='always'``, ``cache=`` or
``in_memory=True``) with the same datamodule reading the table (``staging='off'``): same batches,
same order, same values. Also: the fallback to the table when a split does not fit the staging
budget, a new stage for a new table version, a corrupted stage rebuilt at the next setup, and an
exact mid-epoch resume with workers. The stage layer itself (every column type, eviction, damage of
each file, fills racing across processes) is tested in tests/integration/test_stage.py and
tests/faults/test_stage_integrity.py.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import pytest
import torch

from lance_lightning import LanceBatchDataset, LanceDataModule
from lance_lightning.assembly import MemoryBudgetError
from lance_lightning.dataset import StagedBatchDataset
from lance_lightning.stage import StageBudgetError, StageWarning, release_stage
from tests import helpers
from tests.conftest import toy_table
from tests.helpers import Preempted, SaveThenStop, quiet_trainer

COLUMNS = ["id", "x", "y"]


class Recorder(helpers.Recorder):
    """Records every train and val batch (ids in the order they came) and whether the train batch's
    tensors were in shared memory (a worker's) when they reached the training step."""

    def __init__(self) -> None:
        super().__init__()
        self.val_seen: list[list[int]] = []
        self.shared: list[bool] = []

    def training_step(self, batch, batch_idx):
        self.shared.append(all(t.is_shared() for t in batch.values() if isinstance(t, torch.Tensor)))
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.val_seen.append(batch["id"].tolist())


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    return quiet_trainer(tmp_path, **{"max_epochs": 3, "num_sanity_val_steps": 0, **kwargs})


def datamodule(uri: str, **kwargs) -> LanceDataModule:
    settings = {"columns": COLUMNS, "batch_size": 16, "seed": 7}
    return LanceDataModule(uri, "toy", **{**settings, **kwargs})


def fit(tmp_path, uri: str, **kwargs) -> tuple[Recorder, LanceDataModule]:
    model, dm = Recorder(), datamodule(uri, **kwargs)
    trainer(tmp_path).fit(model, datamodule=dm)
    return model, dm


def epoch(dm: LanceDataModule, number: int, stage: str = "train") -> list[list[int]]:
    """The batches (ids) of one epoch of ``stage``, through the datamodule's own loader."""
    dm.samplers[stage].set_epoch(number)
    return [b["id"].tolist() for b in getattr(dm, f"{stage}_dataloader")()]


def epochs(dm: LanceDataModule, count: int = 2, stage: str = "train") -> list[list[list[int]]]:
    return [epoch(dm, n, stage) for n in range(count)]


def staged_train(uri: str, root: Path, **kwargs) -> tuple[LanceDataModule, Path]:
    """A datamodule set up with its one split, train, staged under ``root``; and the stage's path."""
    dm = datamodule(uri, splits={"train": 1.0}, cache=str(root), **kwargs)
    dm.setup("fit")
    return dm, dm.datasets["train"].staged.path


def stage_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def assert_rows_are_the_tables(dm: LanceDataModule, stage: str = "train") -> None:
    """Every row of ``stage``'s split read through its dataset: the table's values, exactly."""
    dataset = dm.datasets[stage]
    batch = dataset[np.arange(len(dataset))]
    want = toy_table(int(batch["id"].max()) + 1)  # id == row number: one fragment
    ids = batch["id"].numpy()
    x = want.column("x").combine_chunks().flatten().to_numpy().reshape(want.num_rows, -1)
    np.testing.assert_array_equal(batch["x"].numpy(), x[ids])
    np.testing.assert_array_equal(batch["y"].numpy(), want.column("y").to_numpy()[ids])


# -- (1, 2) the default staged train split reads what the table reads ------------------------------


@pytest.mark.parametrize(
    "settings",
    [{}, {"num_workers": 2}, {"in_memory": True}, {"staging": "off"}, {"shuffle": "none", "staging": "always"}],
    ids=["staged", "staged-2w", "in-memory", "table", "staged-sequential"],
)
def test_a_batch_edited_in_place_changes_no_later_read(make_table, settings):
    """A training step or transform that edits its batch in place (``x -= mean``) must not reach the
    stage, the in-memory copy or a later epoch: every batch is the table's values, every epoch."""
    uri, _ = make_table("toy", 120)
    dm = datamodule(uri, splits={"train": 1.0}, **settings)
    dm.setup("fit")
    want = toy_table(120)
    x = want.column("x").combine_chunks().flatten().to_numpy().reshape(want.num_rows, -1)
    for number in range(2):
        dm.samplers["train"].set_epoch(number)
        seen = []
        for batch in dm.train_dataloader():
            ids = batch["id"].numpy().copy()
            np.testing.assert_array_equal(batch["x"].numpy(), x[ids])
            np.testing.assert_array_equal(batch["y"].numpy(), want.column("y").to_numpy()[ids])
            seen.extend(ids.tolist())
            batch["x"].mul_(-1000.0)
            batch["id"].add_(7)
            batch["y"].zero_()
        assert sorted(seen) == list(range(120)), number
    dm.teardown("fit")


@pytest.mark.parametrize(
    ("staging", "num_workers"), [("auto", 0), ("auto", 2), ("always", 0)], ids=["default", "default-2w", "always"]
)
def test_staged_splits_read_the_same_batches_in_the_same_order_as_the_table(make_table, tmp_path, staging, num_workers):
    uri, _ = make_table("toy", 301)
    reference, off = fit(tmp_path, uri, staging="off")
    assert isinstance(off.datasets["train"], LanceBatchDataset)
    model, dm = fit(tmp_path, uri, staging=staging, num_workers=num_workers)
    assert isinstance(dm.datasets["train"], StagedBatchDataset)
    assert model.seen == reference.seen  # 3 epochs of the uniform shuffle, batch for batch
    assert model.val_seen == reference.val_seen
    train_ids = sorted(dm.splits["train"].row_ids.tolist())  # row address == id: one fragment
    per_epoch = len(model.seen) // 3
    for n in range(3):
        assert sorted(i for b in model.seen[n * per_epoch : (n + 1) * per_epoch] for i in b) == train_ids
    if staging == "always" or num_workers:  # with workers val is staged too: they fork, not wait for a server
        assert isinstance(dm.datasets["val"], StagedBatchDataset)
    else:  # the default stages only the scattered train reads; val is read in table order
        assert isinstance(dm.datasets["val"], LanceBatchDataset)
    if num_workers:  # gathered by the workers into their batch slots, copied out for the step to keep
        assert not any(model.shared), model.shared


# -- (3) in_memory: the same stage, pre-faulted, within a memory budget --------------------------


def test_in_memory_gives_the_same_batches_and_reads_string_columns(make_table):
    uri, table = make_table("toy", 301)
    off = datamodule(uri, staging="off")
    memory = datamodule(uri, in_memory=True)
    off.setup("fit")
    memory.setup("fit")
    for stage in ("train", "val"):  # in_memory stages every split
        assert isinstance(memory.datasets[stage], StagedBatchDataset)
        assert memory.datasets[stage].staged.prefault
        assert epochs(memory, 2, stage) == epochs(off, 2, stage)
    assert_rows_are_the_tables(memory)
    # strings (once refused by in_memory: they convert to lists) are staged in the Arrow file
    names = datamodule(uri, columns=["id", "name"], in_memory=True, splits={"train": 1.0})
    names.setup("fit")
    seen = [(i, n) for b in names.train_dataloader() for i, n in zip(b["id"].tolist(), b["name"])]
    assert len(seen) == 301
    want = dict(zip(table.to_arrow()["id"].to_pylist(), table.to_arrow()["name"].to_pylist()))
    assert all(name == want[i] for i, name in seen)
    assert sorted(i for i, _ in seen) == list(range(301))


def test_in_memory_over_its_memory_budget_is_refused_naming_split_and_setting(make_table):
    uri, _ = make_table("toy", 1000)
    too_small = datamodule(uri, in_memory=True, memory_budget_bytes=1000)
    with pytest.raises(
        MemoryBudgetError, match=r"split 'train' needs about .* MiB in memory .*memory_budget_bytes=1,000"
    ):
        too_small.setup("fit")


# -- (4) a split over the staging budget --------------------------------------------------------


def test_a_split_over_the_budget_is_read_from_the_table_by_default_and_refused_when_staging_is_asked(make_table):
    uri, _ = make_table("toy", 301)
    off = datamodule(uri, staging="off")
    off.setup("fit")
    small = datamodule(uri, cache_max_bytes=1000)
    with pytest.warns(UserWarning) as caught:
        small.setup("fit")
    messages = [str(w.message) for w in caught if "read from the table" in str(w.message)]
    assert len(messages) == 1, [str(w.message) for w in caught]
    for part in ("split 'train'", "read from the table", "cache_max_bytes=1,000", "shuffle='block'"):
        assert part in messages[0], (part, messages[0])
    assert isinstance(small.datasets["train"], LanceBatchDataset)
    assert epochs(small, 2) == epochs(off, 2)  # the table gives exactly the right rows
    assert_rows_are_the_tables(small)
    always = datamodule(uri, cache_max_bytes=1000, staging="always")
    with pytest.raises(StageBudgetError, match=r"split 'train'.*cache_max_bytes=1,000"):
        always.setup("fit")


SKEWED_ROWS, SMALL_ROWS, LARGE = 4000, 1024, 16_000


def skewed_table() -> pa.Table:
    """``id`` and ``blob``: 8 bytes in the first 1,024 rows (what the size estimate samples), 16 KB after."""
    rng = np.random.default_rng(0)
    blobs = [rng.bytes(8 if i < SMALL_ROWS else LARGE) for i in range(SKEWED_ROWS)]
    return pa.table({"id": np.arange(SKEWED_ROWS, dtype=np.int64), "blob": pa.array(blobs, pa.binary())})


def test_a_low_estimate_stops_the_copy_once_it_passes_the_budget(make_table, tmp_path, monkeypatch):
    data = skewed_table()  # ~48 MB of blobs, estimated at ~150 KB
    uri, table = make_table("toy", data.slice(0, 1000))
    for start in range(1000, SKEWED_ROWS, 1000):  # four fragments: the copy reads one at a time
        table.add(data.slice(start, 1000))
    root = tmp_path / "stages"
    settings = {"columns": ["id", "blob"], "splits": {"train": 1.0}, "cache_max_bytes": 4_000_000}
    dm = LanceDataModule(uri, "toy", cache=str(root), **settings)
    with pytest.raises(StageBudgetError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "split 'train'" in message and "cache_max_bytes=4,000,000" in message, message
    done = int(message.split("the estimate was low: after ")[1].split(" of ")[0].replace(",", ""))
    assert done < SKEWED_ROWS, message  # stopped while copying (measured: after 2,000 rows)
    assert [p.name for p in root.iterdir()] == [".lock"]  # no stage, no half-made copy
    # default staging (the default root: this test's own, so that stages earlier tests of the session
    # still hold do not count against its budget): read from the table instead
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    fallback = LanceDataModule(uri, "toy", **settings)
    with pytest.warns(UserWarning, match=r"split 'train' .*read from the table.*the estimate was low"):
        fallback.setup("fit")
    ids = sorted(i for b in fallback.train_dataloader() for i in b["id"].tolist())
    assert ids == list(range(SKEWED_ROWS))


def test_a_split_that_can_never_fit_evicts_no_other_stage(make_table, tmp_path):
    uri, _ = make_table("toy", 301)
    root = tmp_path / "stages"
    first, kept = staged_train(uri, root)
    release_stage(kept)  # as if its job had ended: not in use, evictable when room is needed
    first.datasets["train"].staged.close()
    too_big = datamodule(uri, columns=["id", "x"], splits={"train": 1.0}, cache=str(root), cache_max_bytes=1000)
    with pytest.raises(StageBudgetError, match="more than the whole budget"):
        too_big.setup("fit")
    assert kept.exists()  # evicting it could not have made room


# -- (5) block is read from the table unless staging is asked --------------------------------------


def test_block_shuffle_is_not_staged_by_default_and_staged_block_reads_the_same(make_table):
    uri, _ = make_table("toy", 301)
    block = {"shuffle": "block", "block_size": 8, "window_blocks": 3}
    default = datamodule(uri, **block)
    default.setup("fit")
    assert isinstance(default.datasets["train"], LanceBatchDataset)  # range scans: fast from the table
    staged = datamodule(uri, staging="always", **block)
    staged.setup("fit")
    assert isinstance(staged.datasets["train"], StagedBatchDataset)
    assert epochs(staged, 2) == epochs(default, 2)
    assert epochs(staged, 1, "val") == epochs(default, 1, "val")


# -- (6) a new table version is a new stage; the old one serves the pinned version ---------------


def fill_id(path: Path) -> str:
    return json.loads((path / "manifest.json").read_text())["fill_id"]


def test_a_new_table_version_gets_a_new_stage_and_the_old_one_serves_the_pinned_version(make_table, tmp_path):
    uri, table = make_table("toy", 200)
    root = tmp_path / "stages"
    old, old_path = staged_train(uri, root)
    old_batches = epochs(old, 2)
    assert stage_dirs(root) == [old_path]
    filled = fill_id(old_path)
    table.add(toy_table(260).slice(200))  # version 2: 60 more rows
    new, new_path = staged_train(uri, root)
    assert (old.table_version, new.table_version) == (1, 2)
    assert new_path != old_path and stage_dirs(root) == sorted([old_path, new_path])
    assert sorted(i for b in epoch(new, 0) for i in b) == list(range(260))
    pinned, pinned_path = staged_train(uri, root, version=1)
    assert pinned_path == old_path and fill_id(old_path) == filled  # not copied again
    assert epochs(pinned, 2) == old_batches


# -- (7) a stage damaged after setup is rebuilt by the next setup --------------------------------


def test_a_stage_corrupted_after_setup_is_rebuilt_by_the_next_setup(make_table, tmp_path):
    uri, _ = make_table("toy", 500, dim=4)
    root = tmp_path / "stages"
    off = datamodule(uri, splits={"train": 1.0}, staging="off")
    off.setup("fit")
    _, path = staged_train(uri, root)
    target = path / "col-1.npy"  # x: 500 × 4 float32 after a 128-byte header
    stat = target.stat()
    size = stat.st_size
    with open(target, "r+b") as fh:  # other bytes, same size, modification time put back: only the checksum can tell
        fh.seek(size // 2)
        fh.write(np.random.default_rng(1).integers(0, 256, 1024, dtype=np.uint8).tobytes())
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == size
    before = fill_id(path)
    second = datamodule(uri, splits={"train": 1.0}, cache=str(root))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second.setup("fit")
    rebuilt = [str(w.message) for w in caught if issubclass(w.category, StageWarning)]
    assert len(rebuilt) == 1, rebuilt
    for part in (str(path), "split 'train'", "file col-1.npy does not hold what was written", "rebuilt"):
        assert part in rebuilt[0], (part, rebuilt[0])
    assert second.datasets["train"].staged.path == path and fill_id(path) != before
    assert epochs(second, 2) == epochs(off, 2)
    assert_rows_are_the_tables(second)


def test_a_second_fit_after_another_job_evicted_the_released_stage_stages_it_again(make_table, tmp_path):
    """``teardown`` lets go of the stage; another job evicts it (what eviction does: remove a stage
    no process holds); the next ``fit`` and ``validate`` of the same datamodule stage the splits
    again instead of failing on a stage that is gone."""
    from lance_lightning.stage import store

    uri, _ = make_table("toy", 400)
    dm = datamodule(uri, staging="always", cache=str(tmp_path / "stages"))
    model = Recorder()
    trainer(tmp_path, max_epochs=1).fit(model, dm)
    first = [sorted(b) for b in model.seen]
    paths = {stage: dm.datasets[stage].staged.path for stage in ("train", "val")}
    for path in paths.values():  # the other job's eviction: refused for a stage some process holds
        assert store.free_if_unused(path) is not None and not path.exists()
    model = Recorder()
    trainer(tmp_path, max_epochs=1).fit(model, dm)
    assert [sorted(b) for b in model.seen] and all(p.exists() for p in paths.values())
    assert sorted(i for b in model.seen for i in b) == sorted(i for b in first for i in b)
    assert_rows_are_the_tables(dm)
    store.free_if_unused(paths["val"])
    trainer(tmp_path).validate(model, dm, verbose=False)
    assert paths["val"].exists()
    assert_rows_are_the_tables(dm, "val")


# -- (8) exact resume mid-epoch on a staged split, with workers ------------------------------------


def test_resume_mid_epoch_on_a_staged_split_with_workers_reads_what_an_uninterrupted_run_reads(make_table, tmp_path):
    uri, _ = make_table("toy", 100)  # 7 batches of 16 an epoch; with workers, the epoch is one group
    run = {"max_epochs": 2, "limit_val_batches": 0}
    reference = Recorder()
    trainer(tmp_path, **run).fit(reference, datamodule=datamodule(uri, splits={"train": 1.0}))
    ckpt = tmp_path / "mid.ckpt"
    first, first_dm = Recorder(), datamodule(uri, splits={"train": 1.0}, num_workers=2)
    with pytest.raises(Preempted):
        trainer(tmp_path, callbacks=[SaveThenStop(5, ckpt)], **run).fit(first, datamodule=first_dm)
    assert isinstance(first_dm.datasets["train"], StagedBatchDataset)
    second, resumed = Recorder(), datamodule(uri, splits={"train": 1.0}, num_workers=2)
    trainer(tmp_path, **run).fit(second, datamodule=resumed, ckpt_path=ckpt)
    assert isinstance(resumed.datasets["train"], StagedBatchDataset)
    assert len(reference.seen) == 14 and len(first.seen) == 5
    assert first.seen + second.seen == reference.seen
