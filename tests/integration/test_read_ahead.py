"""``read_ahead``: with no workers, batches are read on a background thread while the step runs.

Reading ahead must change when a batch is read, never which rows it holds, in which order, or what
a checkpoint says was consumed; an error while reading ahead is raised at the batch it hit; a loop
that stops early leaves no thread behind.
"""

from __future__ import annotations

import gc
import threading

import lightning.pytorch as pl
import pytest
import torch

from lance_lightning import LanceDataModule
from tests.helpers import Preempted, Recorder, SaveThenStop, quiet_trainer

THREAD = "lance-lightning-loader-read-ahead"


def record_thread(batch):
    """A transform that notes the thread that read the batch."""
    batch["thread"] = threading.current_thread().name
    return batch


class FailsAt:
    """A transform that raises when it reads the batch whose first id is ``first_id``."""

    def __init__(self, first_id: int) -> None:
        self.first_id = first_id

    def __call__(self, batch):
        if int(batch["id"][0]) == self.first_id:
            raise RuntimeError(f"bad rows at id {self.first_id}")
        return batch


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    return quiet_trainer(tmp_path, **{"max_epochs": 2, "num_sanity_val_steps": 0, **kwargs})


def datamodule(uri: str, **kwargs) -> LanceDataModule:
    splits = {"train": 0.8, "val": 0.2}
    return LanceDataModule(uri, "toy", columns=["id", "x", "y"], splits=splits, batch_size=8, **kwargs)


@pytest.mark.parametrize("staging", ["auto", "off"])
def test_read_ahead_hands_the_same_batches_in_the_same_order(make_table, tmp_path, staging):
    uri, _ = make_table("toy", 203)
    seen = {}
    for depth in (0, 2, 5):
        model = Recorder()
        trainer(tmp_path / str(depth)).fit(model, datamodule=datamodule(uri, read_ahead=depth, staging=staging))
        seen[depth] = model.seen
    assert len(seen[0]) == 2 * 21  # 162 train rows, batches of 8, two epochs reshuffled
    assert seen[2] == seen[0] and seen[5] == seen[0]
    assert seen[0][:21] != seen[0][21:]


def test_batches_are_read_on_the_read_ahead_thread(make_table):
    uri, _ = make_table("toy", 203)
    dm = datamodule(uri, transform=record_thread)
    dm.setup("fit")
    threads = [batch["thread"] for batch in dm.train_dataloader()]
    # the first batch is read by iter() itself (the epoch's order is fixed there, as with workers)
    assert threads[0] == threading.current_thread().name and set(threads[1:]) == {THREAD}
    dm = datamodule(uri, transform=record_thread, read_ahead=0)
    dm.setup("fit")
    assert {batch["thread"] for batch in dm.train_dataloader()} == {threading.current_thread().name}


def test_an_error_while_reading_ahead_is_raised_at_its_batch(make_table):
    uri, _ = make_table("toy", 203)
    dm = datamodule(uri, transform=FailsAt(first_id=-1), staging="always")  # staged: one batch a read
    dm.setup("fit")
    first_ids = [int(batch["id"][0]) for batch in dm.train_dataloader()]
    dm.datasets["train"].transform = FailsAt(first_id=first_ids[6])
    got = []
    with pytest.raises(RuntimeError, match=f"bad rows at id {first_ids[6]}"):
        for batch in dm.train_dataloader():
            got.append(int(batch["id"][0]))
    assert got == first_ids[:6]  # every batch before the bad one, none after


class BadRows(Exception):
    """What a transform raises on the first batch of an epoch, in the test below."""


def fails_at_once(batch):
    raise BadRows(f"bad rows at id {int(batch['id'][0])}")


def test_an_error_on_an_epochs_first_batch_reaches_the_user_as_itself(make_table, tmp_path):
    """Issue 29 item 9: the first batch is read by ``iter()``; an error there used to leave Lightning's
    CombinedLoader without an iterator, whose teardown then raised ``Please call iter(combined_loader)
    first`` in its place."""
    uri, _ = make_table("toy", 203)
    dm = datamodule(uri, transform=fails_at_once, staging="off")
    with pytest.raises(BadRows, match="bad rows at id"):
        trainer(tmp_path, limit_val_batches=0).fit(Recorder(), datamodule=dm)
    dm = datamodule(uri, transform=fails_at_once, staging="off")
    dm.setup("fit")
    batches = iter(dm.train_dataloader())  # iter() reads the first batch, and keeps its error for next()
    with pytest.raises(BadRows):
        next(batches)


def test_a_loop_that_stops_early_leaves_no_thread(make_table):
    uri, _ = make_table("toy", 203)
    dm = datamodule(uri)
    dm.setup("fit")
    for _ in range(3):
        batches = iter(dm.train_dataloader())
        next(batches), next(batches)
        del batches
    gc.collect()
    assert not [t for t in threading.enumerate() if t.name == THREAD]


def test_a_checkpoint_counts_consumed_batches_not_those_read_ahead(make_table, tmp_path):
    """Stopped after 5 steps with 4 more batches read ahead: the resumed run reads exactly the rows
    the uninterrupted one reads after its 5th step."""
    uri, _ = make_table("toy", 203)
    reference = Recorder()
    trainer(tmp_path / "ref").fit(reference, datamodule=datamodule(uri, read_ahead=4))

    ckpt = tmp_path / "mid.ckpt"
    stopped = Recorder()
    with pytest.raises(Preempted):
        trainer(tmp_path / "stop", callbacks=[SaveThenStop(5, ckpt)]).fit(
            stopped, datamodule=datamodule(uri, read_ahead=4)
        )
    resumed = Recorder()
    trainer(tmp_path / "resume").fit(resumed, datamodule=datamodule(uri, read_ahead=4), ckpt_path=ckpt)
    assert stopped.seen == reference.seen[:5]
    assert resumed.seen == reference.seen[5:]
    assert torch.tensor([i for b in reference.seen[:21] for i in b]).unique().numel() == 162
