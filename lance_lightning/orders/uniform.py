"""``shuffle="uniform"``: every row order equally likely, any position computed on its own."""

from __future__ import annotations

import numpy as np

from .base import EpochOrder, seed_sequence

FEISTEL_ROUNDS = 4
"""Four rounds with a keyed mixing function: the Luby-Rackoff bound for a pseudo-random permutation."""


class UniformOrder(EpochOrder):
    """A uniformly shuffled order, position ``i`` of the epoch computed on its own.

    A balanced Feistel network over ``2 * half`` bits (the smallest even bit width covering
    ``num_rows``) is a permutation of that power of two; values ``>= num_rows`` are fed back
    in (cycle walking) until they land inside, which keeps it a permutation of
    ``[0, num_rows)``. The round function is a 64-bit multiply-xorshift mix of the right
    half with a per-round key. The keys come from ``(seed, epoch)`` alone, so it is a
    bijection on ``[0, n)`` computed in O(batch) time and memory.
    """

    name = "uniform"

    def __init__(self, num_rows: int, *, seed: int, epoch: int) -> None:
        self.num_rows = num_rows
        bits = max(2, int(num_rows - 1).bit_length() if num_rows > 1 else 2)
        self.half = (bits + 1) // 2
        self.mask = np.uint64((1 << self.half) - 1)
        self.keys = seed_sequence(seed, epoch, 0).generate_state(FEISTEL_ROUNDS, dtype=np.uint64)
        self.nbytes = self.keys.nbytes

    @classmethod
    def create(cls, num_rows: int, *, seed: int, epoch: int, **_: int) -> UniformOrder:
        return cls(num_rows, seed=seed, epoch=epoch)

    def _round(self, right: np.ndarray, key: np.uint64) -> np.ndarray:
        z = (right ^ key) * np.uint64(0x9E3779B97F4A7C15)
        z ^= z >> np.uint64(29)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(32)
        return z & self.mask

    def _permute(self, x: np.ndarray) -> np.ndarray:
        half = np.uint64(self.half)
        left, right = x >> half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ self._round(right, key)
        return (left << half) | right

    def positions(self, indices: np.ndarray) -> np.ndarray:
        x = np.asarray(indices, dtype=np.uint64)
        if self.num_rows <= 1:
            return x.astype(np.int64)
        with np.errstate(over="ignore"):
            y = self._permute(x)
            outside = y >= np.uint64(self.num_rows)
            while outside.any():
                y[outside] = self._permute(y[outside])
                outside = y >= np.uint64(self.num_rows)
        return y.astype(np.int64)
