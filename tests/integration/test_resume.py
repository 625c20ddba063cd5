"""Mid-epoch checkpoints resume with exactly the rows an uninterrupted run would read."""

from __future__ import annotations

import re

import lightning.pytorch as pl
import pytest
import torch

from lance_lightning import LanceDataModule
from lance_lightning.state import ResumeRefusedError
from tests.conftest import toy_table
from tests.helpers import Preempted, Recorder, SaveThenStop, quiet_trainer


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    return quiet_trainer(tmp_path, limit_val_batches=0, **{"max_epochs": 2, **kwargs})


def datamodule(uri: str, **kwargs) -> LanceDataModule:
    return LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=8, seed=5, **kwargs)


def interrupted_then_resumed(tmp_path, uri, stop_step, first_kwargs, second_kwargs) -> list[list[int]]:
    ckpt = tmp_path / "mid.ckpt"
    first = Recorder()
    with pytest.raises(Preempted):
        trainer(tmp_path, callbacks=[SaveThenStop(stop_step, ckpt)]).fit(
            first, datamodule=datamodule(uri, **first_kwargs)
        )
    second = Recorder()
    trainer(tmp_path).fit(second, datamodule=datamodule(uri, **second_kwargs), ckpt_path=ckpt)
    return first.seen + second.seen


# block: windows of 3 batches, each read by a worker as one group; step 5 stops inside a group
BLOCK = {"shuffle": "block", "block_size": 8, "window_blocks": 3}


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("order", [{}, BLOCK], ids=["uniform", "block"])
def test_resume_mid_epoch_reads_what_an_uninterrupted_run_reads(make_table, tmp_path, num_workers, order):
    uri, _ = make_table("toy", 100)  # 13 batches an epoch
    reference = Recorder()
    trainer(tmp_path).fit(reference, datamodule=datamodule(uri, **order))
    kwargs = {"num_workers": num_workers, **order}
    resumed = interrupted_then_resumed(tmp_path, uri, 5, kwargs, kwargs)
    assert resumed == reference.seen


def test_resume_keeps_the_pinned_version_when_rows_are_appended(make_table, tmp_path):
    uri, table = make_table("toy", 100)
    reference = Recorder()
    trainer(tmp_path).fit(reference, datamodule=datamodule(uri))
    ckpt = tmp_path / "mid.ckpt"
    first = Recorder()
    with pytest.raises(Preempted):
        trainer(tmp_path, callbacks=[SaveThenStop(4, ckpt)]).fit(first, datamodule=datamodule(uri))
    table.add(toy_table(150).slice(100))
    second = Recorder()
    with pytest.warns(UserWarning, match="has moved on since the checkpoint"):
        trainer(tmp_path).fit(second, datamodule=datamodule(uri), ckpt_path=ckpt)
    assert first.seen + second.seen == reference.seen
    assert max(i for batch in second.seen for i in batch) < 100


def test_changed_configuration_is_refused_naming_the_difference(make_table, tmp_path):
    uri, _ = make_table("toy", 100)
    ckpt = tmp_path / "mid.ckpt"
    with pytest.raises(Preempted):
        trainer(tmp_path, callbacks=[SaveThenStop(3, ckpt)]).fit(Recorder(), datamodule=datamodule(uri))
    changed = LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=8, seed=6)
    with pytest.raises(ResumeRefusedError, match=r"seed: the checkpoint's 5, now 6.*\(seed=5\).*resume='fresh'"):
        trainer(tmp_path).fit(Recorder(), datamodule=changed, ckpt_path=ckpt)
    fresh = Recorder()
    fresh_dm = LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=8, seed=6, resume="fresh")
    with pytest.warns(UserWarning, match="resume='fresh'"):
        trainer(tmp_path).fit(fresh, datamodule=fresh_dm, ckpt_path=ckpt)
    assert fresh.seen


def test_plain_lightning_checkpoint_starts_the_epoch_afresh(make_table, tmp_path):
    uri, _ = make_table("toy", 100)
    ckpt = tmp_path / "mid.ckpt"
    with pytest.raises(Preempted):
        trainer(tmp_path, callbacks=[SaveThenStop(3, ckpt)]).fit(Recorder(), datamodule=datamodule(uri))
    checkpoint = torch.load(ckpt, weights_only=False)
    del checkpoint["LanceDataModule"]
    torch.save(checkpoint, ckpt)
    model = Recorder()
    with pytest.warns(UserWarning, match="no lance-lightning data state"):
        trainer(tmp_path).fit(model, datamodule=datamodule(uri), ckpt_path=ckpt)
    # the interrupted epoch is read again from its first row, then the second epoch in full
    assert len(model.seen) == 13 + 13
    assert sorted(i for batch in model.seen[:13] for i in batch) == list(range(100))


HASH = {"kind": "hash", "columns": ["id"], "weights": {"train": 1}}


class AppendAfterEpoch(pl.Callback):
    """Appends rows 100..149 to the table when epoch 0 ends (a writer working beside training)."""

    def __init__(self, table) -> None:
        self.table = table

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            self.table.add(toy_table(150).slice(100))


@pytest.mark.parametrize("table_updates", ["pin", "next_epoch"])
def test_appended_rows_join_only_when_asked_and_only_at_an_epoch_boundary(make_table, tmp_path, table_updates):
    uri, table = make_table("toy", 100)
    model = Recorder()
    dm = LanceDataModule(uri, "toy", splits=HASH, batch_size=8, seed=5, table_updates=table_updates)
    run = trainer(tmp_path, callbacks=[AppendAfterEpoch(table)], reload_dataloaders_every_n_epochs=1)
    run.fit(model, datamodule=dm)
    epoch0 = [i for batch in model.seen[:13] for i in batch]
    later = [i for batch in model.seen[13:] for i in batch]
    assert sorted(epoch0) == list(range(100))
    assert sorted(later) == (list(range(150)) if table_updates == "next_epoch" else list(range(100)))


def test_resume_reads_the_pinned_version_until_the_epoch_ends_then_follows(make_table, tmp_path):
    uri, table = make_table("toy", 100)
    ckpt = tmp_path / "mid.ckpt"
    first = Recorder()

    def follow() -> LanceDataModule:
        return LanceDataModule(uri, "toy", splits=HASH, batch_size=8, seed=5, table_updates="next_epoch")

    with pytest.raises(Preempted):
        trainer(tmp_path, callbacks=[SaveThenStop(4, ckpt)], reload_dataloaders_every_n_epochs=1).fit(
            first, datamodule=follow()
        )
    table.add(toy_table(150).slice(100))
    second = Recorder()
    with pytest.warns(UserWarning, match="until this epoch ends"):
        trainer(tmp_path, reload_dataloaders_every_n_epochs=1).fit(second, datamodule=follow(), ckpt_path=ckpt)
    rest_of_epoch0 = [i for batch in second.seen[: 13 - 4] for i in batch]
    assert sorted([i for batch in first.seen for i in batch] + rest_of_epoch0) == list(range(100))
    assert sorted(i for batch in second.seen[13 - 4 :] for i in batch) == list(range(150))


def test_following_updates_needs_stable_splits_and_reloading(make_table, tmp_path):
    with pytest.raises(ValueError, match="random splits would reassign existing rows"):
        LanceDataModule("/unused", "toy", table_updates="next_epoch")
    uri, _ = make_table("toy", 50)
    dm = LanceDataModule(uri, "toy", splits=HASH, table_updates="next_epoch")
    with pytest.raises(ValueError, match=r"reload_dataloaders_every_n_epochs=1"):
        trainer(tmp_path).fit(Recorder(), datamodule=dm)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("order", [{}, BLOCK], ids=["uniform", "block"])
def test_resume_from_an_epoch_end_checkpoint_trains_the_next_epochs_exactly(make_table, tmp_path, num_workers, order):
    """Lightning's default ModelCheckpoint writes at epoch end; with workers, the resumed loader is
    primed before Lightning's set_epoch, so the position must already say "next epoch, row 0"."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    uri, _ = make_table("toy", 100)  # 13 batches an epoch
    kwargs = {"num_workers": num_workers, **order}
    reference = Recorder()
    trainer(tmp_path, max_epochs=4).fit(reference, datamodule=datamodule(uri, **kwargs))
    first = Recorder()
    saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, enable_checkpointing=True, callbacks=[saving]).fit(first, datamodule=datamodule(uri, **kwargs))
    resumed = Recorder()
    trainer(tmp_path, max_epochs=4).fit(resumed, datamodule=datamodule(uri, **kwargs), ckpt_path=saving.last_model_path)
    assert len(resumed.seen) == 2 * 13
    assert first.seen + resumed.seen == reference.seen


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_epoch_end_checkpoint_following_the_table_resumes_on_the_version_the_next_epoch_reads(tmp_path, num_workers):
    """``table_updates="next_epoch"``: rows written at an epoch's end (a curriculum's writer, an
    appender) join the next epoch; a resume from the checkpoint written at that end (Lightning's
    default ModelCheckpoint, after the writer's callback) reads them too, as the uninterrupted run
    did, not the version the finished epoch read (which it read before: 100 rows, not 150)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def follow() -> LanceDataModule:
        return LanceDataModule(
            uri, "toy", splits=HASH, batch_size=8, seed=5, table_updates="next_epoch", num_workers=num_workers
        )

    import lancedb

    run = {"reload_dataloaders_every_n_epochs": 1}
    uri = str(tmp_path / "reference")
    table = lancedb.connect(uri).create_table("toy", toy_table(100))
    reference = Recorder()
    trainer(tmp_path, callbacks=[AppendAfterEpoch(table)], **run).fit(reference, datamodule=follow())
    assert sum(map(len, reference.seen[13:])) == 150

    uri = str(tmp_path / "interrupted")  # the same table, written the same way
    table = lancedb.connect(uri).create_table("toy", toy_table(100))
    first = Recorder()
    saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, max_epochs=1, enable_checkpointing=True, callbacks=[AppendAfterEpoch(table), saving], **run).fit(
        first, datamodule=follow()
    )
    resumed = Recorder()
    with pytest.warns(UserWarning, match="until epoch 1 starts"):
        trainer(tmp_path, **run).fit(resumed, datamodule=follow(), ckpt_path=saving.last_model_path)
    assert first.seen + resumed.seen == reference.seen


def as_format_1(state: dict) -> dict:
    """The data state as lance-lightning wrote it up to commit faa4ade (format 1): the epoch being
    read, even when finished, with its batches and rows consumed."""
    train = state["train"]
    return {
        "format": 1,
        **{key: state["identity"][key] for key in ("table", "splits", "filter", "seed")},
        "fingerprint": "0123456789abcdef",
        "table_version": state["table_version"],
        "world_size": state["world_size"],
        "epoch": train["epoch"],
        "train_batches_done": train["batches_done"],
        "train_rows_consumed": train["start_row"],
        "train_split_rows": train["split_rows"],
        "train_order_world_size": train["order_world_size"] or state["world_size"],
        "train_order_batch_size": train["order_batch_size"] or train["batch_size"],
    }


def test_checkpoints_of_format_1_still_resume_exactly(make_table, tmp_path):
    uri, _ = make_table("toy", 100)
    reference = Recorder()
    trainer(tmp_path).fit(reference, datamodule=datamodule(uri))
    ckpt = tmp_path / "mid.ckpt"
    first = Recorder()
    with pytest.raises(Preempted):
        trainer(tmp_path, callbacks=[SaveThenStop(5, ckpt)]).fit(first, datamodule=datamodule(uri))
    checkpoint = torch.load(ckpt, weights_only=False)
    assert checkpoint["LanceDataModule"]["format"] == 2
    checkpoint["LanceDataModule"] = as_format_1(checkpoint["LanceDataModule"])
    torch.save(checkpoint, ckpt)
    second = Recorder()
    trainer(tmp_path).fit(second, datamodule=datamodule(uri), ckpt_path=ckpt)
    assert first.seen + second.seen == reference.seen


def test_an_unknown_state_format_is_refused(make_table, tmp_path):
    uri, _ = make_table("toy", 100)
    ckpt = tmp_path / "mid.ckpt"
    with pytest.raises(Preempted):
        trainer(tmp_path, callbacks=[SaveThenStop(3, ckpt)]).fit(Recorder(), datamodule=datamodule(uri))
    checkpoint = torch.load(ckpt, weights_only=False)
    checkpoint["LanceDataModule"]["format"] = 99
    torch.save(checkpoint, ckpt)
    with pytest.raises(ValueError, match=r"format 99; this version reads formats \[1, 2\].*resume='fresh'"):
        trainer(tmp_path).fit(Recorder(), datamodule=datamodule(uri), ckpt_path=ckpt)


# Issue 29 item 5: a resume that changes the epoch's order continued the interrupted epoch at the
# checkpoint's row count in the new order (545-596 of 4,000 rows read twice, as many never).
ORDER_ROWS, ORDER_BATCH = 4000, 100


@pytest.fixture(scope="module")
def order_checkpoints(tmp_path_factory):
    """A 4,000-row table and two mid-epoch checkpoints (after 15 of 40 batches): uniform, block."""
    import lancedb

    root = tmp_path_factory.mktemp("order_changes")
    uri = str(root / "db")
    lancedb.connect(uri).create_table("toy", toy_table(ORDER_ROWS))
    checkpoints = {}
    for name, order in {"uniform": {}, "block": {"shuffle": "block", "block_size": 256}}.items():
        checkpoints[name] = root / f"{name}.ckpt"
        dm = LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=ORDER_BATCH, seed=5, **order)
        with pytest.raises(Preempted):
            trainer(root, callbacks=[SaveThenStop(15, checkpoints[name])]).fit(Recorder(), datamodule=dm)
    return uri, checkpoints


@pytest.mark.parametrize(
    ("checkpoint", "changed", "named"),
    [
        ("uniform", {"shuffle": "block", "block_size": 512}, "shuffle: the checkpoint's 'uniform', now 'block'"),
        ("uniform", {"shuffle": "none"}, "shuffle: the checkpoint's 'uniform', now 'none'"),
        ("block", {"shuffle": "block", "block_size": 512}, "block_size: the checkpoint's 256, now 512"),
        (
            "block",
            {"shuffle": "block", "block_size": 256, "window_blocks": 4},
            "window_blocks: the checkpoint's 8, now 4",
        ),
        ("block", {}, "shuffle: the checkpoint's 'block', now 'uniform'"),
    ],
)
def test_a_resume_that_changes_the_epoch_order_is_refused_naming_the_setting(
    order_checkpoints, tmp_path, checkpoint, changed, named
):
    uri, checkpoints = order_checkpoints
    dm = LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=ORDER_BATCH, seed=5, **changed)
    model = Recorder()
    with pytest.raises(ResumeRefusedError, match=re.escape(named)) as err:
        trainer(tmp_path, max_epochs=1).fit(model, datamodule=dm, ckpt_path=checkpoints[checkpoint])
    assert "epoch 0 after 1500 of its 4000 train rows" in str(err.value)
    assert "resume='fresh'" in str(err.value) and not model.seen


def test_a_resume_that_keeps_the_order_but_changes_the_batches_reads_every_row_once(order_checkpoints, tmp_path):
    """The control: block_size under the uniform shuffle plays no part, and batch_size is re-cut."""
    uri, checkpoints = order_checkpoints
    dm = LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=64, seed=5, block_size=512)
    model = Recorder()
    with pytest.warns(UserWarning, match="the 2500 unread rows of epoch 0"):
        trainer(tmp_path, max_epochs=1).fit(model, datamodule=dm, ckpt_path=checkpoints["uniform"])
    reference = LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=ORDER_BATCH, seed=5)
    reference.setup("fit")
    order = [i for batch in reference.train_dataloader() for i in batch["id"].tolist()]
    assert [i for batch in model.seen for i in batch] == order[1500:]


@pytest.mark.long
def test_a_resume_with_drop_last_changed_recuts_the_rest_of_the_epoch(make_table, tmp_path):
    """drop_last is re-cut: the epoch goes on at the checkpoint's row, its partial last step now left out."""
    uri, _ = make_table("toy", 100)  # 12 whole batches of 8 and 4 rows
    reference = Recorder()
    trainer(tmp_path).fit(reference, datamodule=datamodule(uri))
    resumed = interrupted_then_resumed(tmp_path, uri, 5, {}, {"drop_last": True})
    assert resumed[:12] == reference.seen[:12]  # epoch 0: the same rows, without the 4-row batch
    epoch1 = resumed[12:]
    assert len(epoch1) == 12 and {len(b) for b in epoch1} == {8} and len({i for b in epoch1 for i in b}) == 96


def test_a_checkpoint_records_the_order_the_trainer_read_not_the_shuffle_setting(make_table, tmp_path):
    """overfit_batches reads the train split in table order whatever `shuffle` says: a resume without it
    would go on in the shuffled order at the checkpoint's row, so the checkpoint records "none"."""
    uri, _ = make_table("toy", 100)
    ckpt = tmp_path / "mid.ckpt"
    with pytest.raises(Preempted):
        trainer(tmp_path, overfit_batches=4, callbacks=[SaveThenStop(2, ckpt)]).fit(
            Recorder(), datamodule=datamodule(uri)
        )
    with pytest.raises(ResumeRefusedError, match=r"shuffle: the checkpoint's 'none', now 'uniform'"):
        trainer(tmp_path).fit(Recorder(), datamodule=datamodule(uri), ckpt_path=ckpt)
