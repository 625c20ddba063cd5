"""Tables a run reads besides its own (a ``tables`` split's): pinned like the own table.

A split table changed between a checkpoint and its resume (a row deleted and another added: the
same count) used to be reopened at its latest version, and the resumed epoch read rows the
interrupted one never had. It is now read at the checkpoint's version; a recreated one is refused;
with ``table_updates="next_epoch"`` its new rows join at the next epoch."""

from __future__ import annotations

from pathlib import Path

import lancedb
import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import pytest

from lance_lightning import LanceDataModule
from lance_lightning.source import TableChangedError
from tests.conftest import toy_table
from tests.helpers import Preempted, Recorder, SaveThenStop, quiet_trainer


def rows(ids) -> pa.Table:
    return toy_table(len(ids)).set_column(0, "id", pa.array(np.asarray(ids, dtype=np.int64)))


@pytest.fixture
def uri(make_table):
    uri, _ = make_table("toy", 10)
    make_table("train_rows", 100)
    return uri


def datamodule(uri: str, tmp_path: Path, **kwargs) -> LanceDataModule:
    return LanceDataModule(
        uri,
        "toy",
        splits={"kind": "tables", "tables": {"train": "train_rows"}},
        batch_size=8,
        seed=1,
        columns=["id", "x", "y"],
        cache=str(tmp_path / "stages"),
        **kwargs,
    )


def trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    return quiet_trainer(tmp_path, limit_val_batches=0, **{"max_epochs": 1, **kwargs})


def preempted(uri: str, tmp_path: Path, step: int = 4) -> tuple[Recorder, Path]:
    first, ckpt = Recorder(), tmp_path / "mid.ckpt"
    with pytest.raises(Preempted):
        trainer(tmp_path, callbacks=[SaveThenStop(step, ckpt)]).fit(first, datamodule=datamodule(uri, tmp_path))
    return first, ckpt


def test_a_split_table_changed_since_the_checkpoint_is_read_at_the_checkpoint_s_version(uri, tmp_path):
    reference = Recorder()
    trainer(tmp_path / "ref").fit(reference, datamodule=datamodule(uri, tmp_path / "ref"))
    first, ckpt = preempted(uri, tmp_path)
    table = lancedb.connect(uri).open_table("train_rows")
    table.delete("id = 99")
    table.add(rows([500]))  # the same row count: only the rows differ
    second = Recorder()
    with pytest.warns(UserWarning, match=r"this run reads 'train_rows' version 1 \(split:train\) as the checkpoint"):
        trainer(tmp_path).fit(second, datamodule=datamodule(uri, tmp_path), ckpt_path=ckpt)
    assert first.seen + second.seen == reference.seen


def test_a_split_table_recreated_since_the_checkpoint_is_refused(uri, tmp_path):
    _, ckpt = preempted(uri, tmp_path)
    db = lancedb.connect(uri)
    db.drop_table("train_rows")
    db.create_table("train_rows", rows(range(1000, 1100)))
    with pytest.raises(TableChangedError, match=r"table 'train_rows'.*changed under this run"):
        trainer(tmp_path).fit(Recorder(), datamodule=datamodule(uri, tmp_path), ckpt_path=ckpt)


class GrowTrainRows(pl.Callback):
    def __init__(self, uri: str) -> None:
        self.uri = uri

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            lancedb.connect(self.uri).open_table("train_rows").add(rows(range(5000, 5020)))


def test_with_next_epoch_updates_a_split_table_s_new_rows_join_from_the_next_epoch(uri, tmp_path):
    model = Recorder()
    trainer(tmp_path, max_epochs=2, callbacks=[GrowTrainRows(uri)], reload_dataloaders_every_n_epochs=1).fit(
        model, datamodule=datamodule(uri, tmp_path, table_updates="next_epoch")
    )
    ids = [i for batch in model.seen for i in batch]
    assert sorted(ids[:100]) == list(range(100))  # epoch 0: the version pinned at setup
    assert sorted(ids[100:]) == [*range(100), *range(5000, 5020)]  # epoch 1: the new version


def test_a_mix_filter_over_a_split_from_another_table_selects_that_table_s_rows(uri, tmp_path):
    """A ``tables`` split's rows are another table's: a source's filter is evaluated there (it was
    evaluated on the datamodule's own 10-row table, and the epoch silently read 5 of 50 rows)."""
    mix = {"even": {"proportion": 0.5, "filter": "id % 2 = 0"}, "odd": {"proportion": 0.5, "filter": "id % 2 = 1"}}
    model = Recorder()
    trainer(tmp_path).fit(model, datamodule=datamodule(uri, tmp_path, mix=mix))
    ids = [i for batch in model.seen for i in batch]
    assert sorted(ids) == list(range(100))
