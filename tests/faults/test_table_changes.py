"""The table changes under a running or resumed job: compacted and cleaned up, dropped, recreated.

Every case either reads exactly the pinned rows or fails fast with an error naming the table, the
version and what to do; none reads other rows silently. A split read from the table
(``staging='off'``) fails fast; a staged one (the default for the train split) goes on reading its
node-local copy of the pinned rows.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import lancedb
import lightning.pytorch as pl
import pyarrow as pa
import pytest

from lance_lightning import LanceDataModule, LanceSourceError
from lance_lightning.reads import TableChangedError
from lance_lightning.source import TableSource
from tests.conftest import toy_table
from tests.helpers import Preempted, Recorder, SaveThenStop, quiet_trainer


def fragmented(make_table, rows: int = 400, pieces: int = 4):
    """A table written in ``pieces`` appends (so compaction rewrites its files)."""
    step = rows // pieces
    uri, table = make_table("toy", toy_table(rows).slice(0, step))
    for start in range(step, rows, step):
        table.add(toy_table(rows).slice(start, step))
    return uri, table


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    return quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=0, **kwargs)


class ChangeTableAt(pl.Callback):
    """At ``step``, does ``change()`` to the table (what another job or a cron does)."""

    def __init__(self, step: int, change) -> None:
        self.step, self.change, self.done = step, change, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and not self.done:
            self.done = True
            self.change()


def compact_and_clean(table) -> None:
    table.add(toy_table(10).slice(0, 10))  # a newer version, so the pinned one is an old version
    table.optimize(cleanup_older_than=timedelta(0))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_cleanup_of_the_pinned_version_mid_run_names_table_version_and_remedy(make_table, tmp_path, num_workers):
    uri, table = fragmented(make_table)
    dm = LanceDataModule(
        uri, "toy", splits={"train": 1.0}, batch_size=8, seed=1, num_workers=num_workers, staging="off"
    )
    with pytest.raises(TableChangedError) as caught:
        trainer(tmp_path, callbacks=[ChangeTableAt(3, lambda: compact_and_clean(table))]).fit(Recorder(), datamodule=dm)
    text = str(caught.value)
    assert "'toy'" in text and f"version {dm.table_version}" in text
    assert "cleanup_older_than" in text and "table_updates='next_epoch'" in text


def test_a_stamped_source_opens_only_the_version_it_pinned(make_table):
    """Issue 29 item 4: every process reopens the pinned version by name and number (DataLoader
    workers, each epoch when they are not persistent); a table recreated under the same name has a
    version of that number too. The source carries the version's commit time and checks it."""
    uri, table = make_table("toy", 40)
    source = TableSource(uri, "toy", table.version).stamped(table)
    assert source.open().version == 1
    db = lancedb.connect(uri)
    db.drop_table("toy")
    with pytest.raises(
        TableChangedError, match=r"table 'toy' .*version 1, which this run pinned, cannot be opened.*dropped"
    ):
        source.open()
    db.create_table("toy", toy_table(40))
    changed = (
        r"table 'toy' .* changed under this run: its version 1 was committed at .*, the version 1 this run pinned at "
    )
    with pytest.raises(TableChangedError, match=changed + ".*dropped and recreated"):
        source.open()
    assert source.pinned(1).open().version == 1  # not stamped (what setup and resume open): no check


# The table dropped, or compacted and cleaned up, mid-run with or without a stage: cells of
# test_table_event_matrix.py (drop / compact_cleanup x mid_epoch x every read path).


def checkpoint_mid_epoch(uri, tmp_path, step: int = 4):
    ckpt = tmp_path / "mid.ckpt"
    with pytest.raises(Preempted):
        trainer(tmp_path, callbacks=[SaveThenStop(step, ckpt)]).fit(Recorder(), datamodule=datamodule(uri))
    return ckpt


def datamodule(uri, **kwargs) -> LanceDataModule:
    return LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=8, seed=1, **kwargs)


def test_resume_after_the_pinned_version_was_cleaned_up_names_checkpoint_and_fresh(make_table, tmp_path):
    uri, table = fragmented(make_table)
    ckpt = checkpoint_mid_epoch(uri, tmp_path)
    compact_and_clean(table)
    with pytest.raises(LanceSourceError) as caught:
        trainer(tmp_path).fit(Recorder(), datamodule=datamodule(uri), ckpt_path=ckpt)
    text = str(caught.value)
    assert "has no version 4" in text and "The checkpoint was written reading version 4" in text
    assert "resume='fresh'" in text
    fresh = Recorder()
    with pytest.warns(UserWarning, match="resume='fresh'"):
        trainer(tmp_path).fit(fresh, datamodule=datamodule(uri, resume="fresh"), ckpt_path=ckpt)
    assert fresh.seen


def test_resume_refuses_a_dropped_and_recreated_table(make_table, tmp_path):
    uri, _ = fragmented(make_table)
    ckpt = checkpoint_mid_epoch(uri, tmp_path)
    db = lancedb.connect(uri)
    db.drop_table("toy")
    recreated = db.create_table("toy", toy_table(100))  # same name, other rows, versions restart at 1
    for start in range(100, 400, 100):
        recreated.add(toy_table(400).slice(start, 100))  # ... up to the checkpoint's version 4
    assert recreated.version == 4
    with pytest.raises(ValueError, match=r"table 'toy' .*is not the table the checkpoint was written from.*fresh"):
        trainer(tmp_path).fit(Recorder(), datamodule=datamodule(uri), ckpt_path=ckpt)


def test_a_stage_of_a_dropped_table_is_never_served_for_its_recreation(make_table, tmp_path):
    uri, _ = make_table("toy", 120)
    root = tmp_path / "stages"

    def read() -> tuple[list[int], Path]:
        dm = LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=16, seed=1, cache=str(root))
        dm.setup("fit")
        ids = sorted(i for batch in dm.train_dataloader() for i in batch["id"].tolist())
        return ids, dm.datasets["train"].staged.path

    ids, first = read()
    assert ids == list(range(120))
    db = lancedb.connect(uri)
    db.drop_table("toy")
    other = toy_table(120)
    db.create_table("toy", other.set_column(0, "id", pa.array(range(1000, 1120), pa.int64())))
    ids, second = read()  # same name, same version 1, same row addresses: another commit time
    assert ids == list(range(1000, 1120))
    assert second != first and first.name.startswith("toy-v1-") and second.name.startswith("toy-v1-")


class KillAWorker(pl.Callback):
    """At batch 2, SIGKILLs one of the train loader's worker processes (as the OOM killer would)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 2:
            import os
            import signal

            workers = trainer.train_dataloader._iterator._workers  # torch's persistent iterator
            os.kill(workers[0].pid, signal.SIGKILL)


def test_a_killed_worker_stops_the_run_with_a_clear_error(make_table, tmp_path):
    uri, _ = make_table("toy", 400)
    dm = LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=8, seed=1, num_workers=2)
    # torch names the worker, or (killed mid-handover) we do instead of a bare ConnectionResetError
    named = r"DataLoader worker (\(pid.*\) (is killed by signal|exited unexpectedly)|died while handing over a batch)"
    with pytest.raises(RuntimeError, match=named):
        trainer(tmp_path, callbacks=[KillAWorker()]).fit(Recorder(), datamodule=dm)


class RecreateAfterEpoch0(pl.Callback):
    """When epoch 0 ends, drops table ``name`` and creates it again (at version 1, as it was) with
    other ids: the same version number, other rows."""

    def __init__(self, uri: str, name: str, first_id: int, rows: int) -> None:
        self.uri, self.name, self.first_id, self.rows = uri, name, first_id, rows

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            db = lancedb.connect(self.uri)
            db.drop_table(self.name)
            ids = pa.array(range(self.first_id, self.first_id + self.rows), pa.int64())
            db.create_table(self.name, toy_table(self.rows).set_column(0, "id", ids))


@pytest.mark.parametrize("staging", ["auto", "off"], ids=["staged", "table"])
@pytest.mark.parametrize("which", ["main", "mix-source"])
def test_following_the_table_follows_a_recreation_at_the_same_version_number(make_table, tmp_path, staging, which):
    """``table_updates="next_epoch"`` moves to the latest version at an epoch boundary, told by its
    number and commit time: a table dropped and recreated at the pinned version's number is the
    latest too. Before, the number alone was compared: a staged split went on serving the dropped
    table's rows (a table read failed on its missing files)."""
    uri, _ = make_table("toy", 100)
    other = toy_table(40).set_column(0, "id", pa.array(range(1000, 1040), pa.int64()))
    make_table("other", other)
    mix = {"own": {"proportion": 0.5}, "other": {"proportion": 0.5, "table": "other"}} if which != "main" else None
    name, first = ("toy", 500) if which == "main" else ("other", 2000)
    model = Recorder()
    dm = LanceDataModule(
        uri,
        "toy",
        splits={"kind": "hash", "columns": ["id"], "weights": {"train": 1}},
        batch_size=8,
        seed=5,
        columns=["id", "x", "y"],
        table_updates="next_epoch",
        staging=staging,
        mix=mix,
    )
    recreate = RecreateAfterEpoch0(uri, name, first, 100 if which == "main" else 40)
    trainer(tmp_path, callbacks=[recreate], reload_dataloaders_every_n_epochs=1).fit(model, datamodule=dm)
    half = len(model.seen) // 2
    epoch0 = {i for batch in model.seen[:half] for i in batch}
    epoch1 = {i for batch in model.seen[half:] for i in batch}
    if which == "main":
        assert epoch0 == set(range(100)) and epoch1 == set(range(500, 600))
    else:
        assert {i for i in epoch0 if i >= 1000} <= set(range(1000, 1040))
        assert {i for i in epoch1 if i >= 1000} <= set(range(2000, 2040)) and max(epoch1) >= 2000
