"""Mixtures (``mix``) on real tables and Trainers: each epoch's exact count a source, the three
layouts, the ``source`` tensor, passes that continue across epochs, the same rows however read,
exact mid-epoch resume, and each bad source named."""

from __future__ import annotations

import os
import re
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import pytest
import torch

from lance_lightning import LanceDataModule
from lance_lightning.stage import StageError
from lance_lightning.state import ResumeRefusedError
from tests.conftest import toy_table
from tests.helpers import Preempted, Recorder, SaveThenStop, quiet_trainer

MIX = {
    "even": {"proportion": 0.5, "filter": "id % 2 = 0"},  # 50 rows: the epoch is one pass over them
    "odd": {"proportion": 0.2, "filter": "id % 2 = 1 AND id < 30"},  # 15 rows, 20 an epoch: repeats
    "other": {"proportion": 0.3, "table": "other"},  # 40 rows of another table, 30 an epoch
}
COUNTS = [50, 20, 30]


def source_of(ids: np.ndarray) -> np.ndarray:
    """Which source each id comes from, by the data alone."""
    return np.where(ids >= 1000, 2, np.where(ids % 2 == 0, 0, 1))


class SourceRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        assert batch["source"].dtype == torch.int64
        self.sources.append(batch["source"].tolist())
        return super().training_step(batch, batch_idx)


@pytest.fixture
def tables(make_table):
    uri, _ = make_table("toy", 100)
    other = toy_table(40).set_column(0, "id", pa.array(np.arange(1000, 1040, dtype=np.int64)))
    make_table("other", other)
    return uri


def datamodule(uri: str, tmp_path: Path, **kwargs) -> LanceDataModule:
    settings = {"splits": {"train": 1.0}, "batch_size": 8, "seed": 5, "columns": ["id", "x", "y"], "mix": MIX}
    settings.update(kwargs)
    if settings.get("staging") != "off":
        settings.setdefault("cache", str(tmp_path / "stages"))
    return LanceDataModule(uri, "toy", **settings)


def fit(uri: str, tmp_path: Path, epochs: int = 2, **kwargs) -> SourceRecorder:
    model = SourceRecorder()
    trainer = quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=epochs)
    trainer.fit(model, datamodule=datamodule(uri, tmp_path, **kwargs))
    return model


def by_epoch(model: SourceRecorder, batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for start in range(0, len(model.seen), batches):
        ids = np.concatenate([np.asarray(b) for b in model.seen[start : start + batches]])
        src = np.concatenate([np.asarray(b) for b in model.sources[start : start + batches]])
        out.append((ids, src))
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("batching", ["mixed", "stratified"])
def test_each_epoch_holds_each_source_s_exact_count_and_says_where_each_row_came_from(
    tables, tmp_path, batching, num_workers
):
    model = fit(tables, tmp_path, mix_batching=batching, num_workers=num_workers)
    epochs = by_epoch(model, batches=13)  # 100 rows of batch 8
    assert len(epochs) == 2
    for ids, src in epochs:
        assert np.array_equal(src, source_of(ids))  # the source tensor tells each row's source
        assert np.bincount(src, minlength=3).tolist() == COUNTS
        assert sorted(ids[src == 0]) == list(range(0, 100, 2))  # one pass over the first source
    # 20 draws an epoch of 15 rows: whole passes, each row once a pass
    odd = [np.bincount(ids[src == 1], minlength=30)[1:30:2] for ids, src in epochs]
    assert odd[0].min() == 1 and odd[0].max() == 2  # pass 0, then 5 rows of pass 1
    assert (odd[0] + odd[1]).min() == 2 and (odd[0] + odd[1]).max() == 3  # passes 0 and 1, 10 rows of pass 2
    first, second = (ids[src == 2] for ids, src in epochs)
    assert len(set(first)) == 30  # below its size: no repeat inside the epoch ...
    assert set(range(1000, 1040)) <= set(first) | set(second)  # ... and the pass goes on in the next
    if batching == "stratified":
        for batch in model.sources:
            quota = len(batch) * np.asarray(COUNTS) / 100
            assert np.all(np.abs(np.bincount(batch, minlength=3) - quota) < 1)


def test_source_batching_gives_every_batch_one_source(tables, tmp_path):
    model = fit(tables, tmp_path, mix_batching="source")
    assert all(len(set(batch)) == 1 for batch in model.sources)
    ids = np.concatenate([np.asarray(b) for b in model.seen])
    src = np.concatenate([np.asarray(b) for b in model.sources])
    assert np.array_equal(src, source_of(ids))
    assert np.bincount(src, minlength=3).tolist() == [2 * 48, 2 * 24, 2 * 32]  # whole batches of 8


def test_the_same_rows_in_the_same_order_from_stages_from_tables_and_with_workers(tables, tmp_path):
    staged = fit(tables, tmp_path / "a", epochs=1)
    assert fit(tables, tmp_path / "b", epochs=1, staging="off").seen == staged.seen
    assert fit(tables, tmp_path / "c", epochs=1, num_workers=2).seen == staged.seen
    assert fit(tables, tmp_path / "d", epochs=1, num_workers=2, read_group_rows=32).seen == staged.seen
    assert fit(tables, tmp_path / "e", epochs=1, staging="off", num_workers=2, read_group_rows=32).seen == staged.seen
    # a batch's rows come grouped by source, in mix order (one gather a source fills a run of the batch)
    assert all(batch == sorted(batch) for batch in staged.sources)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_transform_sees_the_whole_mixed_batch_with_its_sources(tables, tmp_path, num_workers):
    dm = datamodule(tables, tmp_path, transform="tests.helpers.double_x", num_workers=num_workers)
    dm.setup("fit")
    batches = list(dm.train_dataloader())  # with workers, through reused output slots
    plain = datamodule(tables, tmp_path)
    plain.setup("fit")
    assert [b["id"].tolist() for b in batches] == [b["id"].tolist() for b in plain.train_dataloader()]
    for batch in batches:
        assert torch.equal(batch["x_doubled"], batch["x"] * 2)
        assert np.array_equal(batch["source"].numpy(), source_of(batch["id"].numpy()))


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("batching", ["mixed", "stratified"])
def test_resume_mid_epoch_reads_what_an_uninterrupted_run_reads(tables, tmp_path, batching, num_workers):
    reference = fit(tables, tmp_path, mix_batching=batching)
    settings = {"mix_batching": batching, "num_workers": num_workers}
    first = SourceRecorder()
    ckpt = tmp_path / "mid.ckpt"
    with pytest.raises(Preempted):
        quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=2, callbacks=[SaveThenStop(16, ckpt)]).fit(
            first, datamodule=datamodule(tables, tmp_path, **settings)
        )
    second = SourceRecorder()
    quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=2).fit(
        second, datamodule=datamodule(tables, tmp_path, **settings), ckpt_path=ckpt
    )
    assert first.seen + second.seen == reference.seen
    assert first.sources + second.sources == reference.sources


def test_a_resume_with_a_changed_source_is_refused_naming_it(tables, tmp_path):
    ckpt = tmp_path / "mid.ckpt"
    with pytest.raises(Preempted):
        quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=2, callbacks=[SaveThenStop(3, ckpt)]).fit(
            SourceRecorder(), datamodule=datamodule(tables, tmp_path)
        )
    changed = {**MIX, "odd": {"proportion": 0.4, "filter": "id % 2 = 1 AND id < 30"}}
    with pytest.raises(ResumeRefusedError, match=r"mix: source 'odd' proportion: the checkpoint's 0.2, now 0.4"):
        quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=2).fit(
            SourceRecorder(), datamodule=datamodule(tables, tmp_path, mix=changed), ckpt_path=ckpt
        )


def test_one_source_batches_resume_mid_epoch_only_in_their_batch_size(tables, tmp_path):
    """``mix_batching="source"``: the epoch's order is dealt in whole one-source batches, so its
    unread rows cut into another ``batch_size`` would mix sources in a batch: refused, naming both
    sizes (before: a ValueError saying the split 'was built differently')."""
    ckpt = tmp_path / "mid.ckpt"
    with pytest.raises(Preempted):
        quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=2, callbacks=[SaveThenStop(5, ckpt)]).fit(
            SourceRecorder(), datamodule=datamodule(tables, tmp_path, mix_batching="source")
        )
    with pytest.raises(ResumeRefusedError, match=r"batch_size=5 and mix_batching='source'.*batches of 8 rows"):
        quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=2).fit(
            SourceRecorder(),
            datamodule=datamodule(tables, tmp_path, mix_batching="source", batch_size=5),
            ckpt_path=ckpt,
        )


def test_one_source_batches_take_a_new_batch_size_from_an_epoch_end_checkpoint(tables, tmp_path):
    """An epoch-end checkpoint: the next epoch is dealt afresh in the new batch size (its rows are
    whole batches of it), every batch of one source (before: refused, the split 'built differently')."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=1, enable_checkpointing=True, callbacks=[saving]).fit(
        SourceRecorder(), datamodule=datamodule(tables, tmp_path, mix_batching="source")
    )
    resumed = SourceRecorder()
    quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=2).fit(
        resumed,
        datamodule=datamodule(tables, tmp_path, mix_batching="source", batch_size=5),
        ckpt_path=saving.last_model_path,
    )
    assert resumed.sources and all(len(b) == 5 and len(set(b)) == 1 for b in resumed.sources)
    for ids, sources in zip(resumed.seen, resumed.sources):
        assert np.array_equal(source_of(np.asarray(ids)), np.asarray(sources))


def test_samples_per_epoch_sets_the_epoch_and_each_source_gets_its_share(tables, tmp_path):
    dm = datamodule(tables, tmp_path, samples_per_epoch=40)
    dm.setup("fit")
    src = np.concatenate([b["source"].numpy() for b in dm.train_dataloader()])
    assert np.bincount(src, minlength=3).tolist() == [20, 8, 12]


@pytest.mark.parametrize(
    ("mix", "error", "message"),
    [
        ({"a": {"proportion": 1, "table": "nope"}}, "MissingTableError", r"nope"),
        ({"a": {"proportion": 1, "split": "holdout"}}, "MixSpecError", r"source 'a' reads split 'holdout', which"),
        ({"a": {"proportion": 1, "filter": "id < 0"}}, "SplitSpecError", r"mix source 'a' has no rows"),
        ({"a": {"proportion": 1, "filter": "no_such = 1"}}, "LanceSourceError", r"no_such"),
        (
            {"a": {"proportion": 1}, "b": {"proportion": 1, "table": "narrow"}},
            "MixSpecError",
            r"'b' \(table 'narrow'\) has no column\(s\) \['x'\]",
        ),
        (
            {"a": {"proportion": 1}, "b": {"proportion": 1, "table": "retyped"}},
            "MixSpecError",
            r"'b' \(table 'retyped'\) holds column\(s\) of another type.*'y': double here, int64",
        ),
        (
            {"a": {"proportion": 0.99}, "b": {"proportion": 0.01, "filter": "id < 5"}},
            "ValueError",
            r"mix_batching='source' gives source 'b' \(proportion 0.01\) no batch",
        ),
    ],
    ids=["unknown-table", "unknown-split", "empty-source", "bad-filter", "missing-column", "other-type", "no-batch"],
)
def test_a_bad_source_is_refused_at_setup_naming_it(tables, make_table, tmp_path, mix, error, message):
    make_table("narrow", toy_table(10).select(["id", "y"]))
    retyped = toy_table(10)
    make_table("retyped", retyped.set_column(2, "y", retyped["y"].cast(pa.float64())))
    dm = datamodule(tables, tmp_path, mix=mix, mix_batching="source" if error == "ValueError" else "mixed")
    with pytest.raises(Exception, match=message) as err:
        dm.setup("fit")
    assert error in [c.__name__ for c in type(err.value).__mro__]


def test_a_column_named_source_is_refused_naming_the_key(make_table, tmp_path):
    uri, _ = make_table("toy", toy_table(20).append_column("source", pa.array(np.zeros(20, dtype=np.int64))))
    dm = LanceDataModule(uri, "toy", splits={"train": 1.0}, mix={"a": {"proportion": 1}}, cache=str(tmp_path / "s"))
    with pytest.raises(ValueError, match="adds each row's source to its batch as 'source', which is also a column"):
        dm.setup("fit")


def preempted_at(tables: str, tmp_path: Path, step: int, **settings) -> tuple[SourceRecorder, Path]:
    first, ckpt = SourceRecorder(), tmp_path / "mid.ckpt"
    with pytest.raises(Preempted):
        quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=2, callbacks=[SaveThenStop(step, ckpt)]).fit(
            first, datamodule=datamodule(tables, tmp_path, **settings)
        )
    return first, ckpt


def test_a_resume_reads_another_source_table_at_the_checkpoint_s_version_after_it_grew(tables, tmp_path):
    """Rows appended to a source's table between the checkpoint and its resume would change that
    source's permutation (it has more rows): the resumed run reads the version the checkpoint read."""
    import lancedb

    reference = fit(tables, tmp_path / "ref")
    first, ckpt = preempted_at(tables, tmp_path, 16)
    grown = toy_table(25).set_column(0, "id", pa.array(np.arange(2000, 2025, dtype=np.int64)))
    lancedb.connect(tables).open_table("other").add(grown)
    second = SourceRecorder()
    with pytest.warns(
        UserWarning,
        match=r"read besides 'toy' have moved on since the checkpoint: this run reads 'other' version 1 \(mix:other\)",
    ):
        quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=2).fit(
            second, datamodule=datamodule(tables, tmp_path), ckpt_path=ckpt
        )
    assert first.seen + second.seen == reference.seen


def test_a_resume_refuses_a_source_table_dropped_and_recreated_since_the_checkpoint(tables, tmp_path):
    import lancedb

    from lance_lightning.source import TableChangedError

    _, ckpt = preempted_at(tables, tmp_path, 5)
    db = lancedb.connect(tables)
    db.drop_table("other")
    db.create_table("other", toy_table(40).set_column(0, "id", pa.array(np.arange(3000, 3040, dtype=np.int64))))
    with pytest.raises(TableChangedError, match=r"table 'other'.*changed under this run"):
        quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=2).fit(
            SourceRecorder(), datamodule=datamodule(tables, tmp_path), ckpt_path=ckpt
        )


class GrowOther(pl.Callback):
    """At the end of epoch 0, appends rows 5000.. to the source table ``other``."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def on_train_epoch_end(self, trainer, pl_module):
        import lancedb

        if trainer.current_epoch == 0:
            rows = toy_table(40).set_column(0, "id", pa.array(np.arange(5000, 5040, dtype=np.int64)))
            lancedb.connect(self.uri).open_table("other").add(rows)


def test_with_next_epoch_updates_a_source_table_s_new_rows_join_from_the_next_epoch(tables, tmp_path):
    model = SourceRecorder()
    trainer = quiet_trainer(
        tmp_path, limit_val_batches=0, max_epochs=3, callbacks=[GrowOther(tables)], reload_dataloaders_every_n_epochs=1
    )
    trainer.fit(model, datamodule=datamodule(tables, tmp_path, table_updates="next_epoch", splits=None))
    epochs = by_epoch(model, batches=13)
    assert not any(i >= 5000 for i in epochs[0][0])
    later = np.concatenate([ids for ids, _ in epochs[1:]])
    assert any(later >= 5000)
    for _ids, src in epochs:
        assert np.bincount(src, minlength=3).tolist() == COUNTS


class MarkHarder(pl.Callback):
    """At the end of epoch 0, marks rows 10-19 hard (a column the model could write back)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def on_train_epoch_end(self, trainer, pl_module):
        import lancedb

        if trainer.current_epoch == 0:
            lancedb.connect(self.uri).open_table("toy").update(where="id >= 10 AND id < 20", values={"hard": 1})


@pytest.mark.parametrize("table_updates", ["pin", "next_epoch"])
def test_source_filters_over_a_written_back_column_are_reread_from_the_next_epoch_only(
    make_table, tmp_path, table_updates
):
    """A curriculum by filter: with ``next_epoch`` the filters select the rows of the new version from
    the next epoch (never the current one); pinned, the first version's rows throughout."""
    hard = (np.arange(100) < 10).astype(np.int64)
    uri, _ = make_table("toy", toy_table(100).append_column("hard", pa.array(hard)))
    mix = {"easy": {"proportion": 0.5, "filter": "hard = 0"}, "hard": {"proportion": 0.5, "filter": "hard = 1"}}
    model = SourceRecorder()
    trainer = quiet_trainer(
        tmp_path, limit_val_batches=0, max_epochs=2, callbacks=[MarkHarder(uri)], reload_dataloaders_every_n_epochs=1
    )
    trainer.fit(model, datamodule=datamodule(uri, tmp_path, mix=mix, table_updates=table_updates, splits=None))
    # epoch 0: 90 easy rows + 90 draws of the 10 hard ones, 23 batches of 8
    first, second = by_epoch(model, batches=23)[:2]
    assert set(first[0][first[1] == 1]) == set(range(10)) and set(first[0][first[1] == 0]) == set(range(10, 100))
    if table_updates == "next_epoch":
        assert sorted(second[0][second[1] == 0]) == list(range(20, 100))  # one pass over the 80 easy rows left
        assert set(second[0][second[1] == 1]) == set(range(20))
    else:
        assert set(second[0][second[1] == 1]) == set(range(10))
        assert sorted(second[0][second[1] == 0]) == list(range(10, 100))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_source_stage_changed_after_setup_stops_the_next_read_naming_that_stage(tables, tmp_path, num_workers):
    """A read checks each source's stage once (a group of batches, not a run of a batch): a file of
    one source's stage written in place after an epoch stops the next epoch's first read with the
    StageError naming that stage and file; no changed row is served."""
    dm = datamodule(tables, tmp_path, num_workers=num_workers)
    dm.setup("fit")
    sampler, loader = dm.samplers["train"], dm.train_dataloader()
    sampler.set_epoch(0)
    assert sum(len(batch["id"]) for batch in loader) == sum(COUNTS)
    stage = dm.datasets["train"].readers[1].staged.path  # source "odd"
    target = sorted(stage.glob("col-*.npy"))[0]
    data = bytearray(target.read_bytes())
    data[-64:] = bytes(b ^ 0xFF for b in data[-64:])
    with open(target, "r+b") as fh:  # in place: the mapped pages change, and the file's time
        fh.write(data)
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    sampler.set_epoch(1)
    with pytest.raises(StageError, match=re.escape(str(stage))) as raised:
        for _ in loader:
            pass
    assert target.name in str(raised.value)
    dm.teardown("fit")
