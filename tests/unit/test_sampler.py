"""Rows inside a batch come in the epoch's order, from the sampler to the batch a model sees."""

from __future__ import annotations

import numpy as np
import pytest

from lance_lightning import LanceDataModule
from lance_lightning.dataset import BatchGroup
from lance_lightning.sampler import LanceBatchSampler
from lance_lightning.sharding import order_for


def batches_of(items) -> list[np.ndarray]:
    """The sampler's items with its :class:`BatchGroup` s opened up: one array a batch."""
    return [batch for item in items for batch in (item if isinstance(item, BatchGroup) else [item])]


@pytest.mark.parametrize("rank", [0, 1])
def test_a_uniform_batch_is_the_slice_of_the_epoch_order(rank):
    n, b, w = 1000, 16, 2
    sampler = LanceBatchSampler(n, batch_size=b, num_replicas=w, rank=rank, shuffle="uniform", seed=5)
    sampler.set_epoch(3)
    order = order_for(n, mode="uniform", seed=5, epoch=3)
    batches = list(sampler)
    for k, batch in enumerate(batches[:-1]):  # global step k: rank r reads [(k*w + r)*b, ... + b)
        start = (k * w + rank) * b
        assert batch.tolist() == order.positions(np.arange(start, start + b)).tolist()
    assert sum(np.all(np.diff(b) > 0) for b in batches) <= 1, "batches come sorted"


def test_a_sequential_batch_stays_ascending():
    batches = list(LanceBatchSampler(100, batch_size=8, num_replicas=3, rank=2, shuffle="none"))
    assert [b.tolist() for b in batches[:2]] == [list(range(16, 24)), list(range(40, 48))]


@pytest.mark.parametrize(
    "settings",
    [
        dict(shuffle="uniform"),  # one read a batch: a take, put back in the batch's order
        dict(shuffle="block", block_size=8, window_blocks=4),  # a window (2 batches) read together
        dict(shuffle="uniform", in_memory=True, columns=["id", "x", "y"]),  # gathers from memory
    ],
    ids=["uniform", "block", "uniform-in-memory"],
)
def test_train_batches_hold_the_rows_the_sampler_named_in_its_order(make_table, settings):
    uri, _ = make_table("toy", 203)  # id == row number; one fragment: row address == id
    dm = LanceDataModule(uri, "toy", splits={"train": 0.8, "val": 0.2}, batch_size=16, seed=7, **settings)
    dm.setup("fit")
    sampler = dm.samplers["train"]
    row_ids = dm.splits["train"].row_ids
    named = [row_ids[b].tolist() for b in batches_of(sampler)]
    seen = [batch["id"].tolist() for batch in dm.train_dataloader()]
    assert seen == named, "a batch's ids are not the rows the sampler named, in its order"
    assert sorted(i for batch in seen for i in batch) == sorted(row_ids.tolist())
    assert sum(batch == sorted(batch) for batch in seen) <= 1, "batches come sorted, not in epoch order"
