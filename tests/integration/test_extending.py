"""The README's "Extending" recipe: a shuffle order registered by user code is a setting like any other."""

from __future__ import annotations

import numpy as np
import pytest

from lance_lightning import LanceDataModule
from lance_lightning.orders import ORDERS, EpochOrder, register


@pytest.fixture
def reverse_order():
    @register
    class ReverseOrder(EpochOrder):
        """The table backwards (the README's example)."""

        name = "reverse"
        shuffles = True
        contiguous = True

        def __init__(self, num_rows: int) -> None:
            self.num_rows = num_rows

        @classmethod
        def create(cls, num_rows, *, seed, epoch, **settings):
            return cls(num_rows)

        @classmethod
        def group_batches(cls, batch_size, *, block_size, window_blocks):
            return max(1, 16_384 // batch_size)

        def positions(self, indices):
            return self.num_rows - 1 - np.asarray(indices, dtype=np.int64)

    yield ReverseOrder
    ORDERS.pop("reverse")


@pytest.mark.parametrize("staging", ["auto", "always"])
def test_a_registered_order_is_a_shuffle_setting(make_table, reverse_order, staging):
    uri, _ = make_table("toy", 50)
    dm = LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=8, shuffle="reverse", staging=staging)
    dm.setup("fit")
    ids = [i for batch in dm.train_dataloader() for i in batch["id"].tolist()]
    assert ids == list(range(49, -1, -1))  # every row once, in the order's order


def test_an_unregistered_order_is_refused_naming_the_registered_ones(make_table):
    with pytest.raises(ValueError, match=r"shuffle must be one of 'none', 'uniform', 'block'.*got 'reverse'"):
        LanceDataModule("/unused", "toy", shuffle="reverse")
