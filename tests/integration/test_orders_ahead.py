"""The next epoch's order made ahead (on a thread, while this epoch is read) changes no batch.

A mixture's and a weighted epoch order are made whole at the epoch's start; the sampler makes the
next epoch's while the current one is read, and a mixture's next order takes the source passes that
run over the boundary from the one before instead of permuting them again. The batches a Trainer
reads, across epoch boundaries and after a mid-epoch resume, must be those of orders each made on
demand at its epoch's start, with and without workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lance_lightning import LanceDataModule
from lance_lightning.sampler import LanceBatchSampler
from tests.conftest import toy_table
from tests.helpers import Preempted, SaveThenStop, quiet_trainer
from tests.helpers import Recorder as BaseRecorder
from tests.integration.test_mixture import MIX

EPOCHS = 3
SETTINGS = {
    # 100 rows of batch 8: 13 batches an epoch; "odd" (15 rows, 20 an epoch) and "other" (40 rows,
    # 30 an epoch) end each epoch inside a pass, which the next epoch's order continues
    "mixture": {"mix": MIX},
    # a quarter of the rows weigh 0: 75 rows an epoch, 10 batches
    "weighted": {"weight_column": "w"},
}


@pytest.fixture
def tables(make_table):
    table = toy_table(100).append_column("w", pa.array(np.arange(100) % 4, pa.float64()))
    uri, _ = make_table("toy", table)
    other = toy_table(40).set_column(0, "id", pa.array(np.arange(1000, 1040, dtype=np.int64)))
    make_table("other", other.append_column("w", pa.array(np.ones(40))))
    return uri


def datamodule(uri: str, tmp_path: Path, order: str, num_workers: int) -> LanceDataModule:
    return LanceDataModule(
        uri,
        "toy",
        splits={"train": 1.0},
        batch_size=8,
        seed=5,
        columns=["id", "x", "y"],
        cache=str(tmp_path / "stages"),
        num_workers=num_workers,
        **SETTINGS[order],
    )


def read(uri: str, tmp_path: Path, order: str, num_workers: int, *, stop_at: int | None = None) -> Recorder:
    """The batches of ``EPOCHS`` epochs; ``stop_at``: preempted after that many steps, then resumed
    from the checkpoint written there (the batches of both runs, one after the other)."""
    model = Recorder(order)
    if stop_at is None:
        quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=EPOCHS).fit(
            model, datamodule=datamodule(uri, tmp_path, order, num_workers)
        )
        return model
    ckpt = tmp_path / "mid.ckpt"
    with pytest.raises(Preempted):
        quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=EPOCHS, callbacks=[SaveThenStop(stop_at, ckpt)]).fit(
            model, datamodule=datamodule(uri, tmp_path, order, num_workers)
        )
    quiet_trainer(tmp_path, limit_val_batches=0, max_epochs=EPOCHS).fit(
        model, datamodule=datamodule(uri, tmp_path, order, num_workers), ckpt_path=ckpt
    )
    return model


class Recorder(BaseRecorder):
    """Records the ids of every batch and, of a mixture, each row's source."""

    def __init__(self, order: str) -> None:
        super().__init__()
        self.mixes = order == "mixture"
        self.sources: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.sources.append(batch["source"].tolist() if self.mixes else [])
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("order", sorted(SETTINGS))
def test_orders_made_ahead_read_the_batches_of_orders_made_on_demand(tables, tmp_path, monkeypatch, order, num_workers):
    with monkeypatch.context() as patch:
        patch.setattr(LanceBatchSampler, "make_ahead", False)  # each epoch's order made when it starts
        on_demand = read(tables, tmp_path / "on_demand", order, num_workers)
    batches = 13 if order == "mixture" else 10
    assert len(on_demand.seen) == EPOCHS * batches
    ahead = read(tables, tmp_path / "ahead", order, num_workers)
    assert (ahead.seen, ahead.sources) == (on_demand.seen, on_demand.sources)
    # preempted 3 batches into the second epoch: the resumed run makes that epoch's order on demand
    # and the third's ahead (from it)
    resumed = read(tables, tmp_path / "resumed", order, num_workers, stop_at=batches + 3)
    assert (resumed.seen, resumed.sources) == (on_demand.seen, on_demand.sources)
