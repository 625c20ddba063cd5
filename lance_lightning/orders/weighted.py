"""``shuffle="weighted"``: each epoch draws the split's rows with probability proportional to a weight.

Every draw is a function of ``(seed, epoch, row)`` or ``(seed, epoch, draw)`` alone: a uniform
``U`` from a keyed 64-bit mix (splitmix64's finalizer) of the counter, keyed by
``seed_sequence(seed, epoch, 2)``, so any row's or draw's value is computed again on demand.

* **Without replacement** (the default), the epoch is a *weighted permutation*
  (Efraimidis–Spirakis): row ``i`` gets the key ``-log(U_i) / w_i`` and the epoch reads the rows in
  increasing key order, the first ``samples`` of them (default: every row of weight > 0). The first
  row is ``i`` with probability ``w_i / sum(w)``, each later one the same among the rows left; a row
  of weight 0 has key ``inf`` and is never drawn. Sorting every key at the start of each epoch would
  cost about as much as reading the epoch's rows from a stage (75 ms at 900k rows), so the order is
  sorted in two steps: at the start of the epoch, one pass puts the rows in buckets by the top 16
  bits of their key (a float64's sign, exponent and 4 mantissa bits: bucket order is key order) with
  NumPy's radix sort, and each bucket (a few thousand rows) is sorted by the whole key, computed
  again, the first time the epoch reaches it. The result is the keys in increasing order (equal keys,
  which 53-bit ``U`` makes all but impossible, in a fixed order).
* **With replacement**, draw ``k`` is the row ``searchsorted(cumsum(w), U_k * sum(w), "right")``
  (inverse CDF over the float64 cumulative sum), found from a guide table (the row at each
  ``1 / rows`` of the total) in a few steps: computed slice by slice, nothing made ahead.

Memory a split row, in the training process only (workers receive positions batch by batch):
without replacement the weights (8 bytes, float64) and the epoch's positions (4 bytes, int32 below
2**31 rows, else 8): 12 bytes (120 MB at 10M rows), plus about 30 bytes a row for a moment while an
epoch's buckets are made; with replacement the weights, the cumulative weights and the guide: 20
bytes (200 MB at 10M rows).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import EpochOrder, seed_sequence

WEIGHTED_STREAM = 2
"""The ``seed_sequence(seed, epoch, 2)`` stream of the weighted draws (other orders use 0 and 1)."""
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_TOP_BITS = np.uint64(48)  # a key's bucket: its top 16 bits
_LARGEST = np.finfo(np.float64).max
GUIDE_STEPS = 8
"""Steps a draw with replacement walks from its guide cell before a binary search takes over."""


def _positions_dtype(rows: int) -> type:
    return np.int32 if rows < 2**31 else np.int64


def positive_rows(weights: np.ndarray) -> int:
    """Rows of weight > 0: what an epoch without replacement can draw at most."""
    return int(np.count_nonzero(weights > 0))


def epoch_draws(weights: np.ndarray, samples: int | None, replacement: bool) -> int:
    """Rows an epoch reads: ``samples``, or (None) every row of weight > 0.

    Raises ValueError when ``samples`` is more than the rows of weight > 0 without replacement.
    """
    positive = positive_rows(weights)
    if samples is None:
        return positive
    if replacement and samples and not positive:
        raise ValueError(f"samples_per_epoch={samples} draws from {len(weights)} rows that all weigh 0")
    if not replacement and samples > positive:
        raise ValueError(
            f"samples_per_epoch={samples} is more than the {positive} rows of weight > 0 (of {len(weights)}) that an "
            "epoch without replacement can draw: lower samples_per_epoch, or set weight_replacement=True"
        )
    return int(samples)


def uniforms(key: np.uint64, counters: np.ndarray) -> np.ndarray:
    """``U`` in ``(0, 1)`` (float64, 53 bits) for each counter: splitmix64's finalizer of
    ``counter * golden + key``; a pure function of the key and the counter."""
    with np.errstate(over="ignore"):
        z = np.asarray(counters, dtype=np.uint64) * _GOLDEN
        z += key  # in place from here on: one array, not one a step
        z ^= z >> np.uint64(30)
        z *= _MIX1
        z ^= z >> np.uint64(27)
        z *= _MIX2
        z ^= z >> np.uint64(31)
    z >>= np.uint64(11)
    u = z.astype(np.float64)
    u += 0.5
    u *= 2.0**-53
    return u


def _stable_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` of keys >= 0 (float64), faster.

    NumPy's stable sort of float64 is a timsort, fast on nearly sorted input: two stable radix
    passes (16 bits each) first put the keys in order of their top 32 bits (a non-negative float's
    bits order as its value), then the timsort finishes. Every pass is stable, so equal keys (weight
    0's inf, the capped ones) keep their order: exactly one stable sort's. 65 ms against 90 ms at 1M
    rows here, on the thread that makes the next epoch's order while workers read (with 2 workers on
    2 cores, its CPU time is theirs)."""
    bits = keys.view(np.uint64)
    by = np.argsort((bits >> np.uint64(32)).astype(np.uint16), kind="stable")
    by = by[np.argsort((bits[by] >> _TOP_BITS).astype(np.uint16), kind="stable")]
    return by[np.argsort(keys[by], kind="stable")]


class WeightedOrder(EpochOrder):
    """One epoch's weighted draws of a split's rows (see the module docstring)."""

    name = "weighted"
    weighted = True
    made_ahead = True

    def __init__(
        self,
        weights: np.ndarray,
        *,
        seed: int,
        epoch: int,
        samples: int | None = None,
        replacement: bool = False,
        whole: bool = False,
    ) -> None:
        """``whole``: sort the whole epoch now (an order made ahead on a thread), not bucket by bucket
        as read: the same order, without the buckets' pass nor computing the keys twice."""
        w = np.asarray(weights, dtype=np.float64)
        assert w.ndim == 1 and np.all(np.isfinite(w)) and np.all(w >= 0), "weights are checked at setup"
        self.num_rows = epoch_draws(w, samples, replacement)
        self.split_rows = len(w)
        self.replacement = replacement
        self.key = seed_sequence(seed, epoch, WEIGHTED_STREAM).generate_state(1, dtype=np.uint64)[0]
        self.weights = w  # the sampler's array, not a copy
        if replacement:
            self.cumulative = np.cumsum(w)
            self.last = int(np.flatnonzero(w)[-1]) if self.num_rows else 0
            # guide[j]: the rows whose cumulative weight is in a cell (of rows cells of the total)
            # before cell j; a look-up walks from its cell's guide a few steps instead of a binary search
            rows = max(len(w), 1)
            total = self.cumulative[-1] if self.num_rows else 1.0  # no draw: a guide never read
            cells = np.minimum((self.cumulative * (rows / total)).astype(np.int64), rows - 1)
            counts = np.bincount(cells, minlength=rows)
            del cells
            self.guide = np.concatenate([[0], np.cumsum(counts[:-1])]).astype(_positions_dtype(len(w)))
            return
        keys = self._keys(np.arange(len(w), dtype=np.int64))
        if whole:  # one stable sort of the keys, as complete() would leave the buckets: one bucket, sorted
            self.order = _stable_order(keys).astype(_positions_dtype(len(w)))
            self.bounds = np.array([0, len(w)], dtype=np.int64)
            self.sorted = np.ones(1, dtype=bool)
            return
        buckets = (keys.view(np.uint64) >> _TOP_BITS).astype(np.uint16)
        del keys
        self.order = np.argsort(buckets, kind="stable").astype(_positions_dtype(len(w)))
        counts = np.bincount(buckets, minlength=1 << 16)
        del buckets
        self.bounds = np.concatenate([[0], np.cumsum(counts[counts > 0])]).astype(np.int64)
        self.sorted = np.zeros(len(self.bounds) - 1, dtype=bool)

    def _keys(self, rows: np.ndarray) -> np.ndarray:
        """``-log(U_row) / w_row`` (weight 0: inf; a positive weight's key capped below inf)."""
        keys = np.log(uniforms(self.key, rows))
        np.negative(keys, out=keys)
        weights = self.weights[rows]
        with np.errstate(divide="ignore", over="ignore"):
            keys /= weights
        overflow = np.isinf(keys) & (weights > 0)
        if overflow.any():  # a weight below ~1e-300: drawn after every other row of weight > 0
            keys[overflow] = _LARGEST
        return keys

    @classmethod
    def create(
        cls,
        num_rows: int,
        *,
        seed: int,
        epoch: int,
        weights: np.ndarray | None = None,
        samples: int | None = None,
        replacement: bool = False,
        whole: bool = False,
        **_: Any,
    ) -> WeightedOrder:
        """Epoch ``epoch``'s draws of ``weights`` (one a split row; None: all 1, a uniform permutation)."""
        if weights is None:
            weights = np.ones(num_rows)
        assert len(weights) == num_rows, f"{len(weights)} weights for a split of {num_rows} rows"
        return cls(weights, seed=seed, epoch=epoch, samples=samples, replacement=replacement, whole=whole)

    @property
    def nbytes(self) -> int:
        """Bytes held: the weights and the epoch's positions (with replacement the cumulative weights
        and their guide)."""
        if self.replacement:
            return self.weights.nbytes + self.cumulative.nbytes + self.guide.nbytes
        return self.weights.nbytes + self.order.nbytes + self.bounds.nbytes + self.sorted.nbytes

    def _draw(self, targets: np.ndarray) -> np.ndarray:
        """The first row whose cumulative weight is above each target: ``searchsorted(side="right")``,
        walked from the guide of the cell before the target's (a whole cell's width from it: rounding
        never puts that guide past the row)."""
        cumulative, rows = self.cumulative, len(self.cumulative)
        cell = np.minimum((targets * (rows / cumulative[-1])).astype(np.int64), rows - 1)
        drawn = self.guide[np.maximum(cell - 1, 0)].astype(np.int64)
        for _ in range(GUIDE_STEPS):
            np.minimum(drawn, rows - 1, out=drawn)
            behind = cumulative[drawn] <= targets
            if not behind.any():
                break
            drawn[behind] += 1
        else:  # a cell of many light rows: a binary search for what is left
            behind = cumulative[np.minimum(drawn, rows - 1)] <= targets
            drawn[behind] = np.searchsorted(cumulative, targets[behind], side="right")
        return np.minimum(drawn, self.last)  # U * total may round up to total: the last row of weight > 0

    def _sort_bucket(self, bucket: int) -> None:
        lo, hi = int(self.bounds[bucket]), int(self.bounds[bucket + 1])
        rows = self.order[lo:hi]
        # stable: equal keys (never in practice: 53-bit U) in row order, as complete() leaves them
        self.order[lo:hi] = rows[np.argsort(self._keys(rows), kind="stable")]
        self.sorted[bucket] = True

    def complete(self) -> None:
        """Sort every bucket now (what reading the whole epoch would do, bucket by bucket): one
        stable sort of the epoch by key, the same order, for a thread that makes the order ahead
        of its epoch. About 16 bytes a split row for a moment."""
        if self.replacement or self.sorted.all():
            return
        self.order[:] = self.order[_stable_order(self._keys(self.order.astype(np.int64)))]
        self.sorted[:] = True

    def positions(self, indices: np.ndarray) -> np.ndarray:
        index = np.asarray(indices, dtype=np.int64)
        if self.replacement:
            if not len(index):
                return index
            return self._draw(uniforms(self.key, index) * self.cumulative[-1])
        if len(index):
            lo, hi = int(index.min()), int(index.max())
            if hi - lo < 64 * len(index):  # a rank's slices of a stretch of the epoch: the buckets in between
                touched = np.arange(*(np.searchsorted(self.bounds, [lo, hi], side="right") + [-1, 0]))
            else:  # scattered (padding wraps to the epoch's start): only the buckets hit
                touched = np.unique(np.searchsorted(self.bounds, index, side="right") - 1)
            for bucket in touched[~self.sorted[touched]].tolist():
                self._sort_bucket(bucket)
        return self.order[index].astype(np.int64)
