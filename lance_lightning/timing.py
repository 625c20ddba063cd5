"""Where a dataset's time goes, summed per process and readable from the training process.

:class:`LoaderTiming` is what :class:`~lance_lightning.monitor.LoaderMonitor` attaches to a
stage's dataset (``dataset.timing``) to tell the read from the transform: every
``dataset[index]`` adds its duration, and every call of the transform inside it adds the
transform's. The sums live in a tiny shared-memory table, one row per process (the training
process, then one per DataLoader worker id), so they cross into worker processes with the
dataset and the training process reads every worker's sums without any message.

This module imports torch only: DataLoader workers unpickle it with the dataset and must not
import Lightning. The cost is two ``perf_counter`` calls and two float additions a batch (and
two more a transformed batch): well under a microsecond.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

__all__ = ["LoaderTiming"]

SLOTS = 65
"""Rows of the table: the training process, then DataLoader workers 0-63 (worker ids beyond
share rows modulo 64; their sums stay right up to the rare lost update of a shared row)."""
_LOAD, _TRANSFORM, _ITEMS = 0, 1, 2


class LoaderTiming:
    """Seconds spent in ``dataset[index]`` and, inside it, in the transform, per process."""

    def __init__(self) -> None:
        self.shared = torch.zeros((SLOTS, 3), dtype=torch.float64).share_memory_()
        self._row: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"shared": self.shared}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.shared = state["shared"]
        self._row = None  # each process finds its own row on first use

    def _mine(self) -> np.ndarray:
        if self._row is None:
            info = get_worker_info()
            slot = 0 if info is None else 1 + info.id % (SLOTS - 1)
            self._row = self.shared.numpy()[slot]  # a view: writes go to shared memory
        return self._row

    def load(self, get: Callable[[Any], Any], index: Any) -> Any:
        """``get(index)``, its duration added to this process's load time."""
        start = perf_counter()
        out = get(index)
        row = self._mine()
        row[_LOAD] += perf_counter() - start
        row[_ITEMS] += 1
        return out

    def transform(self, fn: Callable[[Any], Any], batch: Any) -> Any:
        """``fn(batch)``, its duration added to this process's transform time."""
        start = perf_counter()
        out = fn(batch)
        self._mine()[_TRANSFORM] += perf_counter() - start
        return out

    def totals(self) -> dict[str, float]:
        """Sums over every process: ``load_s`` (whole ``dataset[index]`` calls), ``transform_s``
        (the part of it in the transform), ``read_s`` (the rest: read, convert, gather), ``items``."""
        load, transform, items = self.shared.numpy().sum(axis=0).tolist()
        return {"load_s": load, "transform_s": transform, "read_s": max(load - transform, 0.0), "items": items}

    def reset(self) -> None:
        self.shared.zero_()
