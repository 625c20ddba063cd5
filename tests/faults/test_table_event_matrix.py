"""The table changes under a job: every (event, moment, read path, workers) cell reads exactly the
pinned version's rows or stops with a named error; none reads rows of another table or version.

Axes (a new event, moment or read path joins by one entry in its dict):

* events (:data:`EVENTS`): an append, a delete, a compaction with the old versions cleaned up
  (``optimize(cleanup_older_than=timedelta(0))``), a drop, a drop and recreate under the same name
  with other ids and as many versions (so the pinned version *number* exists again);
* moments (:data:`MOMENTS`): during the stage fill, after ``setup`` before the first batch,
  mid-epoch, between epochs (workers not persistent, so they reopen the table), between a
  checkpoint and its resume (a fresh Trainer and datamodule);
* read paths (:data:`READ_PATHS`): the train split staged (uniform shuffle, default staging), read
  from the table in a uniform order (``staging='off'``), in blocks, in table order;
* workers: 0 and 2.

A cell is *exact* when every batch's ``id`` column equals, batch by batch, that of a run of the
same settings on an unchanged table (ids of the recreated table are 1000 higher, so any of its
rows differs), or a *named error*: one of :data:`NAMED` whose message names the table.

Cells not generated (rather than skipped): "during the fill" exists only where there is a fill,
the staged path; the three table paths have no such moment (5 events x 3 paths x 2 worker counts =
30 of the 200 products); with 2 workers the table paths take turns (:func:`generated`: 40 fewer).
131 cells remain; :data:`DEFAULT` is the cheap representative subset run by default (every event,
moment and read path, workers 0 and 2), the rest are ``long``.

The fill moment is reached by wrapping the stage's table scan (``stage.fill._scan``/``_take``) so the
event happens after the fill has read its first batch of rows: the only hook, in our own code.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import lancedb
import lightning.pytorch as pl
import pyarrow as pa
import pytest

from lance_lightning import LanceDataModule
from lance_lightning.reads import TableChangedError
from lance_lightning.stage import StageError
from tests.conftest import toy_table
from tests.helpers import Preempted, Recorder, SaveThenStop, quiet_trainer

ROWS, PIECES, BATCH, EPOCHS, STOP_STEP = 64, 4, 8, 2, 3
"""A 64-row table written in 4 commits (pinned version 4), batches of 8, 2 epochs; checkpoints after 3 steps."""
NAMED = (TableChangedError, StageError, ValueError)
"""What a cell may stop with (LanceSourceError and the checkpoint's table check are ValueErrors);
its message must name the table."""

# -- the table and its events -----------------------------------------------------------------


def rows(lo: int, hi: int, *, shift: int = 0) -> pa.Table:
    """Rows ``lo:hi`` of the toy table, with ``shift`` added to their ids (a recreation's rows)."""
    piece = toy_table(ROWS).slice(lo, hi - lo)
    return piece.set_column(0, "id", pa.compute.add(piece.column("id"), shift))


def build(uri: str, *, shift: int = 0) -> Any:
    """The table ``toy`` in ``PIECES`` commits (so compaction rewrites files), at version ``PIECES``."""
    step = ROWS // PIECES
    table = lancedb.connect(uri).create_table("toy", rows(0, step, shift=shift))
    for lo in range(step, ROWS, step):
        table.add(rows(lo, lo + step, shift=shift))
    return table


def append(uri: str) -> None:
    lancedb.connect(uri).open_table("toy").add(rows(0, 8, shift=5000))


def delete(uri: str) -> None:
    lancedb.connect(uri).open_table("toy").delete("id < 16")


def compact_cleanup(uri: str) -> None:
    table = lancedb.connect(uri).open_table("toy")
    table.add(rows(0, 4, shift=5000))  # the pinned version is then an old one
    table.optimize(cleanup_older_than=timedelta(0))


def drop(uri: str) -> None:
    lancedb.connect(uri).drop_table("toy")


def recreate(uri: str) -> None:
    drop(uri)
    assert build(uri, shift=1000).version == PIECES  # the pinned version number exists again, other rows


EVENTS: dict[str, Callable[[str], None]] = {
    "append": append,
    "delete": delete,
    "compact_cleanup": compact_cleanup,
    "drop": drop,
    "recreate": recreate,
}

READ_PATHS: dict[str, dict[str, Any]] = {
    "staged": {"shuffle": "uniform"},  # the default: the train split is staged
    "table": {"shuffle": "uniform", "staging": "off"},
    "block": {"shuffle": "block", "block_size": 16},  # contiguous: read from the table by default
    "none": {"shuffle": "none"},
}
STAGED = {"staged"}
"""The read paths that fill a stage (in the test's own cache directory); the others read the table."""


def datamodule(uri: str, path: str, workers: int, cache: str, **extra: Any) -> LanceDataModule:
    settings = {**READ_PATHS[path], **extra}
    if path in STAGED:
        settings["cache"] = cache  # a cache setting makes every split staged: only for the staged path
    return LanceDataModule(
        uri,
        "toy",
        splits={"train": 1.0},
        batch_size=BATCH,
        seed=1,
        num_workers=workers,
        persistent_workers=False,  # so workers reopen the table each epoch
        **settings,
    )


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    return quiet_trainer(tmp_path, max_epochs=EPOCHS, limit_val_batches=0, **kwargs)


# -- the moments: each runs one job with the event at its moment, returns the batches' ids read ------


class At(pl.Callback):
    """Does ``event`` once, at the end of training batch ``batch`` of epoch 0, or (``batch`` None)
    at the end of epoch 0."""

    def __init__(self, event: Callable[[], None], batch: int | None) -> None:
        self.event, self.batch, self.done = event, batch, False

    def _maybe(self, trainer: pl.Trainer, batch_idx: int | None) -> None:
        if not self.done and trainer.current_epoch == 0 and batch_idx == self.batch:
            self.done = True
            self.event()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._maybe(trainer, batch_idx)

    def on_train_epoch_end(self, trainer, pl_module):
        self._maybe(trainer, None)


def during_fill(model, uri, path, workers, tmp_path, event, monkeypatch) -> None:
    from lance_lightning.stage import fill

    def after_first(read: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            batches = read(*args, **kwargs)
            yield next(batches)
            event()
            yield from batches

        return wrapped

    monkeypatch.setattr(fill, "_SCAN_BATCH", 8)
    monkeypatch.setattr(fill, "_TAKE_BATCH", 8)
    monkeypatch.setattr(fill, "_scan", after_first(fill._scan))
    monkeypatch.setattr(fill, "_take", after_first(fill._take))
    trainer(tmp_path).fit(model, datamodule=datamodule(uri, path, workers, str(tmp_path / "stages")))


def after_setup(model, uri, path, workers, tmp_path, event, monkeypatch) -> None:
    dm = datamodule(uri, path, workers, str(tmp_path / "stages"))
    dm.setup("fit")
    event()
    trainer(tmp_path).fit(model, datamodule=dm)


def mid_epoch(model, uri, path, workers, tmp_path, event, monkeypatch) -> None:
    dm = datamodule(uri, path, workers, str(tmp_path / "stages"))
    trainer(tmp_path, callbacks=[At(event, STOP_STEP)]).fit(model, datamodule=dm)


def between_epochs(model, uri, path, workers, tmp_path, event, monkeypatch) -> None:
    dm = datamodule(uri, path, workers, str(tmp_path / "stages"))
    trainer(tmp_path, callbacks=[At(event, None)]).fit(model, datamodule=dm)


def before_resume(model, uri, path, workers, tmp_path, event, monkeypatch) -> None:
    ckpt, cache = tmp_path / "mid.ckpt", str(tmp_path / "stages")
    with pytest.raises(Preempted):
        trainer(tmp_path, callbacks=[SaveThenStop(STOP_STEP, ckpt)]).fit(
            model, datamodule=datamodule(uri, path, workers, cache)
        )
    event()  # the same model records on: the resumed run's batches follow the first run's
    trainer(tmp_path).fit(model, datamodule=datamodule(uri, path, workers, cache), ckpt_path=ckpt)


MOMENTS: dict[str, Callable[..., None]] = {
    "fill": during_fill,
    "setup": after_setup,
    "mid_epoch": mid_epoch,
    "between_epochs": between_epochs,
    "resume": before_resume,
}


def applies(moment: str, path: str) -> bool:
    """Whether the cell exists: only a staged path has a fill."""
    return moment != "fill" or path in STAGED


def generated(event: str, moment: str, path: str, workers: int) -> bool:
    """Whether CI runs the cell. Workers on the table paths start from a fork server and open the
    table themselves (seconds a cell), so with 2 workers each (event, moment) runs on one of the
    three table paths, rotated (a Latin square): every event and every moment still meets every
    table path with workers, in 20 cells instead of 60. Every other cell, and :data:`DEFAULT`, runs."""
    if not applies(moment, path):
        return False
    if workers == 0 or path in STAGED or (event, moment, path, workers) in DEFAULT:
        return True
    table_paths = [p for p in READ_PATHS if p not in STAGED]
    turn = (list(EVENTS).index(event) + list(MOMENTS).index(moment)) % len(table_paths)
    return path == table_paths[turn]


# -- the cells --------------------------------------------------------------------------------------

DEFAULT = {
    ("recreate", "setup", "table", 2),  # issue 29 item 4: workers reopened the recreated table
    ("recreate", "between_epochs", "block", 0),
    ("recreate", "resume", "staged", 0),
    ("drop", "setup", "none", 0),  # issue 29 item 9: the first batch's error, as itself
    ("drop", "mid_epoch", "staged", 2),
    ("compact_cleanup", "mid_epoch", "table", 0),
    ("delete", "between_epochs", "none", 0),
    ("append", "fill", "staged", 0),
    ("compact_cleanup", "fill", "staged", 2),
}

CELLS = [
    pytest.param(
        event,
        moment,
        path,
        workers,
        id=f"{event}-{moment}-{path}-w{workers}",
        marks=() if (event, moment, path, workers) in DEFAULT else pytest.mark.long,
    )
    for event in EVENTS
    for moment in MOMENTS
    for path in READ_PATHS
    for workers in (0, 2)
    if generated(event, moment, path, workers)
]

_REFERENCES: dict[str, list[list[int]]] = {}


@pytest.fixture
def reference(tmp_path_factory) -> Callable[[str], list[list[int]]]:
    """The batches' ids of an uninterrupted run on an unchanged table, per read path (made once:
    they do not depend on the workers or on where the table lives)."""

    def of(path: str) -> None:
        if path not in _REFERENCES:
            where = tmp_path_factory.mktemp(f"reference-{path}")
            build(str(where / "db"))
            model = Recorder()
            trainer(where).fit(model, datamodule=datamodule(str(where / "db"), path, 0, str(where / "stages")))
            _REFERENCES[path] = model.seen
        return _REFERENCES[path]

    return of


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(("event", "moment", "path", "workers"), CELLS)
def test_cell_is_exact_or_a_named_error(event, moment, path, workers, tmp_path, monkeypatch, reference):
    expected = reference(path)
    uri = str(tmp_path / "db")
    build(uri)
    model = Recorder()
    outcome = "exact"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            MOMENTS[moment](model, uri, path, workers, tmp_path, lambda: EVENTS[event](uri), monkeypatch)
        except NAMED as err:
            assert "'toy'" in str(err), f"an error that does not name the table: {type(err).__name__}: {err}"
            outcome = f"named error: {type(err).__name__}"
    # exact: every batch read (before the error, if one stopped the run) is the pinned version's
    assert model.seen == (expected if outcome == "exact" else expected[: len(model.seen)])
    record(f"{event}-{moment}-{path}-w{workers}", outcome, len(model.seen))


def record(cell: str, outcome: str, batches: int) -> None:
    """With ``LL_TABLE_EVENT_OUTCOMES=<file>``: appends the cell's outcome (for reports)."""
    import json
    import os

    if os.environ.get("LL_TABLE_EVENT_OUTCOMES"):
        with open(os.environ["LL_TABLE_EVENT_OUTCOMES"], "a") as out:
            out.write(json.dumps({"cell": cell, "outcome": outcome, "batches": batches}) + "\n")
