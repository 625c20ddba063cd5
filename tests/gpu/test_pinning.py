"""Pinned batches on a CUDA machine (skipped elsewhere): the paths that pin in the loader's own code.

* With workers, torch's pin-memory thread calls ``SlotBatch.pin_memory``, which copies a worker's
  slot straight into pinned memory (lance_lightning/slots.py).
* With no workers and ``read_ahead``, batches are pinned on the read-ahead thread, which first
  makes the caller's CUDA device current (pinned memory belongs to the current device).
Run ``python -m pytest tests/gpu`` on a machine with a GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from lance_lightning import LanceDataModule
from tests.conftest import toy_database, toy_table

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ROWS = 50_000


@pytest.fixture(scope="module")
def table_uri(tmp_path_factory):
    return toy_database(tmp_path_factory, "pinning", ROWS)


def pinned_epoch(uri: str, **settings: Any) -> Any:
    """One epoch of a pinning train loader over the whole table: every batch pinned, every row
    exact; the loader."""
    dm = LanceDataModule(
        uri, "toy", columns=["id", "x", "y"], batch_size=1024, splits={"train": 1.0}, pin_memory=True, **settings
    )
    dm.setup("fit")
    want = toy_table(ROWS).column("x").combine_chunks().flatten().to_numpy().reshape(ROWS, -1)
    dm.samplers["train"].set_epoch(0)
    loader = dm.train_dataloader()
    ids = []
    for batch in loader:
        assert all(t.is_pinned() for t in batch.values()), {k: t.is_pinned() for k, t in batch.items()}
        np.testing.assert_array_equal(batch["x"].numpy(), want[batch["id"].numpy()])
        ids.extend(batch["id"].tolist())
    assert sorted(ids) == list(range(ROWS))
    return loader


def test_worker_slots_are_copied_straight_into_pinned_memory(table_uri):
    loader = pinned_epoch(table_uri, num_workers=2)
    assert loader._iterator._lance_slots is not None


def test_read_ahead_pins_on_the_callers_device(table_uri):
    device = torch.cuda.device_count() - 1  # the last device: not the default a new thread would take
    torch.cuda.set_device(device)
    torch.cuda.init()
    pinned_epoch(table_uri, read_ahead=2)
