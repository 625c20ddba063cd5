"""The registry of epoch orders (lance_lightning.orders) and the orders it holds."""

from __future__ import annotations

import hashlib
import typing

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lance_lightning import orders, sharding
from lance_lightning.orders import (
    FEISTEL_ROUNDS,
    SEQUENTIAL_READ_ROWS,
    SHUFFLE_MODES,
    BlockOrder,
    EpochOrder,
    SequentialOrder,
    ShuffleMode,
    UniformOrder,
    WeightedOrder,
    get_order,
    order_for,
    order_names,
    register,
    rng,
    seed_sequence,
    window_rows,
)
from lance_lightning.sampler import LanceBatchSampler
from lance_lightning.sharding import epoch_order

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BLOCKS = dict(block_size=16, window_blocks=3)


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry as a copy for one test: what the test registers is gone afterwards."""
    monkeypatch.setattr(orders, "ORDERS", dict(orders.ORDERS))
    return orders.ORDERS


# -- the registry ------------------------------------------------------------------------------


def test_registered_names_are_the_public_lists():
    assert order_names() == SHUFFLE_MODES == ("none", "uniform", "block", "weighted")
    assert typing.get_args(ShuffleMode) == SHUFFLE_MODES  # the Literal the datamodule and Hydra schema use
    assert sharding.SHUFFLE_MODES is SHUFFLE_MODES and sharding.ShuffleMode is ShuffleMode
    assert [get_order(name).name for name in SHUFFLE_MODES] == list(SHUFFLE_MODES)
    assert (get_order("none"), get_order("uniform"), get_order("block")) == (SequentialOrder, UniformOrder, BlockOrder)
    assert get_order("weighted") is WeightedOrder
    # Names code imported from the single-file orders.py keep working.
    assert FEISTEL_ROUNDS == 4 and callable(rng) and callable(seed_sequence) and window_rows(10, 3, 8) == 32
    assert sharding.order_for is order_for and sharding.window_rows is window_rows


@pytest.mark.parametrize("bad", ["random", "Uniform", "", None, 1])
def test_an_unknown_mode_names_the_valid_ones(bad):
    valid = "valid modes are none, uniform, block, weighted"
    with pytest.raises(ValueError, match=f"unknown shuffle mode {bad!r}; {valid}"):
        get_order(bad)
    with pytest.raises(ValueError, match=valid):
        epoch_order(5, mode=bad, seed=0, epoch=0)
    with pytest.raises(ValueError, match=valid):
        LanceBatchSampler(10, batch_size=2, shuffle=bad)  # at construction, not at the first batch


def test_how_each_order_reads():
    # uniform: scattered rows, a take a batch; block: a window's batches (contiguous runs);
    # none: ~16k rows of table order a read.
    assert [get_order(m).shuffles for m in SHUFFLE_MODES] == [False, True, True, True]
    assert [get_order(m).contiguous for m in SHUFFLE_MODES] == [True, False, True, False]
    kw = dict(block_size=4096, window_blocks=8)
    assert UniformOrder.group_batches(64, **kw) == 1
    assert BlockOrder.group_batches(64, **kw) == 4096 * 8 // 64 == window_rows(4096, 8, 64) // 64
    assert BlockOrder.group_batches(1000, **kw) == 33  # the window rounded up to whole batches
    assert SequentialOrder.group_batches(64, **kw) == SEQUENTIAL_READ_ROWS // 64 == 256
    assert SequentialOrder.group_batches(100_000, **kw) == 1


def test_register_refuses_what_it_cannot_dispatch_to(scratch_registry):
    class Unnamed(EpochOrder):
        pass

    class Clash(UniformOrder):
        name = "block"

    with pytest.raises(TypeError, match="EpochOrder subclass"):
        register(Unnamed)
    with pytest.raises(TypeError, match="EpochOrder subclass"):
        register(int)
    with pytest.raises(ValueError, match="'block' is already registered by BlockOrder"):
        register(Clash)
    assert register(BlockOrder) is BlockOrder  # registering the same class again changes nothing
    assert order_names() == SHUFFLE_MODES


class ReverseOrder(EpochOrder):
    """A toy order for the test below: the table backwards."""

    name = "reverse"

    def __init__(self, num_rows: int) -> None:
        self.num_rows = num_rows

    @classmethod
    def create(cls, num_rows: int, **_: int) -> ReverseOrder:
        return cls(num_rows)

    def positions(self, indices: np.ndarray) -> np.ndarray:
        return self.num_rows - 1 - np.asarray(indices, dtype=np.int64)


def test_a_registered_order_is_usable_everywhere_without_other_changes(scratch_registry):
    assert register(ReverseOrder) is ReverseOrder
    assert order_names() == (*SHUFFLE_MODES, "reverse")
    assert epoch_order(5, mode="reverse", seed=0, epoch=0).tolist() == [4, 3, 2, 1, 0]
    ranks = [LanceBatchSampler(10, batch_size=2, num_replicas=2, rank=r, shuffle="reverse") for r in (0, 1)]
    assert ranks[0].shuffle and ranks[0].epoch_order().nbytes == 0
    assert [[b.tolist() for b in s] for s in ranks] == [[[9, 8], [5, 4], [1]], [[7, 6], [3, 2], [0]]]


# -- every registered order ------------------------------------------------------------------


@FAST
@given(
    mode=st.sampled_from(order_names()),
    n=st.one_of(st.integers(0, 40), st.integers(0, 5000)),
    seed=st.integers(0, 2**64 - 1),
    epoch=st.integers(0, 10_000),
    streams=st.integers(1, 6),
    batch_size=st.integers(1, 100),
)
def test_every_order_is_a_deterministic_permutation_of_the_split(mode, n, seed, epoch, streams, batch_size):
    kw = dict(mode=mode, seed=seed, epoch=epoch, streams=streams, batch_size=batch_size, **BLOCKS)
    order = order_for(n, **kw)
    assert isinstance(order, get_order(mode)) and order.num_rows == n
    whole = order.positions(np.arange(n, dtype=np.int64))
    assert whole.dtype == np.int64 and np.array_equal(np.sort(whole), np.arange(n))
    # A fresh object (another process) agrees, and so does any slice evaluated on its own.
    again = order_for(n, **kw)
    assert np.array_equal(again.positions(np.arange(n, dtype=np.int64)), whole)
    lo = n // 3
    assert np.array_equal(order_for(n, **kw).positions(np.arange(lo, n, dtype=np.int64)), whole[lo:])


# -- the orders stay what they were ----------------------------------------------------------

# Regression values computed from commit 9e0343d (before orders.py became a package and batches
# stopped being sorted): checkpoints written then must resume to exactly the same rows.
PINNED_HEADS = [
    (1000, dict(mode="uniform", seed=0, epoch=0), [614, 455, 43, 299, 451, 44, 623, 182, 126, 55, 481, 673]),
    (1000, dict(mode="uniform", seed=42, epoch=3), [399, 589, 85, 871, 48, 282, 501, 491, 631, 162, 726, 667]),
    (7, dict(mode="uniform", seed=2**63 - 1, epoch=1), [6, 1, 0, 4, 5, 3, 2]),
    (
        10_000_000,
        dict(mode="uniform", seed=3, epoch=2),
        [2861780, 5693444, 2183861, 8586232, 8926427, 7855834, 7360655, 684185, 9601077, 7819564, 2088161, 4846105],
    ),
    (
        1000,
        dict(mode="block", seed=0, epoch=0, block_size=16, window_blocks=4),
        [135, 330, 483, 133, 270, 494, 328, 492, 493, 142, 258, 335],
    ),
    (
        1000,
        dict(mode="block", seed=7, epoch=5, block_size=8, window_blocks=3, streams=2, batch_size=5),
        [764, 967, 966, 964, 993, 5, 711, 6, 704, 32, 648, 998],
    ),
    (
        100_000,
        dict(mode="block", seed=1, epoch=1, streams=4, batch_size=256),
        [52681, 49708, 45797, 23513, 10693, 81753, 20685, 17271, 49651, 18700, 81149, 45723],
    ),
    (1000, dict(mode="none", seed=5, epoch=9), list(range(12))),
]
PINNED_SHA256 = [  # of the whole order as little-endian int64, first 16 hex digits (commit 9e0343d)
    (1000, dict(mode="uniform", seed=0, epoch=0), "26629549b6197ed0"),
    (100_000, dict(mode="uniform", seed=1, epoch=1), "4f7e818c8f0bc514"),
    (1000, dict(mode="block", seed=0, epoch=0, block_size=16, window_blocks=4), "c2b66ec184c3c68c"),
    (
        1000,
        dict(mode="block", seed=7, epoch=5, block_size=8, window_blocks=3, streams=2, batch_size=5),
        "be9b96f7dc5973cf",
    ),
    (100_000, dict(mode="block", seed=1, epoch=1, streams=4, batch_size=256), "d6f0aee3d63515a2"),
]
# LanceBatchSampler(1000, batch_size=8, num_replicas=2, rank=1, seed=11, block_size=16,
# window_blocks=2), epoch 2: the rows of its first batch (9e0343d yielded them sorted).
PINNED_FIRST_BATCH = {
    "uniform": [123, 160, 191, 209, 253, 601, 769, 807],
    "block": [275, 279, 281, 283, 284, 285, 804, 809],
    "none": [8, 9, 10, 11, 12, 13, 14, 15],
}


@pytest.mark.parametrize(("n", "kw", "head"), PINNED_HEADS)
def test_orders_are_bit_identical_to_before(n, kw, head):
    order = order_for(n, **kw)
    assert order.positions(np.arange(len(head))).tolist() == head


@pytest.mark.parametrize(("n", "kw", "digest"), PINNED_SHA256)
def test_whole_orders_are_bit_identical_to_before(n, kw, digest):
    whole = epoch_order(n, **kw).astype("<i8")
    assert hashlib.sha256(whole.tobytes()).hexdigest()[:16] == digest


@pytest.mark.parametrize("mode", sorted(PINNED_FIRST_BATCH))
def test_sampler_batches_hold_the_same_rows_as_before(mode):
    s = LanceBatchSampler(
        1000, batch_size=8, num_replicas=2, rank=1, shuffle=mode, seed=11, block_size=16, window_blocks=2
    )
    s.set_epoch(2)
    first = next(iter(s)).tolist()
    assert sorted(first) == PINNED_FIRST_BATCH[mode]
    assert (first == sorted(first)) == (mode == "none"), "shuffled batches come in epoch order, not sorted"


# The mixture's and the weighted order's epochs, digested as above, at commit 782f8fc (before their
# orders were made with fewer copies and passes): a checkpoint written then resumes to the same rows.
# (sizes, proportions, samples_per_epoch, batching, batch_size, world_size, epoch, digest), seed 7.
PINNED_MIXTURES = [
    ((1000, 777, 333), (1, 2, 1), None, "mixed", 8, 1, 0, "f308d6ca608544ec"),
    ((1000, 777, 333), (1, 2, 1), None, "mixed", 8, 1, 1, "78f117bc359546b3"),
    ((1000, 777, 333), (1, 2, 1), None, "mixed", 5, 3, 4, "f78dfb9a6936e27c"),
    ((1000, 777, 333), (1, 2, 1), None, "stratified", 8, 1, 0, "7cf99dde06cf5350"),
    ((1000, 777, 333), (1, 2, 1), None, "stratified", 8, 1, 1, "75caa156feb3a9b9"),
    ((1000, 777, 333), (1, 2, 1), None, "stratified", 8, 1, 4, "c3d732bf3ef25278"),
    ((1000, 777, 333), (1, 2, 1), None, "stratified", 5, 3, 0, "7303fc5b4c10b71f"),
    ((1000, 777, 333), (1, 2, 1), None, "stratified", 5, 3, 1, "b753c39801567241"),
    ((1000, 777, 333), (1, 2, 1), None, "stratified", 5, 3, 4, "d4ac0801a080fd63"),
    ((1000, 777, 333), (1, 2, 1), None, "source", 8, 1, 0, "2c286bce5485af69"),
    ((1000, 777, 333), (1, 2, 1), None, "source", 8, 1, 1, "58fe8219e739e308"),
    ((1000, 777, 333), (1, 2, 1), None, "source", 8, 1, 4, "7ada04dd28cf409b"),
    ((1000, 777, 333), (1, 2, 1), None, "source", 5, 3, 0, "2301bcbb3cb08267"),
    ((1000, 777, 333), (1, 2, 1), None, "source", 5, 3, 1, "31a268e2aa4a7c57"),
    ((1000, 777, 333), (1, 2, 1), None, "source", 5, 3, 4, "51d9a6713c496339"),
    # a source of 37 rows drawn 175 times an epoch (several passes), one of 2000 drawn 525 (part of one)
    ((2000, 37), (3, 1), 700, "mixed", 16, 2, 0, "d7933144e4ac6be0"),
    ((2000, 37), (3, 1), 700, "mixed", 16, 2, 5, "2c63632f4d6f4150"),
    ((2000, 37), (3, 1), 700, "stratified", 16, 2, 0, "ac06b35041381587"),
    ((2000, 37), (3, 1), 700, "stratified", 16, 2, 5, "9fdfa613ed42d5b2"),
    ((2000, 37), (3, 1), 700, "source", 16, 2, 0, "e1fb50acd397a2e5"),
    ((2000, 37), (3, 1), 700, "source", 16, 2, 5, "d51ca0bf47e62f9b"),
]
# (samples_per_epoch, replacement, epoch, digest) of 20,000 weights (every 9th 0, every 11th from
# the 5th 1e-310: keys capped below inf), seed 11, made on demand and whole (ahead) alike.
PINNED_WEIGHTED = [
    (None, False, 0, "d95ce18773dbd557"),
    (None, False, 3, "aaa2560371dfd338"),
    (5000, False, 0, "9271d9188e690235"),
    (5000, False, 3, "42a420d6490ef508"),
    (5000, True, 0, "051dddaf9eb0f5fc"),
    (5000, True, 3, "3f240bf8fbf6f904"),
]


def _digest(order: EpochOrder) -> str:
    return hashlib.sha256(order.positions(np.arange(order.num_rows)).astype("<i8").tobytes()).hexdigest()[:16]


@pytest.mark.parametrize(
    ("sizes", "shares", "samples", "batching", "batch", "world", "epoch", "digest"), PINNED_MIXTURES
)
def test_mixture_orders_are_bit_identical_to_before(sizes, shares, samples, batching, batch, world, epoch, digest):
    from lance_lightning.orders import MixtureOrder, MixturePlan

    plan = MixturePlan(sizes, tuple(map(float, shares)), samples=samples, batching=batching)
    alone = MixtureOrder.create(sum(sizes), seed=7, epoch=epoch, streams=world, batch_size=batch, mixture=plan)
    assert _digest(alone) == digest
    # made after another epoch's order, as the sampler makes the next epoch's (it may reuse that
    # order's work where it applies): the same rows in the same places
    before = MixtureOrder.create(
        sum(sizes), seed=7, epoch=epoch - 1 if epoch else 2, streams=world, batch_size=batch, mixture=plan
    )
    after = MixtureOrder.create(
        sum(sizes), seed=7, epoch=epoch, streams=world, batch_size=batch, mixture=plan, before=before, whole=True
    )
    assert _digest(after) == digest


@pytest.mark.parametrize(("samples", "replacement", "epoch", "digest"), PINNED_WEIGHTED)
def test_weighted_orders_are_bit_identical_to_before(samples, replacement, epoch, digest):
    weights = np.random.default_rng(3).random(20_000)
    weights[::9] = 0
    weights[5::11] = 1e-310
    for whole in (False, True):
        order = WeightedOrder(weights, seed=11, epoch=epoch, samples=samples, replacement=replacement, whole=whole)
        assert _digest(order) == digest


def test_batches_read_together_are_bounded_in_bytes():
    """Several batches are read together (a worker's hand-over from a stage; a range scan of the
    table), ~16k rows or a block window, fewer where the rows are wide: a group never passes
    READ_GROUP_BYTES unless a single batch does. Rows of 520 B keep the orders' own groups."""
    from lance_lightning.assembly import MIX_READ_ROWS, READ_GROUP_BYTES, group_batches
    from lance_lightning.options import DataOptions

    with_workers, without = DataOptions(num_workers=2), DataOptions(num_workers=0)
    assert group_batches(with_workers, "uniform", 1024, staged=True, row_bytes=520) == SEQUENTIAL_READ_ROWS // 1024
    assert group_batches(without, "uniform", 1024, staged=True, row_bytes=520) == 1
    # a mixture's stages without workers: a read pays each source's checks once for several batches
    assert group_batches(without, "mixture", 1024, staged=True, row_bytes=520) == MIX_READ_ROWS // 1024 > 1
    assert group_batches(without, "mixture", 1024, row_bytes=520) == 1  # sources read from their tables
    kw = {"block_size": without.block_size, "window_blocks": without.window_blocks}
    assert group_batches(without, "block", 64, row_bytes=520) == BlockOrder.group_batches(64, **kw)
    assert group_batches(without, "none", 64, row_bytes=520) == SequentialOrder.group_batches(64, **kw)
    readers = [(with_workers, "uniform", True), (without, "none", False), (without, "block", False)]
    readers.append((without, "mixture", True))
    for options, order, staged in readers:
        for row_bytes in (1, 520, 4096, 16_384, 150_528, 600_000, 40 << 20):
            for batch in (1, 32, 256, 1024, 4096):
                group = group_batches(options, order, batch, staged=staged, row_bytes=row_bytes)
                unbounded = group_batches(options, order, batch, staged=staged)
                assert 1 <= group <= unbounded
                assert group * batch * row_bytes <= max(READ_GROUP_BYTES, batch * row_bytes)
