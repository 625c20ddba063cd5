"""One reusable check of the sharding rules for one epoch, for unit and multi-process tests alike.

The expected numbers here come from the rules themselves (closed formulas), not from
:mod:`lance_lightning.sharding`, so the check cannot agree with the code by construction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Hashable, Sequence


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def assert_epoch_invariants(
    rank_batches: Sequence[Sequence[Sequence[Hashable]]],
    universe: Collection[Hashable],
    *,
    world_size: int,
    batch_size: int,
    drop_last: bool,
    even: bool,
) -> Counter:
    """Assert the sharding rules for one epoch of one split; return how often each row was read.

    Args:
        rank_batches: ``rank_batches[r]`` is the list of batches rank ``r`` read this epoch,
            each batch a sequence of row keys (positions, row addresses or ``id`` values).
        universe: the split's rows (each key once).
        world_size, batch_size, drop_last: as configured.
        even: True for training (equal batch counts), False for val/test/predict.

    Rules (training, ``even=True``): every rank reads the same number of batches;
    ``drop_last=False``: every row at least once, at most ``world_size - 1`` extra reads (and,
    given at least ``world_size`` rows, no row more than twice); ``drop_last=True``: no row
    twice, fewer than ``world_size * batch_size`` rows left out. Evaluation (``even=False``):
    every row exactly once, no padding, rank batch counts differ by at most one, and every
    rank gets a batch when there are at least ``world_size`` rows (so no rank skips the loop).
    In all cases: no empty batch, no batch above ``batch_size``, no row outside the split,
    and the per-rank batch count equals what Lightning's own DistributedSampler + batching
    would give (``ceil`` or ``floor`` of ``rows / (world_size * batch_size)``).
    """
    universe = set(universe)
    n = len(universe)
    w, b = world_size, batch_size
    assert len(rank_batches) == w, f"expected {w} ranks, got {len(rank_batches)}"
    counts = [len(batches) for batches in rank_batches]
    reads: Counter = Counter()
    for rank, batches in enumerate(rank_batches):
        for i, batch in enumerate(batches):
            assert 0 < len(batch) <= b, f"rank {rank} batch {i} has {len(batch)} rows (batch_size {b})"
            reads.update(batch)
    outside = set(reads) - universe
    assert not outside, f"rows outside the split were read: {sorted(outside)[:10]}"
    missing = universe - set(reads)
    extra_reads = sum(reads.values()) - len(reads)
    if even:
        assert len(set(counts)) <= 1, f"ranks read different batch counts: {counts}"
        if drop_last:
            assert counts == [n // (w * b)] * w, f"batch counts {counts}, rows {n}, world {w}, batch {b}"
            assert extra_reads == 0, f"drop_last=True read {extra_reads} rows twice"
            assert len(missing) == n % (w * b) < w * b, f"{len(missing)} rows left out (n={n}, w={w}, b={b})"
        else:
            assert counts == [ceil_div(n, w * b)] * w, f"batch counts {counts}, rows {n}, world {w}, batch {b}"
            assert not missing, f"{len(missing)} rows never read, e.g. {sorted(missing)[:10]}"
            # Padding fills the last global step up to a multiple of world_size: < world_size reads.
            assert extra_reads == (-n) % w <= w - 1, f"{extra_reads} padding reads (n={n}, w={w})"
            if n >= w:
                assert max(reads.values(), default=0) <= 2, "a row was read more than twice"
    else:
        assert not missing, f"{len(missing)} rows never evaluated, e.g. {sorted(missing)[:10]}"
        assert extra_reads == 0, f"{extra_reads} rows evaluated more than once"
        assert max(counts) - min(counts) <= 1, f"evaluation batch counts differ by more than one: {counts}"
        assert max(counts) == ceil_div(n, w * b), f"batch counts {counts}, rows {n}, world {w}, batch {b}"
        if n >= w:
            assert min(counts) >= 1, f"a rank got no evaluation batch although rows >= ranks: {counts}"
    return reads
