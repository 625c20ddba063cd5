"""The weighted order (lance_lightning/orders/weighted.py), the weights' checks (lance_lightning/weights.py)
and the weighted sampler: draws follow the weights, weight 0 never comes, every rank's slice is a
slice of one epoch order, and a resume continues it exactly. No torch.distributed: ranks are
samplers built with their rank."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from lance_lightning.options import DataOptions, SettingError
from lance_lightning.orders import WeightedOrder, epoch_draws, get_order, order_for
from lance_lightning.sampler import LanceBatchSampler
from lance_lightning.weights import WeightError, check_weights, class_balance
from tests.sharding_invariants import assert_epoch_invariants

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
P = 1e-3  # a test of the draws fails wrongly once in 1,000 seeds; the seeds are fixed
WEIGHTS = np.array([0.0, 1.0, 2.0, 3.0, 0.0, 4.0, 0.5, 10.0, 2.5, 1.0])


def chi_square_p(counts: np.ndarray, weights: np.ndarray) -> float:
    """The chi-square test's p-value of ``counts`` against draws proportional to ``weights`` (> 0 only)."""
    positive = weights > 0
    expected = weights[positive] / weights[positive].sum() * counts.sum()
    return stats.chisquare(counts[positive], expected).pvalue


def test_with_replacement_draws_follow_the_weights_and_never_weight_zero():
    counts = np.zeros(len(WEIGHTS), dtype=np.int64)
    for epoch in range(400):
        order = WeightedOrder(WEIGHTS, seed=7, epoch=epoch, samples=50, replacement=True)
        drawn = order.positions(np.arange(order.num_rows))
        assert len(drawn) == 50
        counts += np.bincount(drawn, minlength=len(WEIGHTS))
    assert counts[WEIGHTS == 0].sum() == 0
    assert chi_square_p(counts, WEIGHTS) > P


def test_without_replacement_each_draw_follows_the_weights_of_the_rows_left():
    # the epoch's first row: w_i / sum(w); its second, among the others: w_j / (sum(w) - w_first)
    first = np.zeros(len(WEIGHTS), dtype=np.int64)
    second_after_7 = np.zeros(len(WEIGHTS), dtype=np.int64)
    positive = np.flatnonzero(WEIGHTS > 0)
    for epoch in range(4000):
        drawn = WeightedOrder(WEIGHTS, seed=3, epoch=epoch).positions(np.arange(len(positive)))
        assert sorted(drawn.tolist()) == positive.tolist()  # every row of weight > 0 once, no other
        first[drawn[0]] += 1
        if drawn[0] == 7:
            second_after_7[drawn[1]] += 1
    assert chi_square_p(first, WEIGHTS) > P
    rest = WEIGHTS.copy()
    rest[7] = 0
    assert second_after_7[7] == 0 and chi_square_p(second_after_7, rest) > P


def test_samples_per_epoch_without_replacement_draws_distinct_rows_by_weight():
    # 3 of 8 rows an epoch: the heaviest row is in almost every epoch, a row of weight 0 in none
    seen = np.zeros(len(WEIGHTS), dtype=np.int64)
    for epoch in range(300):
        drawn = WeightedOrder(WEIGHTS, seed=1, epoch=epoch, samples=3).positions(np.arange(3))
        assert len(set(drawn.tolist())) == 3
        seen[drawn] += 1
    assert seen[WEIGHTS == 0].sum() == 0
    assert seen[7] > seen[5] > seen[1] > seen[6]  # 10 > 4 > 1 > 0.5


def test_the_order_is_a_function_of_seed_and_epoch_only():
    def draw(seed, epoch, **kw):
        order = order_for(len(WEIGHTS), mode="weighted", seed=seed, epoch=epoch, weights=WEIGHTS, **kw)
        return order.positions(np.arange(order.num_rows)).tolist()

    for kw in ({}, {"samples": 20, "replacement": True}, {"samples": 4}):
        assert draw(5, 2, **kw) == draw(5, 2, **kw)
        assert draw(5, 2, **kw) != draw(5, 3, **kw) or draw(5, 2, **kw) != draw(6, 2, **kw)
    # batch size, world size and the block settings play no part
    a = order_for(10, mode="weighted", seed=5, epoch=2, weights=WEIGHTS, streams=3, batch_size=7, block_size=2)
    assert a.positions(np.arange(a.num_rows)).tolist() == draw(5, 2)


def test_what_the_order_holds_a_row():
    rows = 100_000
    order = WeightedOrder(np.random.default_rng(0).random(rows), seed=0, epoch=0)
    assert order.order.dtype == np.int32  # positions (int32) + float64 weights + a few hundred buckets
    assert rows * (4 + 8) < order.nbytes < rows * (4 + 8) + 8 * 2**16
    assert order.positions(np.array([0, rows - 1])).dtype == np.int64
    with_replacement = WeightedOrder(np.ones(rows), seed=0, epoch=0, replacement=True)
    assert with_replacement.nbytes == rows * (8 + 8 + 4)  # weights, cumulative weights, guide


@pytest.mark.parametrize("skew", [0.0, 3.0, 12.0])
def test_a_draw_with_replacement_is_the_binary_search_of_its_target(skew):
    # weights from equal to very uneven (e**12 apart: cells of many light rows), with zeros
    rng = np.random.default_rng(int(skew))
    weights = np.exp(rng.standard_normal(5000) * skew)
    weights[rng.random(5000) < 0.2] = 0
    order = WeightedOrder(weights, seed=1, epoch=2, samples=20_000, replacement=True)
    targets = np.r_[rng.random(20_000), 0.0, 1 - 2**-53, order.cumulative[:50] / order.cumulative[-1]]
    targets = targets * order.cumulative[-1]
    expected = np.minimum(np.searchsorted(order.cumulative, targets, side="right"), order.last)
    assert order._draw(targets).tolist() == expected.tolist()
    assert weights[order.positions(np.arange(order.num_rows))].min() > 0


def test_the_buckets_sorted_as_read_give_exactly_the_sorted_keys():
    weights = np.random.default_rng(1).random(20_000) * 50
    weights[::7] = 0
    weights[5] = 1e-310  # a key that would overflow to inf: after every other row of weight > 0
    order = WeightedOrder(weights, seed=4, epoch=9)
    assert len(order.bounds) > 10
    keys = order._keys(np.arange(len(weights)))
    expected = np.argsort(keys, kind="stable")[: order.num_rows]
    # read back to front in scattered slices: each bucket sorted the first time it is touched
    got = np.empty(order.num_rows, dtype=np.int64)
    for chunk in np.array_split(np.random.default_rng(2).permutation(order.num_rows), 37):
        got[chunk] = order.positions(chunk)
    assert got.tolist() == expected.tolist() and got[-1] == 5 and order.sorted[: len(order.sorted) - 1].all()


def test_an_order_made_whole_ahead_is_the_stable_sort_of_its_keys_ties_included():
    # complete() sorts in passes (top bits first, then the whole key): equal keys (weight 0's inf, the
    # capped keys of tiny weights) must keep the order one stable sort gives, or an epoch read from an
    # order made ahead would differ from the same epoch sorted bucket by bucket as read
    weights = np.random.default_rng(3).random(50_000) * 50
    weights[::5] = 0
    weights[[7, 70, 700, 7000]] = 1e-310
    lazy = WeightedOrder(weights, seed=2, epoch=5)
    expected = np.argsort(lazy._keys(np.arange(len(weights))), kind="stable")
    read = lazy.positions(np.arange(lazy.num_rows)).tolist()  # sorted bucket by bucket, as read
    completed = WeightedOrder(weights, seed=2, epoch=5)
    completed.complete()
    whole = WeightedOrder(weights, seed=2, epoch=5, whole=True)  # as the sampler makes an order ahead
    for order in (completed, whole):
        assert order.order.tolist() == expected.tolist() and order.sorted.all()
        assert order.positions(np.arange(order.num_rows)).tolist() == read
        assert order.order[order.num_rows - 4 : order.num_rows].tolist() == [7, 70, 700, 7000]
    whole.complete()  # nothing left to do
    assert whole.order.tolist() == expected.tolist()


def test_an_empty_epoch():
    for kw in ({}, {"replacement": True}):
        for weights in (np.zeros(0), np.zeros(3)):
            order = WeightedOrder(weights, seed=0, epoch=0, **kw)
            assert order.num_rows == 0 and order.positions(np.zeros(0, np.int64)).tolist() == []


def test_epoch_draws_and_its_refusals():
    assert epoch_draws(WEIGHTS, None, False) == 8 and epoch_draws(WEIGHTS, None, True) == 8
    assert epoch_draws(WEIGHTS, 100, True) == 100 and epoch_draws(WEIGHTS, 8, False) == 8
    with pytest.raises(ValueError, match=r"samples_per_epoch=9 is more than the 8 rows of weight > 0 \(of 10\)"):
        epoch_draws(WEIGHTS, 9, False)
    with pytest.raises(ValueError, match="all weigh 0"):
        epoch_draws(np.zeros(3), 2, True)


@FAST
@given(
    n=st.integers(1, 60),
    zeros=st.integers(0, 10),
    world=st.integers(1, 5),
    batch=st.integers(1, 9),
    drop_last=st.booleans(),
    seed=st.integers(0, 2**63 - 1),
    epoch=st.integers(0, 50),
)
def test_ranks_read_slices_of_one_epoch_order(n, zeros, world, batch, drop_last, seed, epoch):
    weights = np.random.default_rng(seed % 1000).random(n) + 0.01
    weights[: min(zeros, n - 1)] = 0
    samplers = [
        LanceBatchSampler(
            n,
            batch_size=batch,
            num_replicas=world,
            rank=r,
            shuffle="weighted",
            seed=seed,
            weights=weights,
            drop_last=drop_last,
        )
        for r in range(world)
    ]
    for s in samplers:
        s.set_epoch(epoch)
    positive = np.flatnonzero(weights > 0).tolist()
    if drop_last and len(positive) < world * batch:
        return
    rank_batches = [[b.tolist() for b in s] for s in samplers]
    assert_epoch_invariants(rank_batches, positive, world_size=world, batch_size=batch, drop_last=drop_last, even=True)
    assert {len(s) for s in samplers} == {len(rank_batches[0])}
    # the rows of each global step, rank after rank, are the epoch order's next rows
    order = WeightedOrder(weights, seed=seed, epoch=epoch).positions(np.arange(len(positive))).tolist()
    steps = [row for k in range(len(rank_batches[0])) for rb in rank_batches for row in rb[k]]
    assert steps[: len(order) - (len(order) % (world * batch) if drop_last else 0)] == order[: len(steps)]


@pytest.mark.parametrize(("then", "now"), [(2, 2), (2, 3), (1, 4)])
@pytest.mark.parametrize("replacement", [False, True])
def test_a_resume_continues_the_epoch_order_at_its_row(then, now, replacement):
    weights = np.r_[np.zeros(5), np.arange(1, 96, dtype=np.float64)]
    kw = dict(shuffle="weighted", seed=11, weights=weights, batch_size=4)
    kw.update(samples_per_epoch=130, replacement=True) if replacement else None
    whole = WeightedOrder(weights, seed=11, epoch=3, samples=kw.get("samples_per_epoch"), replacement=replacement)
    whole = whole.positions(np.arange(whole.num_rows)).tolist()
    ranks = [LanceBatchSampler(100, num_replicas=then, rank=r, **kw) for r in range(then)]
    for s in ranks:
        s.set_epoch(3)
    consumed = ranks[0].rows_consumed_after(5)  # every rank read 5 batches
    assert consumed == 5 * then * 4
    resumed = [LanceBatchSampler(100, num_replicas=now, rank=r, **kw) for r in range(now)]
    for s in resumed:
        s.resume_at(epoch=3, consumed_rows=consumed)
    batches = [[b.tolist() for b in s] for s in resumed]
    rest = [row for k in range(len(batches[0])) for rb in batches for row in (rb[k] if k < len(rb) else [])]
    assert rest[: len(whole) - consumed] == whole[consumed:]


def test_the_sampler_refuses_weights_for_an_unweighted_order_and_bad_weights():
    with pytest.raises(ValueError, match="settings of a weighted order .*not of shuffle='uniform'"):
        LanceBatchSampler(3, batch_size=1, shuffle="uniform", weights=np.ones(3))
    with pytest.raises(ValueError, match=r"one a split row \(3\)"):
        LanceBatchSampler(3, batch_size=1, shuffle="weighted", weights=np.ones(4))
    with pytest.raises(ValueError, match="finite and >= 0"):
        LanceBatchSampler(3, batch_size=1, shuffle="weighted", weights=np.array([1.0, -1.0, 1.0]))
    assert get_order("weighted").weighted and not get_order("uniform").weighted


# -- the weights' checks ---------------------------------------------------------------------------

ROW_IDS = np.array([5, 6, (1 << 32) + 2, (1 << 32) + 3], dtype=np.uint64)


@pytest.mark.parametrize(
    ("values", "what", "count", "example"),
    [
        (pa.array([1.0, float("nan"), 2.0, float("nan")]), "NaN", 2, "row address 6 (fragment 0) has nan"),
        (pa.array([1.0, 2.0, float("inf"), 1.0]), "infinite", 1, "row address 4294967298 (fragment 1) has inf"),
        (pa.array([1, 2, 3, -4]), "negative", 1, "row address 4294967299 (fragment 1) has -4"),
        (pa.array([1.0, None, 2.0, None]), "null", 2, "row address 6 (fragment 0) has None"),
    ],
)
def test_a_bad_weight_is_refused_naming_the_column_count_and_a_row(values, what, count, example):
    with pytest.raises(WeightError) as err:
        check_weights(values, column="w", table="toy", row_ids=ROW_IDS)
    text = str(err.value)
    assert f"weight_column 'w' of table 'toy' has {count} {what} weight(s) in the train split (of 4 rows)" in text
    assert example in text


def test_all_zero_weights_and_a_column_that_is_not_numeric_are_refused():
    with pytest.raises(
        WeightError, match=r"weight_column 'w' of table 'toy': all 4 weights .* are 0, e.g. row address 5"
    ):
        check_weights(pa.array([0, 0, 0, 0]), column="w", table="toy", row_ids=ROW_IDS)
    with pytest.raises(WeightError, match=r"weight_column 'name' of table 'toy' is of type string: .* must be numeric"):
        check_weights(pa.array(["a", "b", "c", "d"]), column="name", table="toy", row_ids=ROW_IDS)
    ok = check_weights(pa.array([0, 1, 2, 3], pa.uint8()), column="w", table="toy", row_ids=ROW_IDS)
    assert ok.dtype == np.float64 and ok.tolist() == [0, 1, 2, 3]


def test_class_balance_weighs_each_label_by_its_rarity():
    labels = pa.array(["cat", "dog", "cat", "cat"])
    assert class_balance(labels, column="label", table="toy", row_ids=ROW_IDS).tolist() == [1 / 3, 1, 1 / 3, 1 / 3]
    with pytest.raises(WeightError, match=r"balance_column 'label' of table 'toy' has 1 null value\(s\)"):
        class_balance(pa.array([1, None, 1, 2]), column="label", table="toy", row_ids=ROW_IDS)


# -- the settings ------------------------------------------------------------------------------------


def test_weight_settings_ask_for_the_weighted_shuffle():
    assert DataOptions(weight_column="w").shuffle == "weighted"
    assert DataOptions(balance_column="y", shuffle="weighted").shuffle == "weighted"
    with pytest.raises(SettingError, match=r"weight_column draw rows by weight .* shuffle='block' does not"):
        DataOptions(weight_column="w", shuffle="block")
    with pytest.raises(SettingError, match=r"shuffle='weighted' needs weights a row: set weight_column"):
        DataOptions(shuffle="weighted")
    with pytest.raises(SettingError, match=r"samples_per_epoch, weight_replacement needs weights a row"):
        DataOptions(samples_per_epoch=10, weight_replacement=True)
    with pytest.raises(SettingError, match="samples_per_epoch must be an integer >= 1"):
        DataOptions(weight_column="w", samples_per_epoch=0)
