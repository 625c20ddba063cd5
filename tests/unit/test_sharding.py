"""Shard arithmetic and LanceBatchSampler, every rank built in one process (no torch.distributed)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data.distributed import DistributedSampler

from lance_lightning.sampler import LanceBatchSampler
from lance_lightning.sharding import (
    SHUFFLE_MODES,
    epoch_order,
    plan_epoch,
    rank_batch_bounds,
    take_padded,
    take_padded_many,
    window_rows,
)
from tests.sharding_invariants import assert_epoch_invariants

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Row counts 0..10,000 with the small cases (0, fewer rows than ranks) well represented.
rows = st.one_of(st.integers(0, 40), st.integers(0, 10_000))
worlds = st.integers(1, 16)
batch_sizes = st.one_of(st.integers(1, 8), st.integers(1, 300))
seeds = st.integers(0, 2**63 - 1)
modes = st.sampled_from(SHUFFLE_MODES)


def row_addresses(n: int) -> np.ndarray:
    """Realistic u64 row addresses (fragment << 32 | offset) over three fragments, sorted."""
    frag = np.arange(n) * 3 // max(n, 1)
    return ((frag.astype(np.uint64) << np.uint64(32)) | np.arange(n, dtype=np.uint64)).astype(np.uint64)


def rank_slices(num_rows, world_size, batch_size, drop_last, even, order):
    """Every rank's batches for one epoch, from the pure functions."""
    plan = plan_epoch(num_rows, world_size=world_size, batch_size=batch_size, drop_last=drop_last, even=even)
    return plan, [
        [take_padded(order, lo, hi).tolist() for lo, hi in rank_batch_bounds(plan, rank=r)] for r in range(world_size)
    ]


def all_ranks(row_ids, world_size, **kwargs) -> list[LanceBatchSampler]:
    return [LanceBatchSampler(row_ids, num_replicas=world_size, rank=r, **kwargs) for r in range(world_size)]


def read_epoch(samplers, epoch: int) -> list[list[list[int]]]:
    out = []
    for s in samplers:
        s.set_epoch(epoch)
        batches = [b.tolist() for b in s]
        assert len(batches) == len(s), "__len__ disagrees with the batches yielded"
        out.append(batches)
    return out


def global_order(rank_batches) -> list[int]:
    """Rank batches interleaved back into global-step order (step k: rank 0, 1, ...)."""
    out: list[int] = []
    for k in range(max((len(b) for b in rank_batches), default=0)):
        for batches in rank_batches:
            if k < len(batches):
                out.extend(batches[k])
    return out


# -- epoch_order ---------------------------------------------------------------------------


@FAST
@given(n=rows, mode=modes, seed=seeds, epoch=st.integers(0, 1000), block=st.integers(1, 100), window=st.integers(1, 20))
def test_epoch_order_is_a_deterministic_permutation(n, mode, seed, epoch, block, window):
    kw = dict(mode=mode, seed=seed, epoch=epoch, block_size=block, window_blocks=window)
    order = epoch_order(n, **kw)
    assert order.dtype == np.int64 and order.shape == (n,)
    assert np.array_equal(np.sort(order), np.arange(n))
    assert np.array_equal(order, epoch_order(n, **kw)), "same (seed, epoch) must give the same order"
    if mode == "none":
        assert np.array_equal(order, np.arange(n))


@FAST
@given(n=st.integers(20, 10_000), mode=st.sampled_from(["uniform", "block"]), seed=seeds, epoch=st.integers(0, 1000))
def test_epoch_order_changes_with_epoch_and_seed(n, mode, seed, epoch):
    # 20 rows: the chance that two independent shuffles agree is 1/20! (block: one window).
    base = epoch_order(n, mode=mode, seed=seed, epoch=epoch)
    assert not np.array_equal(base, epoch_order(n, mode=mode, seed=seed, epoch=epoch + 1))
    assert not np.array_equal(base, epoch_order(n, mode=mode, seed=seed + 1, epoch=epoch))


@FAST
@given(n=rows, seed=seeds, block=st.integers(1, 100), window=st.integers(1, 20), w=st.integers(1, 8), b=batch_sizes)
def test_block_order_windows_are_few_blocks_and_ranks_own_their_blocks(n, seed, block, window, w, b):
    kw = dict(mode="block", seed=seed, epoch=3, block_size=block, window_blocks=window, streams=w, batch_size=b)
    order = epoch_order(n, **kw)
    assert np.array_equal(np.sort(order), np.arange(n))
    assert np.array_equal(order, epoch_order(n, **kw))
    plan, batches = rank_slices(n, w, b, False, True, order)
    rows_per_window = window_rows(block, window, b)
    # Rows a rank reads in the steps every stream fills (each stream has at least
    # num_blocks // w blocks, one of them maybe short) come from that rank's blocks only...
    common_steps = max(0, (-(-n // block) // w - 1) * block) // b
    owner: dict[int, int] = {}
    for rank, rank_batches in enumerate(batches):
        head = [row for batch in rank_batches[:common_steps] for row in batch]
        for blk in {row // block for row in head}:
            assert owner.setdefault(blk, rank) == rank, f"block {blk} is read by ranks {owner[blk]} and {rank}"
        # ...and each of its windows (consecutive whole batches) spans few blocks, each block in
        # at most two neighbouring windows: the reads are a few contiguous runs of the table.
        seen_in: dict[int, list[int]] = {}
        for i in range(0, len(head), rows_per_window):
            blocks = {row // block for row in head[i : i + rows_per_window]}
            assert len(blocks) <= -(-rows_per_window // block) + 2
            for blk in blocks:
                seen_in.setdefault(blk, []).append(i // rows_per_window)
        assert all(len(v) <= 2 and v[-1] - v[0] <= 1 for v in seen_in.values())


# -- plan_epoch / rank_batch_bounds / take_padded ------------------------------------------


@FAST
@given(n=rows, w=worlds, b=batch_sizes, drop_last=st.booleans(), even=st.booleans(), mode=modes, seed=seeds)
def test_rank_batches_obey_the_rules(n, w, b, drop_last, even, mode, seed):
    if not even:
        drop_last = False  # evaluation never drops
    order = epoch_order(n, mode=mode, seed=seed, epoch=0)
    plan, batches = rank_slices(n, w, b, drop_last, even, order)
    assert_epoch_invariants(batches, range(n), world_size=w, batch_size=b, drop_last=drop_last, even=even)
    assert plan.full_steps * w * b + plan.tail_rows == n + plan.padded_rows - plan.dropped_rows
    assert [plan.batches_for_rank(r) for r in range(w)] == [len(x) for x in batches]
    # The slices of all ranks tile [0, rows read) with no gap or overlap, in global-step order.
    bounds = sorted(sl for r in range(w) for sl in rank_batch_bounds(plan, rank=r))
    assert all(lo < hi for lo, hi in bounds)
    assert [lo for lo, _ in bounds] == [0, *(hi for _, hi in bounds)][: len(bounds)]
    assert (bounds[-1][1] if bounds else 0) == n + plan.padded_rows - plan.dropped_rows
    # Ranks interleaved by global step give back the epoch order itself (plus wrap-around padding).
    assert global_order(batches) == take_padded(order, 0, n + plan.padded_rows - plan.dropped_rows).tolist()


PREFIX_WORLDS = (1, 2, 4, 8, 16)


@st.composite
def consumed_prefixes(draw) -> tuple[int, int, int]:
    """``(n, b, k)``: ``k >= 1`` global steps of 16 ranks (``16 * k`` batches of ``b`` rows) that
    every world size in PREFIX_WORLDS reads in whole steps: ``n`` holds them, plus up to three more."""
    b = draw(st.integers(1, 64), label="batch_size")
    k = draw(st.integers(1, max(1, 4000 // (16 * b))), label="steps of 16 ranks")
    n = draw(st.integers(16 * k * b, 16 * (k + 3) * b), label="rows")
    return n, b, k


def test_consumed_prefix_is_world_size_independent():
    # After every rank has read its first `steps` batches, the rows read are exactly the first
    # steps * w * b rows of the epoch order: the same rows at every world size. The inputs are
    # valid by construction, so every example asserts (counted below).
    checked: list[int] = []

    @FAST
    @given(nbk=consumed_prefixes(), seed=seeds)
    def check(nbk, seed):
        n, b, k = nbk
        order = epoch_order(n, mode="uniform", seed=seed, epoch=1)
        prefix = sorted(order[: k * 16 * b].tolist())
        for w in PREFIX_WORLDS:
            plan, batches = rank_slices(n, w, b, False, True, order)
            steps = k * 16 // w
            assert steps <= plan.full_steps  # whole steps at this world size: nothing padded yet
            read = [x for r in range(w) for batch in batches[r][:steps] for x in batch]
            assert sorted(read) == prefix
        checked.append(len(prefix))

    check()
    # Hypothesis ran at least max_examples examples, each asserting on a non-empty prefix.
    assert len(checked) >= FAST.max_examples and min(checked) >= 16


@FAST
@given(n=st.integers(1, 200), start=st.integers(0, 400), length=st.integers(0, 200))
def test_take_padded_wraps_to_the_start(n, start, length):
    order = np.arange(100, 100 + n)
    got = take_padded(order, start, start + length)
    assert got.tolist() == [100 + (i % n) for i in range(start, start + length)]


@FAST
@given(
    n=st.integers(1, 3000),
    world=worlds,
    batch=batch_sizes,
    mode=modes,
    seed=seeds,
    offset=st.integers(0, 50),
    drop_last=st.booleans(),
)
def test_take_padded_many_equals_one_take_a_batch(n, world, batch, mode, seed, offset, drop_last):
    """The sampler computes ~16k positions a call: the same rows, batch for batch, as one call a batch."""
    from lance_lightning.orders import get_order

    order = get_order(mode).create(
        n, seed=seed, epoch=1, block_size=16, window_blocks=3, streams=world, batch_size=batch
    )
    plan = plan_epoch(max(n - offset, 0), world_size=world, batch_size=batch, drop_last=drop_last, even=True)
    for rank in range(world):
        bounds = [(offset + lo, offset + hi) for lo, hi in rank_batch_bounds(plan, rank=rank)]
        one_a_batch = [take_padded(order, lo, hi, n).tolist() for lo, hi in bounds]
        for chunk in (1, 3, len(bounds) or 1):
            together = [
                part.tolist()
                for i in range(0, len(bounds), chunk)
                for part in take_padded_many(order, bounds[i : i + chunk], n)
            ]
            assert together == one_a_batch
    array = np.arange(7, 7 + n)
    assert [p.tolist() for p in take_padded_many(array, [(0, 2), (n, n + 3)])] == [
        take_padded(array, 0, 2).tolist(),
        take_padded(array, n, n + 3).tolist(),
    ]
    assert take_padded_many(order, [], n) == []


def test_plan_small_cases():
    # Fewer rows than ranks, training: every rank one batch, the only row padded around.
    plan, batches = rank_slices(1, 4, 3, False, True, np.arange(1))
    assert batches == [[[0]], [[0]], [[0]], [[0]]] and plan.padded_rows == 3
    # Same for evaluation: one rank reads it, the others nothing.
    _, batches = rank_slices(3, 4, 3, False, False, np.arange(3))
    assert batches == [[[0]], [[1]], [[2]], []]
    # drop_last: everything below one global step is dropped.
    plan, batches = rank_slices(5, 2, 3, True, True, np.arange(5))
    assert batches == [[], []] and plan.dropped_rows == 5
    # Empty split: nothing anywhere.
    for even in (True, False):
        _, batches = rank_slices(0, 3, 2, False, even, np.arange(0))
        assert batches == [[], [], []]


# -- LanceBatchSampler, every rank in one process ------------------------------------------


@FAST
@given(n=rows, w=worlds, b=batch_sizes, drop_last=st.booleans(), even=st.booleans(), mode=modes, seed=seeds)
def test_sampler_all_ranks_in_one_process(n, w, b, drop_last, even, mode, seed):
    if not even:
        drop_last = False
    ids = row_addresses(n)
    kw = dict(batch_size=b, shuffle=mode, seed=seed, drop_last=drop_last, even=even)
    samplers = all_ranks(ids, w, **kw)
    assert all(isinstance(s, DistributedSampler) for s in samplers), "Lightning must see a DistributedSampler"
    e0 = read_epoch(samplers, 0)
    e1 = read_epoch(samplers, 1)
    for epoch in (e0, e1):
        assert_epoch_invariants(epoch, ids.tolist(), world_size=w, batch_size=b, drop_last=drop_last, even=even)
    # Same seed, fresh objects (a rerun): identical batches on every rank, every epoch.
    rerun = all_ranks(ids, w, **kw)
    assert read_epoch(rerun, 1) == e1 and read_epoch(rerun, 0) == e0
    # The global order is the epoch order of the split (for 'block', dealt for w ranks of b rows):
    # each batch holds the next b rows of that order, in that order (not sorted).
    order = epoch_order(n, mode=mode, seed=seed, epoch=1, streams=w, batch_size=b)
    full = n - n % (w * b)
    assert global_order(e1)[:full] == ids[order[:full]].tolist()
    if mode != "none" and len(global_order(e0)) >= 20 and sum(len(batches) for batches in e0) >= 2:
        assert global_order(e0) != global_order(e1), "the order must change every epoch"
        other = all_ranks(ids, w, **{**kw, "seed": seed + 1})
        assert global_order(read_epoch(other, 0)) != global_order(e0), "the order must depend on the seed"
    if mode == "none":
        assert global_order(e0) == global_order(e1)


def test_sampler_validates_arguments():
    # LanceBatchSampler is public: what a caller gets wrong fails at construction, with a clear
    # message (lance_lightning.sharding and the orders below it only assert).
    ids = row_addresses(10)
    with pytest.raises(ValueError, match="unknown shuffle mode 'random'; valid modes are none, uniform, block"):
        LanceBatchSampler(ids, batch_size=2, shuffle="random")
    for name, bad in [("batch_size", 0), ("batch_size", 2.0), ("block_size", 0), ("window_blocks", -1)]:
        with pytest.raises(ValueError, match=f"{name} must be an integer >= 1"):
            LanceBatchSampler(ids, **{"batch_size": 2, "shuffle": "block", name: bad})
    with pytest.raises(ValueError, match="group_batches"):
        LanceBatchSampler(ids, batch_size=2, group_batches=0)
    with pytest.raises(ValueError, match="rank"):
        LanceBatchSampler(ids, batch_size=2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="consumed_rows"):
        LanceBatchSampler(ids, batch_size=2).resume_at(epoch=0, consumed_rows=11)


# -- world-size-independent resume ---------------------------------------------------------


def resume_reads(ids, w, k, *, epoch, start, order_world_size=2, **kw):
    """(rows read by all ranks in their first k batches, rows consumed) from ``start`` at world ``w``,
    in the epoch order dealt for ``order_world_size`` ranks (what the checkpoint records)."""
    samplers = all_ranks(ids, w, **kw)
    for s in samplers:
        s.resume_at(epoch=epoch, consumed_rows=start, order_world_size=order_world_size)
    batches = [[b.tolist() for b in s][:k] for s in samplers]
    consumed = {s.rows_consumed_after(s.batches_before_start + k) for s in samplers}  # k counted from the resume
    assert len(consumed) == 1, "ranks disagree on the resume point"
    return [x for rank in batches for batch in rank for x in batch], consumed.pop()


@FAST
@given(
    n=st.integers(0, 3000),
    b=st.integers(1, 50),
    k=st.integers(0, 40),
    seed=seeds,
    mode=modes,
    drop_last=st.booleans(),
    new_w=st.sampled_from([1, 3]),
    epoch=st.integers(0, 5),
)
def test_resume_across_world_sizes(n, b, k, seed, mode, drop_last, new_w, epoch):
    ids = row_addresses(n)
    blocks = dict(block_size=8, window_blocks=3)  # many blocks, so the block order is dealt per rank
    kw = dict(batch_size=b, shuffle=mode, seed=seed, drop_last=drop_last, even=True, **blocks)
    order = ids[epoch_order(n, mode=mode, seed=seed, epoch=epoch, streams=2, batch_size=b, **blocks)].tolist()
    before, consumed = resume_reads(ids, 2, k, epoch=epoch, start=0, **kw)
    # What was read before the interruption is exactly the first `consumed` rows of the epoch
    # (plus at most one padding read if the interrupted run got through its last batch).
    assert set(before) == set(order[:consumed]) and len(before) - len(set(before)) <= 1
    after, _ = resume_reads(ids, new_w, 10**9, epoch=epoch, start=consumed, **kw)
    # Padding wraps to the start of the whole epoch order, as in an uninterrupted epoch.
    assert set(after) <= set(order[consumed:]) | set(order[: new_w - 1])
    reads = before + after
    extra = len(reads) - len(set(reads))
    if drop_last:
        assert extra == 0
        assert n - len(set(reads)) < max(2, new_w) * b
    else:
        # Union equals an uninterrupted epoch: every row, duplicates only as padding.
        assert set(reads) == set(ids.tolist())
        assert extra <= max(2, new_w) - 1
    # Resuming twice (2 -> 3 -> 1) still loses nothing.
    mid, consumed2 = resume_reads(ids, 3, 1, epoch=epoch, start=consumed, **kw)
    rest, _ = resume_reads(ids, 1, 10**9, epoch=epoch, start=consumed2, **kw)
    if not drop_last:
        assert set(before + mid + rest) == set(ids.tolist())
    else:
        assert len(before + mid + rest) == len(set(before + mid + rest))


def test_resume_is_forgotten_at_the_next_epoch():
    ids = row_addresses(50)
    s = LanceBatchSampler(ids, batch_size=4, num_replicas=2, rank=0, shuffle="uniform", seed=3)
    s.resume_at(epoch=2, consumed_rows=16)
    s.set_epoch(2)  # Lightning calls set_epoch with the resumed epoch: the position is kept
    assert (s.state_dict()["epoch"], s.state_dict()["start_row"]) == (2, 16)
    # len() never drops below a whole epoch (Lightning keeps the first value); the rest is read.
    assert len(s) == len(LanceBatchSampler(ids, batch_size=4, num_replicas=2, rank=0))
    assert len(list(s)) == len(LanceBatchSampler(ids[:34], batch_size=4, num_replicas=2, rank=0))
    s.set_epoch(3)
    assert (s.state_dict()["epoch"], s.state_dict()["start_row"]) == (3, 0)
    fresh = LanceBatchSampler(ids, batch_size=4, num_replicas=2, rank=0, shuffle="uniform", seed=3)
    fresh.set_epoch(3)
    assert [b.tolist() for b in s] == [b.tolist() for b in fresh]


# -- the uniform order is a fair shuffle ---------------------------------------------------


def test_uniform_order_places_a_row_anywhere_with_equal_chance():
    # Row 0 of 10 over 3,000 seeds: each place ~300 times (binomial sd ~16); neighbours in
    # the table end up as far apart as in a random permutation (mean gap (n+1)/3).
    where = [int(np.argmax(epoch_order(10, mode="uniform", seed=s, epoch=0) == 0)) for s in range(3000)]
    counts = np.bincount(where, minlength=10)
    assert counts.min() > 220 and counts.max() < 380, counts
    gaps = [np.abs(np.diff(np.argsort(epoch_order(1000, mode="uniform", seed=s, epoch=1)))).mean() for s in range(20)]
    assert 320 < np.mean(gaps) < 348  # (1000 + 1) / 3 = 333.7


def test_orders_are_computed_per_slice_without_the_whole_array():
    from lance_lightning.sharding import order_for

    for mode in ("uniform", "block"):
        order = order_for(10_000_000, mode=mode, seed=3, epoch=2, streams=4, batch_size=1024)
        part = order.positions(np.arange(5_000_000, 5_001_024))
        assert len(np.unique(part)) == 1024 and part.min() >= 0 and part.max() < 10_000_000
        assert np.array_equal(part, order.positions(np.arange(5_000_000, 5_001_024)))


def test_balanced_evaluation_gives_every_rank_the_same_batch_count_each_row_once():
    # One loader per mix source (eval_by_source): a small source must not leave a rank with one
    # batch fewer (a per-step collective in validation_step would wait for it forever).
    for n in range(0, 90):
        for w in range(1, 6):
            for b in range(1, 7):
                plan = plan_epoch(n, world_size=w, batch_size=b, drop_last=False, even=False, balanced=True)
                bounds = [rank_batch_bounds(plan, rank=r) for r in range(w)]
                rows = sorted(i for rank in bounds for lo, hi in rank for i in range(lo, hi))
                assert rows == list(range(n)), (n, w, b)  # every row exactly once, no padding
                assert all(0 < hi - lo <= b for rank in bounds for lo, hi in rank), (n, w, b)
                counts = [len(rank) for rank in bounds]
                assert [plan.batches_for_rank(r) for r in range(w)] == counts
                if n >= w and b > 1:
                    assert len(set(counts)) == 1, (n, w, b, counts)
                plain = plan_epoch(n, world_size=w, batch_size=b, drop_last=False, even=False)
                if plain.tail_rows == 0 or plain.tail_rows >= w:  # the plain cut is already even: unchanged
                    assert bounds == [rank_batch_bounds(plain, rank=r) for r in range(w)]
