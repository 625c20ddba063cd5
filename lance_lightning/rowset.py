"""A sorted set of row offsets or row addresses in about a quarter of a byte per spanned row.

A split of a 100M-row table held as an array of 8-byte row addresses costs 800 MB in every
rank. :class:`RowSet` holds it as a bitmap over the range it spans (1 bit per table row)
plus the count of members before each 64-bit word (1 more bit per row), and still answers
"the i-th member" for a whole batch of positions at once (:meth:`RowSet.select`), with no
per-row Python. Row addresses (``fragment << 32 | row``) jump by billions between fragments;
a gap wider than :data:`SEGMENT_GAP` starts a new segment, so the bitmap never spans a gap.
"""

from __future__ import annotations

import numpy as np

SEGMENT_GAP = 1 << 20
"""Members further apart than this go in separate bitmaps (fragment jumps in row addresses)."""

_MIN_RUN = 64
"""Consecutive positions from this many on are decoded as one run."""
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
# _SELECT8[b, k]: position of the k-th set bit (k from 0) of byte b, little-endian bit order.
_SELECT8 = np.zeros((256, 8), dtype=np.uint8)
for _b in range(256):
    for _k, _bit in enumerate(i for i in range(8) if _b >> i & 1):
        _SELECT8[_b, _k] = _bit


class RowSet:
    """Sorted, distinct ``uint64`` values: ``len``, ``select(positions)``, ``to_array()``."""

    def __init__(self, bases: list[int], words: list[np.ndarray], ranks: list[np.ndarray], counts: list[int]) -> None:
        self.bases, self.words, self.ranks = bases, words, ranks
        self.starts = np.cumsum([0, *counts]).astype(np.int64)  # members before each segment

    @classmethod
    def from_sorted(cls, values: np.ndarray) -> RowSet:
        """From sorted, distinct non-negative integers (checked)."""
        values = np.asarray(values).astype(np.uint64, copy=False)
        if len(values) > 1 and not np.all(values[1:] > values[:-1]):
            raise ValueError("RowSet needs sorted, distinct values")
        cuts = (np.flatnonzero(np.diff(values) > SEGMENT_GAP) + 1).tolist()
        bases, words, ranks, counts = [], [], [], []
        for lo, hi in zip([0, *cuts], [*cuts, len(values)]):
            if hi == lo:
                continue
            base = int(values[lo])
            rel = (values[lo:hi] - np.uint64(base)).astype(np.int64)
            bits = np.zeros((int(rel[-1]) // 64 + 1) * 64, dtype=bool)
            bits[rel] = True
            packed = np.packbits(bits, bitorder="little").view(np.uint64)
            per_word = _POPCOUNT8[packed.view(np.uint8)].reshape(-1, 8).sum(axis=1, dtype=np.int64)
            bases.append(base)
            words.append(packed)
            ranks.append(np.concatenate([[0], np.cumsum(per_word)[:-1]]).astype(np.int64))
            counts.append(hi - lo)
        return cls(bases, words, ranks, counts)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes + r.nbytes for w, r in zip(self.words, self.ranks)) + self.starts.nbytes

    def select(self, positions: np.ndarray) -> np.ndarray:
        """The members at ``positions`` (0-based ranks, any order, repeats allowed), as ``uint64``.

        Runs of consecutive positions (what block and sequential reads ask for) are decoded a
        word range at a time; scattered positions one rank lookup each.
        """
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"positions must be in [0, {len(self)}), got {positions.min()}..{positions.max()}")
        out = np.empty(len(positions), dtype=np.uint64)
        scattered = np.ones(len(positions), dtype=bool)
        if len(positions) >= _MIN_RUN:
            breaks = np.flatnonzero(np.diff(positions) != 1) + 1
            starts, stops = np.r_[0, breaks], np.r_[breaks, len(positions)]
            for lo, hi in zip(starts.tolist(), stops.tolist()):
                if hi - lo >= _MIN_RUN and self._select_run(int(positions[lo]), hi - lo, out[lo:hi]):
                    scattered[lo:hi] = False
        if scattered.any():
            out[scattered] = self._select_each(positions[scattered])
        return out

    def _select_run(self, first: int, length: int, out: np.ndarray) -> bool:
        """Members ``first .. first + length - 1`` into ``out``; False if they span two segments."""
        s = int(np.searchsorted(self.starts, first, side="right")) - 1
        if first + length > self.starts[s + 1]:
            return False
        local = first - int(self.starts[s])
        ranks = self.ranks[s]
        w0 = int(np.searchsorted(ranks, local, side="right")) - 1
        w1 = int(np.searchsorted(ranks, local + length - 1, side="right")) - 1
        bits = np.flatnonzero(np.unpackbits(self.words[s][w0 : w1 + 1].view(np.uint8), bitorder="little"))
        skip = local - int(ranks[w0])
        out[:] = np.uint64(self.bases[s] + w0 * 64) + bits[skip : skip + length].astype(np.uint64)
        return True

    def _select_each(self, positions: np.ndarray) -> np.ndarray:
        out = np.empty(len(positions), dtype=np.uint64)
        segment = np.searchsorted(self.starts, positions, side="right") - 1
        for s in np.unique(segment).tolist():
            mask = segment == s
            local = positions[mask] - self.starts[s]
            word = np.searchsorted(self.ranks[s], local, side="right") - 1
            k = local - self.ranks[s][word]
            byte_values = self.words[s][word].view(np.uint8).reshape(-1, 8)
            before = np.cumsum(_POPCOUNT8[byte_values], axis=1, dtype=np.int64)
            byte = (before <= k[:, None]).sum(axis=1)
            rows = np.arange(len(k))
            k_in_byte = k - np.where(byte > 0, before[rows, np.maximum(byte - 1, 0)], 0)
            bit = _SELECT8[byte_values[rows, byte], k_in_byte]
            out[mask] = np.uint64(self.bases[s]) + (word * 64 + byte * 8 + bit).astype(np.uint64)
        return out

    def to_array(self) -> np.ndarray:
        """Every member, sorted (``uint64``): 8 bytes a member, for one-off uses at setup."""
        parts = [
            np.uint64(base) + np.flatnonzero(np.unpackbits(w.view(np.uint8), bitorder="little")).astype(np.uint64)
            for base, w in zip(self.bases, self.words)
        ]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RowSet):
            return NotImplemented
        return len(self) == len(other) and np.array_equal(self.to_array(), other.to_array())

    def __repr__(self) -> str:
        return f"RowSet({len(self):,} rows, {len(self.bases)} segment(s), {self.nbytes:,} bytes)"
