"""Batch value types shared by the layers that make, read and hand over batches.

A :class:`BatchGroup` is what the sampler yields (the positions of consecutive batches, read
together), what a reader returns for it (the batches) and what the loader and the worker slots hand
out one by one. It lives below all of them (``sampler``, ``dataset``, ``slots``, ``loader``), so
each only looks down: none imports another for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


class BatchGroup(list):
    """Consecutive batches of one rank, read together; the loader hands them out one by one."""


def split_group(columns: dict[str, Any], sizes: list[int], finish: Callable[[dict[str, Any]], Any]) -> BatchGroup:
    """The rows of a group's columns, cut into consecutive batches of ``sizes`` (tensor views)."""
    bounds = np.cumsum([0, *sizes]).tolist()
    return BatchGroup(
        finish({name: _rows(v, lo, hi) for name, v in columns.items()}) for lo, hi in zip(bounds[:-1], bounds[1:])
    )


def _rows(value: Any, lo: int, hi: int) -> Any:
    """Rows ``lo:hi`` of one gathered column, as a view where the column is a tensor."""
    if isinstance(value, dict):
        return {name: _rows(child, lo, hi) for name, child in value.items()}
    return value[lo:hi]
