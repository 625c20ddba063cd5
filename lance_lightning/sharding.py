"""Pure arithmetic of epoch order and per-rank batches.

Everything here is a function of plain integers (row count, world size, rank, batch size,
seed, epoch): no torch.distributed, no I/O, so every rule can be tested exhaustively.

Model
-----
A split has ``num_rows`` rows, numbered 0..num_rows-1 in table order. For each epoch,
:func:`epoch_order` gives a sequence of those positions (a permutation, or the identity).
The sequence is cut into *global steps* of ``world_size * batch_size`` rows; at step k,
rank r reads rows ``[(k * world_size + r) * batch_size, ... + batch_size)``. So after every
rank has read k batches, exactly the first ``k * world_size * batch_size`` rows of the
epoch order have been consumed, whatever the world size: that prefix length is the
world-size-independent resume point.

Training (``even=True``) makes every rank read the same number of batches:

* ``drop_last=False``: the order is padded by repeating its first rows until its length is
  a multiple of ``world_size`` (at most ``world_size - 1`` rows are read twice); the last,
  partial global step is split evenly, so each rank ends with one smaller batch.
* ``drop_last=True``: only whole global steps are read; fewer than
  ``world_size * batch_size`` rows are left out, none is read twice.

Evaluation (``even=False``) reads every row exactly once with no padding; the last partial
step is split into per-rank batches, so rank batch counts differ by at most one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

ShuffleMode = Literal["none", "uniform", "block"]
SHUFFLE_MODES: tuple[str, ...] = ("none", "uniform", "block")


def _rng(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    """A generator derived only from (seed, epoch, stream): never global state."""
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, epoch, stream]))


def epoch_order(
    num_rows: int,
    *,
    mode: ShuffleMode,
    seed: int,
    epoch: int,
    block_size: int = 64,
    window_blocks: int = 16,
) -> np.ndarray:
    """Positions 0..num_rows-1 in the order epoch ``epoch`` reads them (int64 array).

    * ``none``: table order.
    * ``uniform``: a uniformly random permutation.
    * ``block``: the rows are cut into blocks of ``block_size`` consecutive rows, the blocks
      are shuffled, then rows are shuffled inside each window of ``window_blocks``
      consecutive (already shuffled) blocks. A batch then touches about
      ``batch_size / block_size`` short runs of the table instead of ``batch_size`` scattered
      rows: far faster reads, at the cost that rows within one window travel together.

    The result depends on (num_rows, mode, seed, epoch, block_size, window_blocks) alone.
    """
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")
    if mode == "none":
        return np.arange(num_rows, dtype=np.int64)
    rng = _rng(seed, epoch)
    if mode == "uniform":
        return rng.permutation(num_rows).astype(np.int64, copy=False)
    if mode == "block":
        if block_size < 1 or window_blocks < 1:
            raise ValueError(
                f"block shuffle needs block_size >= 1 and window_blocks >= 1, "
                f"got block_size={block_size}, window_blocks={window_blocks}"
            )
        num_blocks = -(-num_rows // block_size)
        block_perm = rng.permutation(num_blocks)
        starts = block_perm * block_size
        lengths = np.minimum(block_size, num_rows - starts)
        # Expand each shuffled block into its run of positions.
        order = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(num_rows)
        # Windows end on block boundaries: the short last block can land anywhere in the
        # shuffled order, so fixed offsets (multiples of block_size * window_blocks) would cut
        # every later block in two.
        ends = np.cumsum(lengths)[window_blocks - 1 :: window_blocks].tolist()
        for lo, hi in zip([0, *ends], [*ends, num_rows]):
            chunk = order[lo:hi]
            chunk[:] = chunk[rng.permutation(len(chunk))]
        return order.astype(np.int64, copy=False)
    raise ValueError(f"unknown shuffle mode {mode!r}; valid modes are {', '.join(SHUFFLE_MODES)}")


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

    def batches_for_rank(self, rank: int) -> int:
        """Number of batches ``rank`` reads this epoch."""
        return len(rank_batch_bounds(self, rank=rank))

    @property
    def max_batches(self) -> int:
        """The largest per-rank batch count (equal for all ranks when ``even``)."""
        return self.batches_for_rank(0)


def plan_epoch(num_rows: int, *, world_size: int, batch_size: int, drop_last: bool, even: bool) -> ShardPlan:
    """Cut an epoch of ``num_rows`` rows into global steps; see the module docstring."""
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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
    )


def rank_batch_bounds(plan: ShardPlan, *, rank: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: the slices of the (padded) epoch order that ``rank`` reads.

    Slices may run past ``plan.num_rows`` only into padding; see :func:`take_padded`.
    """
    if not 0 <= rank < plan.world_size:
        raise ValueError(f"rank must be in [0, {plan.world_size}), got {rank}")
    b, w = plan.batch_size, plan.world_size
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


def take_padded(order: np.ndarray, start: int, stop: int) -> np.ndarray:
    """``order[start:stop]``, wrapping past the end to the start of ``order`` (padding)."""
    n = len(order)
    if stop <= n:
        return order[start:stop]
    return order[np.arange(start, stop) % n]
