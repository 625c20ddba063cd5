"""``shuffle="weighted"``: each epoch draws the split's rows with probability proportional to a weight.

Without replacement (the default) the epoch is a *weighted permutation* (Efraimidis–Spirakis):
row ``i`` gets the key ``E_i / w_i`` with ``E_i`` exponential from ``rng(seed, epoch, 2)``, and the
epoch reads the rows in increasing key order, the first ``samples`` of them (default: every row of
weight > 0). A row of weight 0 has key ``inf`` and is never drawn. Its first draw is row ``i`` with
probability ``w_i / sum(w)``; each later draw the same among the rows not yet drawn.

With replacement, the epoch is ``samples`` independent draws by inverse CDF: ``U * sum(w)`` looked up
with ``np.searchsorted`` in the ``float64`` cumulative sum of the weights.

Unlike ``uniform``, a weighted order cannot be computed slice by slice: it is computed once an epoch
(``O(n log n)``) and held. What it costs a split row: the weights (8 bytes, ``float64``) and the
epoch's positions (4 bytes, ``int32`` below 2**31 rows, else 8) for as long as the epoch lasts,
12 bytes in all (120 MB at 10M rows); while an epoch's order is made, 16 more bytes a row for a
moment (the keys and ``argsort``'s ``int64`` result). The sampler makes the next epoch's order on a
thread while an epoch is read (:attr:`~.base.EpochOrder.made_whole`), so two epochs' positions are
held: 16 bytes a split row in all (160 MB at 10M rows). Only the training process holds them:
workers receive positions batch by batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import EpochOrder, rng

WEIGHTED_STREAM = 2
"""The ``rng(seed, epoch, 2)`` stream of the weighted draws (other orders use 0 and 1)."""


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


class WeightedOrder(EpochOrder):
    """One epoch's weighted draws of a split's rows (see the module docstring)."""

    name = "weighted"
    weighted = True
    made_whole = True
    settings = ("weight_column", "balance_column", "samples_per_epoch", "weight_replacement")

    def __init__(
        self, weights: np.ndarray, *, seed: int, epoch: int, samples: int | None = None, replacement: bool = False
    ) -> None:
        w = np.asarray(weights, dtype=np.float64)
        assert w.ndim == 1 and np.all(np.isfinite(w)) and np.all(w >= 0), "weights are checked at setup"
        draws = epoch_draws(w, samples, replacement)
        self.num_rows = draws
        self.split_rows = len(w)
        self.weights = w
        generator = rng(seed, epoch, WEIGHTED_STREAM)
        dtype = np.int32 if len(w) < 2**31 else np.int64
        if replacement and draws:
            cumulative = np.cumsum(w)
            drawn = np.searchsorted(cumulative, generator.random(draws) * cumulative[-1], side="right")
            # U * total may round up to total: the last row of weight > 0 (never a weight-0 row)
            drawn = np.minimum(drawn, int(np.flatnonzero(w)[-1]))
        else:
            keys = generator.standard_exponential(len(w))
            with np.errstate(divide="ignore"):
                keys /= w  # in place (8 bytes a row less at the peak); weight 0: inf, after every drawn row
            if draws < len(w):
                drawn = np.argpartition(keys, draws - 1)[:draws] if draws else np.empty(0, np.int64)
                drawn = drawn[np.argsort(keys[drawn], kind="stable")]
            else:
                drawn = np.argsort(keys, kind="stable")
        self.order = drawn.astype(dtype)

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
        **_: Any,
    ) -> WeightedOrder:
        """Epoch ``epoch``'s draws of ``weights`` (one a split row; None: all 1, a uniform permutation)."""
        if weights is None:
            weights = np.ones(num_rows)
        assert len(weights) == num_rows, f"{len(weights)} weights for a split of {num_rows} rows"
        return cls(weights, seed=seed, epoch=epoch, samples=samples, replacement=replacement)

    @property
    def nbytes(self) -> int:
        """Bytes held: the epoch's positions and the weights."""
        return self.order.nbytes + self.weights.nbytes

    def positions(self, indices: np.ndarray) -> np.ndarray:
        return self.order[np.asarray(indices, dtype=np.int64)].astype(np.int64)
