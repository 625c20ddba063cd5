"""Pure arithmetic of epoch order and per-rank batches.

Everything here is a function of plain integers (row count, world size, rank, batch size,
seed, epoch): no torch.distributed, no I/O, so every rule can be tested exhaustively.

Model
-----
A split has ``num_rows`` rows, numbered 0..num_rows-1 in table order. For each epoch,
:func:`epoch_order` gives a sequence of those positions: the order of the ``shuffle`` mode,
from the registry in :mod:`.orders` (a permutation, or the identity).
The sequence is cut into *global steps* of ``world_size * batch_size`` rows; at step k,
rank r reads rows ``[(k * world_size + r) * batch_size, ... + batch_size)``. So after every
rank has read k batches, exactly the first ``k * world_size * batch_size`` rows of the
epoch order have been consumed, whatever the world size: that prefix length is the resume
point. The ``none`` and ``uniform`` orders do not depend on the world size at all; the
``block`` order is dealt out per rank (see :class:`~.orders.BlockOrder`), so a resume re-creates the
interrupted epoch's order with the world size and batch size it started with.

The functions assume valid arguments (``world_size``, ``batch_size >= 1``, ``0 <= rank <
world_size``): :class:`~.sampler.LanceBatchSampler` and :mod:`.options` check what users pass;
here only ``assert`` catches internal misuse.

Training (``even=True``) makes every rank read the same number of batches:

* ``drop_last=False``: the order is padded by repeating its first rows until its length is
  a multiple of ``world_size`` (at most ``world_size - 1`` rows are read twice); the last,
  partial global step is split evenly, so each rank ends with one smaller batch.
* ``drop_last=True``: only whole global steps are read; fewer than
  ``world_size * batch_size`` rows are left out, none is read twice.

Evaluation (``even=False``) reads every row exactly once with no padding; the last partial
step is split into per-rank batches, so rank batch counts differ by at most one. With
``balanced=True`` (one loader per mix source, ``eval_by_source``) they are equal too: where the
last partial step has fewer rows than ranks (some rank would get no batch of it), that step and
the last whole one are cut into two smaller batches a rank, every row still read once (batch
size 1 cannot be cut: then counts may differ by one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .orders import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_WINDOW_BLOCKS,
    SHUFFLE_MODES,
    EpochOrder,
    ShuffleMode,
    order_for,
    window_rows,
)

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_WINDOW_BLOCKS",
    "SHUFFLE_MODES",
    "ShardPlan",
    "ShuffleMode",
    "epoch_order",
    "order_for",
    "plan_epoch",
    "rank_batch_bounds",
    "take_padded",
    "take_padded_many",
    "window_rows",
]
# The orders themselves (and the registry that SHUFFLE_MODES and ShuffleMode come from) live
# in lance_lightning.orders; they are re-exported here, where the epoch arithmetic uses them.


def epoch_order(num_rows: int, **kwargs: Any) -> np.ndarray:
    """The whole order of :func:`order_for` as an ``int64`` array (8 bytes a row: for tests and
    small splits; the sampler evaluates slices instead). A weighted order's is its draws long."""
    order = order_for(num_rows, **kwargs)
    return order.positions(np.arange(order.num_rows, dtype=np.int64))


@dataclass(frozen=True)
class ShardPlan:
    """How one epoch of ``num_rows`` rows is cut into per-rank batches (all ranks alike)."""

    num_rows: int
    world_size: int
    batch_size: int
    drop_last: bool
    even: bool
    full_steps: int
    """Global steps in which every rank reads a whole batch."""
    tail_rows: int
    """Rows (padding included) in the last, partial global step; 0 if there is none."""
    padded_rows: int
    """Rows read twice to even the ranks out (training, drop_last=False)."""
    dropped_rows: int
    """Rows not read this epoch (training, drop_last=True)."""
    balanced: bool = False
    """Evaluation: equal batch counts on every rank, each row once (see the module docstring)."""

    def batches_for_rank(self, rank: int) -> int:
        """Number of batches ``rank`` reads this epoch."""
        return len(rank_batch_bounds(self, rank=rank))

    @property
    def max_batches(self) -> int:
        """The largest per-rank batch count (equal for all ranks when ``even``)."""
        return self.batches_for_rank(0)


def plan_epoch(
    num_rows: int, *, world_size: int, batch_size: int, drop_last: bool, even: bool, balanced: bool = False
) -> ShardPlan:
    """Cut an epoch of ``num_rows`` rows into global steps; see the module docstring."""
    assert num_rows >= 0, f"num_rows must be >= 0, got {num_rows}"
    assert world_size >= 1, f"world_size must be >= 1, got {world_size}"
    assert batch_size >= 1, f"batch_size must be >= 1, got {batch_size}"
    step = world_size * batch_size
    full_steps, rest = divmod(num_rows, step)
    padded = dropped = 0
    if even and drop_last:
        dropped, rest = rest, 0
    elif even and rest:
        padded = -rest % world_size
        rest += padded
    return ShardPlan(
        num_rows=num_rows,
        world_size=world_size,
        batch_size=batch_size,
        drop_last=drop_last,
        even=even,
        full_steps=full_steps,
        tail_rows=rest,
        padded_rows=padded,
        dropped_rows=dropped,
        balanced=balanced and not even,
    )


def rank_batch_bounds(plan: ShardPlan, *, rank: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: the slices of the (padded) epoch order that ``rank`` reads.

    Slices may run past ``plan.num_rows`` only into padding; see :func:`take_padded`.
    """
    assert 0 <= rank < plan.world_size, f"rank must be in [0, {plan.world_size}), got {rank}"
    b, w = plan.batch_size, plan.world_size
    if plan.balanced and 0 < plan.tail_rows < w and plan.full_steps and b > 1:
        # the last whole step and the short tail: 2 batches a rank of about b/2 rows (each row once)
        steps = plan.full_steps - 1
        bounds = [((k * w + rank) * b, (k * w + rank + 1) * b) for k in range(steps)]
        base, rows = steps * w * b, w * b + plan.tail_rows
        for piece in (rank, w + rank):
            lo, hi = _split_evenly(rows, 2 * w, piece)
            bounds.append((base + lo, base + hi))
        return bounds
    bounds = [((k * w + rank) * b, (k * w + rank + 1) * b) for k in range(plan.full_steps)]
    if plan.tail_rows:
        base = plan.full_steps * w * b
        if plan.even:
            per_rank = plan.tail_rows // w
            start = base + rank * per_rank
            bounds.append((start, start + per_rank))
        else:
            # Every row once: cut the tail into batches dealt out round-robin, then give
            # any last short piece to the next rank in line.
            lo, hi = _split_evenly(plan.tail_rows, w, rank)
            if hi > lo:
                bounds.append((base + lo, base + hi))
    return bounds


def _split_evenly(total: int, parts: int, index: int) -> tuple[int, int]:
    """The ``index``-th of ``parts`` contiguous pieces of ``range(total)``, sizes differing by <= 1."""
    q, r = divmod(total, parts)
    lo = index * q + min(index, r)
    return lo, lo + q + (1 if index < r else 0)


def take_padded(order: np.ndarray | EpochOrder, start: int, stop: int, num_rows: int | None = None) -> np.ndarray:
    """Epoch positions ``start..stop-1``, wrapping past the end to the start of the order (padding).

    ``order`` is an array or an order object (then ``num_rows`` is its length).
    """
    if isinstance(order, np.ndarray):
        n = len(order)
        if stop <= n:
            return order[start:stop]
        return order[np.arange(start, stop) % n]
    n = num_rows if num_rows is not None else order.num_rows
    if stop <= n:
        return order.positions(np.arange(start, stop, dtype=np.int64))
    return order.positions(np.arange(start, stop, dtype=np.int64) % max(n, 1))


def take_padded_many(
    order: np.ndarray | EpochOrder, bounds: Sequence[tuple[int, int]], num_rows: int | None = None
) -> list[np.ndarray]:
    """``[take_padded(order, start, stop, num_rows) for start, stop in bounds]``, with one
    ``positions`` call for all of them: an order's cost is mostly per call (about 0.27 us a row one
    1,024-row batch at a time, against 0.05 us sixteen batches at a time)."""
    if not bounds:
        return []
    n = len(order) if isinstance(order, np.ndarray) else (num_rows if num_rows is not None else order.num_rows)
    lengths = np.array([stop - start for start, stop in bounds], dtype=np.int64)
    starts = np.array([start for start, _ in bounds], dtype=np.int64)
    # every index of every slice, in slice order: start of its slice + its place within the slice
    within = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    indices = np.repeat(starts, lengths) + within
    if len(indices) and indices.max() >= n:
        indices %= max(n, 1)
    taken = order[indices] if isinstance(order, np.ndarray) else order.positions(indices)
    return np.split(taken, np.cumsum(lengths)[:-1])
