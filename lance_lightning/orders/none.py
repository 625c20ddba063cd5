"""``shuffle="none"``: table order."""

from __future__ import annotations

import numpy as np

from .base import SEQUENTIAL_READ_ROWS, EpochOrder


class SequentialOrder(EpochOrder):
    """Table order: position ``i`` of the epoch is row ``i`` of the split."""

    name = "none"
    shuffles = False
    contiguous = True

    def __init__(self, num_rows: int) -> None:
        self.num_rows = num_rows

    @classmethod
    def create(cls, num_rows: int, **_: int) -> SequentialOrder:
        return cls(num_rows)

    @classmethod
    def group_batches(cls, batch_size: int, *, block_size: int, window_blocks: int) -> int:
        return max(1, SEQUENTIAL_READ_ROWS // batch_size)

    def positions(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(indices, dtype=np.int64)
