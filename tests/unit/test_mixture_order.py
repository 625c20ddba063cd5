"""The mixture order (``mix``): exact counts a source per epoch, streams without repeats before a
pass ends, the three layouts, and the settings' checks. Pure: no table, no torch.distributed."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

from lance_lightning.options import DataOptions, SettingError
from lance_lightning.orders import MixturePlan, get_order, mixture_counts
from lance_lightning.orders.mixture import largest_remainder
from lance_lightning.sampler import LanceBatchSampler


def whole_epoch(plan: MixturePlan, *, seed: int = 0, epoch: int = 0, batch_size: int = 4, world: int = 1):
    order = get_order("mixture").create(
        sum(plan.sizes), seed=seed, epoch=epoch, streams=world, batch_size=batch_size, mixture=plan
    )
    return order, order.positions(np.arange(order.num_rows))


PLANS = [
    ((10,), (1.0,)),
    ((10, 3), (0.5, 0.5)),
    ((7, 40, 5), (0.2, 0.5, 0.3)),
    ((100, 9, 1), (3, 1, 1)),
    ((31, 17, 64, 2), (0.1, 0.2, 0.3, 0.4)),
]


@pytest.mark.parametrize("sizes,shares", PLANS)
@pytest.mark.parametrize("samples", [None, 1, 37, 250])
def test_counts_are_each_share_rounded_and_sum_to_the_epoch(sizes, shares, samples):
    counts = mixture_counts(sizes, shares, samples=samples)
    p = np.asarray(shares) / np.sum(shares)
    if samples is None:  # one pass over the first source, the others in proportion to it
        assert counts[0] == sizes[0]
        assert np.all(np.abs(counts[1:] - sizes[0] * p[1:] / p[0]) <= 0.5)
    else:
        assert counts.sum() == samples
        assert np.all(np.abs(counts - samples * p) < 1)


def test_largest_remainder_exhaustively():
    for total in range(0, 40):
        for shares in itertools.product([1, 2, 3, 7], repeat=3):
            parts = largest_remainder(total, shares)
            quota = total * np.asarray(shares) / sum(shares)
            assert parts.sum() == total and np.all(np.abs(parts - quota) < 1)


@pytest.mark.parametrize("batching", ["mixed", "stratified", "source"])
@pytest.mark.parametrize("sizes,shares", PLANS)
@pytest.mark.parametrize("world", [1, 3])
def test_every_epoch_holds_each_source_s_count_exactly(batching, sizes, shares, world):
    plan = MixturePlan(sizes, shares, samples=120, batching=batching)
    for epoch in range(3):
        order, positions = whole_epoch(plan, epoch=epoch, batch_size=4, world=world)
        counts = plan.counts(batch_size=4, world_size=world)
        assert np.array_equal(np.bincount(plan.source_of(positions), minlength=len(sizes)), counts)
        assert positions.min() >= 0 and positions.max() < sum(sizes)
        # a slice computed alone is the same as that slice of the whole epoch
        for lo, hi in [(0, 5), (17, 60), (order.num_rows - 7, order.num_rows)]:
            assert np.array_equal(order.positions(np.arange(max(lo, 0), hi)), positions[max(lo, 0) : hi])


@pytest.mark.parametrize("batching", ["mixed", "stratified", "source"])
def test_a_source_drawn_below_its_size_gives_every_row_before_any_repeat(batching):
    """Source 1 (1000 rows) gives 100 an epoch: ten epochs read each of its rows once, in a new
    order each pass; source 0 (small) repeats, each pass a permutation of its rows."""
    plan = MixturePlan((20, 1000), (0.5, 0.5), samples=200, batching=batching)
    stream = {0: [], 1: []}
    for epoch in range(12):
        _, positions = whole_epoch(plan, epoch=epoch, batch_size=4, world=1)
        for source in (0, 1):
            stream[source].append(positions[plan.source_of(positions) == source] - plan.bases[source])
    big = np.concatenate(stream[1])
    assert len(big) == 1200 and sorted(big[:1000]) == list(range(1000))  # the first pass: every row once
    assert len(set(big[1000:])) == 200  # the second pass begins: no repeat inside it
    small = np.concatenate(stream[0])
    counts = np.bincount(small, minlength=20)
    assert counts.min() == counts.max() == 1200 // 20  # 60 whole passes: every row equally often
    for epoch_rows in stream[0]:  # 100 draws of 20 rows an epoch: 5 whole passes, each a permutation
        assert np.all(np.bincount(epoch_rows, minlength=20) == 5)


def test_a_pass_that_runs_over_an_epoch_boundary_continues_it():
    """The draws of a source are one stream: epoch 1 continues epoch 0's pass without repeats."""
    plan = MixturePlan((30, 7), (1, 1), samples=20)  # 10 of source 0's 30 rows an epoch
    drawn = []
    for epoch in range(3):
        _, positions = whole_epoch(plan, epoch=epoch)
        drawn += sorted(positions[plan.source_of(positions) == 0].tolist())
    assert sorted(drawn) == list(range(30))


def test_the_next_epoch_s_order_takes_the_open_pass_from_the_one_before_and_holds_it_alone():
    """A pass the epoch ends inside is permuted once: the next epoch's order takes it from the order
    before (the same rows as made afresh), which then no longer holds it; each order counts it in
    its bytes while it holds it."""
    from lance_lightning.orders import MixtureOrder

    plan = MixturePlan((30, 7), (1, 1), samples=20)  # source 0: 10 of 30 rows an epoch; source 1: 10 of 7
    make = functools.partial(MixtureOrder, plan, seed=3, batch_size=4, streams=1)
    first = make(epoch=0)
    assert sorted(first.open_passes) == [0, 1]  # source 0 in pass 0 (rows 10-29 left), source 1 in pass 1
    rows = first.open_passes[0][1]
    assert first.nbytes == first.held.nbytes + rows.nbytes + first.open_passes[1][1].nbytes
    second = make(epoch=1, before=first)
    assert first.open_passes == {} and first.nbytes == first.held.nbytes  # handed over
    assert second.open_passes[0][1] is rows  # pass 0 still open after epoch 1 (rows 20-29 left)
    assert np.array_equal(second.held, make(epoch=1).held)
    other_seed = MixtureOrder(plan, seed=4, epoch=2, batch_size=4, streams=1, before=second)
    assert second.open_passes[0][1] is rows  # not this mixture's: neither taken nor used
    assert np.array_equal(other_seed.held, MixtureOrder(plan, seed=4, epoch=2, batch_size=4, streams=1).held)


@pytest.mark.parametrize("world,batch", [(1, 8), (2, 4), (3, 5)])
@pytest.mark.parametrize("sizes,shares", PLANS[1:])
def test_stratified_every_global_step_holds_each_share_within_one_row(world, batch, sizes, shares):
    plan = MixturePlan(sizes, shares, samples=203, batching="stratified")
    order, positions = whole_epoch(plan, batch_size=batch, world=world)
    counts = plan.counts(batch_size=batch, world_size=world)
    step = batch * world
    sources = plan.source_of(positions)
    for start in range(0, order.num_rows, step):
        rows = sources[start : start + step]
        quota = len(rows) * counts / counts.sum()
        assert np.all(np.abs(np.bincount(rows, minlength=len(sizes)) - quota) < 1), (start, rows)


def test_stratified_steps_are_mixed_within_not_laid_out_by_source():
    plan = MixturePlan((500, 500), (1, 1), batching="stratified")
    _, positions = whole_epoch(plan, batch_size=8, world=2)
    sources = plan.source_of(positions)
    firsts = sources[: len(sources) // 16 * 16].reshape(-1, 16)[:, 0]
    assert 0.3 < firsts.mean() < 0.7  # the step's first row is either source, not always source 0


@pytest.mark.parametrize("world,batch", [(1, 4), (2, 4), (3, 2)])
def test_source_batching_gives_each_rank_s_batch_one_source(world, batch):
    plan = MixturePlan((50, 30, 9), (0.5, 0.3, 0.2), samples=101, batching="source")
    order, positions = whole_epoch(plan, batch_size=batch, world=world)
    assert order.num_rows % (batch * world) == 0  # whole batches, a multiple of the world size
    sources = plan.source_of(positions).reshape(-1, batch)
    assert np.all(sources == sources[:, :1])
    assert len(set(sources[:, 0].tolist())) == 3


def test_source_batching_refuses_a_source_without_a_batch():
    with pytest.raises(ValueError, match=r"source 2 \(proportion 0.001.*no batch.*samples_per_epoch"):
        mixture_counts((10, 10, 10), (0.5, 0.499, 0.001), samples=64, batching="source", batch_size=8)


@pytest.mark.parametrize("batching", ["mixed", "stratified", "source"])
def test_the_order_is_a_function_of_seed_and_epoch(batching):
    plan = MixturePlan((40, 25, 11), (0.5, 0.3, 0.2), samples=60, batching=batching)
    a = whole_epoch(plan, seed=3, epoch=2)[1]
    assert np.array_equal(a, whole_epoch(plan, seed=3, epoch=2)[1])
    assert not np.array_equal(a, whole_epoch(plan, seed=3, epoch=1)[1])
    assert not np.array_equal(a, whole_epoch(plan, seed=4, epoch=2)[1])


@pytest.mark.parametrize("batching", ["mixed", "stratified", "source"])
def test_two_ranks_read_disjoint_batches_of_equal_count_that_make_the_epoch(batching):
    plan = MixturePlan((40, 25, 11), (0.5, 0.3, 0.2), samples=83, batching=batching)
    samplers = [
        LanceBatchSampler(76, batch_size=4, num_replicas=2, rank=r, shuffle="mixture", seed=1, mixture=plan)
        for r in range(2)
    ]
    for s in samplers:
        s.set_epoch(1)
    batches = [list(s) for s in samplers]
    assert len(batches[0]) == len(batches[1]) == len(samplers[0])
    order = whole_epoch(plan, seed=1, epoch=1, batch_size=4, world=2)[1]
    read = np.concatenate([b for pair in zip(*batches) for b in pair])
    padded = len(read) - len(order)
    assert 0 <= padded < 2 and np.array_equal(read[: len(order)], order)
    if batching == "mixed":  # the mixed order does not depend on the world size: one process reads the same
        single = LanceBatchSampler(76, batch_size=8, shuffle="mixture", seed=1, mixture=plan)
        single.set_epoch(1)
        assert np.array_equal(np.concatenate(list(single)), order)


def test_the_sampler_refuses_a_plan_of_other_sizes_and_a_plan_without_the_mixture_order():
    plan = MixturePlan((4, 4), (1, 1))
    with pytest.raises(ValueError, match="sources hold 8 rows, the sampler was given 9"):
        LanceBatchSampler(9, batch_size=2, shuffle="mixture", mixture=plan)
    with pytest.raises(ValueError, match="needs its mixture plan"):
        LanceBatchSampler(8, batch_size=2, shuffle="mixture")
    with pytest.raises(ValueError, match="goes with shuffle='mixture'"):
        LanceBatchSampler(8, batch_size=2, shuffle="uniform", mixture=plan)


def test_the_mixture_is_not_a_shuffle_mode():
    with pytest.raises(SettingError, match="shuffle must be one of"):
        DataOptions(shuffle="mixture")


@pytest.mark.parametrize(
    "mix,message",
    [
        ([], "mix names no source"),
        ("web", "mix must be a mapping of source name"),
        ({"a": {"proportion": 1, "weight": 2}}, r"mix source 'a': unknown key\(s\) \['weight'\]; valid keys"),
        ({"a": {"table": "t"}}, "mix source 'a' has no proportion"),
        ({"a": {"proportion": 0}}, "mix source 'a': proportion must be a number > 0"),
        ({"a": {"proportion": "half"}}, "mix source 'a': proportion must be a number > 0"),
        ({"a": {"proportion": True}}, "mix source 'a': proportion must be a number > 0"),
        ({"a": {"proportion": float("nan")}}, "mix source 'a': proportion must be a number > 0"),
        ({"a": {"proportion": 1, "uri": "/x"}}, "mix source 'a': uri names a database; name the table"),
        ({"a": {"proportion": 1, "table": "t", "split": "val"}}, "mix source 'a': split names a split of the"),
        ({"a": {"proportion": 1, "filter": ""}}, "mix source 'a': filter must be a non-empty string"),
        ([{"name": "a", "proportion": 1}, {"name": "a", "proportion": 2}], r"names source\(s\) \['a'\] more than once"),
        (["a"], "mix source 'source0' must be a mapping"),
    ],
)
def test_a_bad_mix_is_refused_naming_the_source_and_key(mix, message):
    with pytest.raises(SettingError, match=message):
        DataOptions(mix=mix)


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"weight_column": "w"}, "weight_column weigh the rows of one split; with mix"),
        ({"shuffle": "block"}, "shuffle='block' orders one split; a mixture"),
        ({"mix_batching": "diagonal"}, "mix_batching must be one of"),
    ],
)
def test_settings_a_mixture_cannot_honour_are_refused(settings, message):
    with pytest.raises(SettingError, match=message):
        DataOptions(mix={"a": {"proportion": 1}}, **settings)


def test_mix_batching_without_a_mixture_is_refused():
    with pytest.raises(SettingError, match="mix_batching='source' lays out the sources of a mixture; set mix"):
        DataOptions(mix_batching="source")


def test_a_list_and_a_mapping_give_the_same_sources_and_samples_per_epoch_goes_with_a_mixture():
    listed = DataOptions(mix=[{"name": "a", "proportion": 1}, {"proportion": 3, "filter": "x > 1"}])
    mapped = DataOptions(mix={"a": {"proportion": 1}, "source1": {"proportion": 3, "filter": "x > 1"}})
    assert listed.mix == mapped.mix and [s.name for s in listed.mix] == ["a", "source1"]
    assert DataOptions(mix={"a": {"proportion": 1}}, samples_per_epoch=10).samples_per_epoch == 10


@pytest.mark.parametrize("shuffle", ["mixture", "weighted"])
def test_the_next_epoch_s_order_is_made_ahead_and_is_the_one_made_on_demand(shuffle):
    import pickle

    kwargs = (
        {"mixture": MixturePlan((40, 25, 11), (0.5, 0.3, 0.2), samples=60)}
        if shuffle == "mixture"
        else {"weights": np.arange(76) % 4}
    )
    sampler = LanceBatchSampler(76, batch_size=4, shuffle=shuffle, seed=1, **kwargs)
    sampler.set_epoch(0)
    list(sampler)
    assert sampler._ahead is not None and sampler._ahead[0] == (1, 1, 4)  # epoch 1's, on a thread
    copy = pickle.loads(pickle.dumps(sampler))  # a thread does not pickle: the copy makes its own
    sampler.set_epoch(1)
    ahead = [b.tolist() for b in sampler]
    fresh = LanceBatchSampler(76, batch_size=4, shuffle=shuffle, seed=1, **kwargs)
    fresh.set_epoch(1)
    assert ahead == [b.tolist() for b in fresh] == [b.tolist() for b in (copy.set_epoch(1) or copy)]
    sampler.resume_at(epoch=3, consumed_rows=8)  # not the epoch made ahead (2): made on demand
    fresh.resume_at(epoch=3, consumed_rows=8)
    assert [b.tolist() for b in sampler] == [b.tolist() for b in fresh]


@pytest.mark.parametrize("samples", [None, 40])
def test_a_weighted_order_completed_ahead_reads_as_one_sorted_bucket_by_bucket(samples):
    from lance_lightning.orders import WeightedOrder

    weights = np.random.default_rng(3).random(5000)
    weights[::7] = 0
    lazy = WeightedOrder(weights, seed=2, epoch=4, samples=samples)
    ahead = WeightedOrder(weights, seed=2, epoch=4, samples=samples)
    ahead.complete()
    assert ahead.sorted.all()
    index = np.arange(lazy.num_rows)
    assert np.array_equal(ahead.positions(index), lazy.positions(index[::-1])[::-1])
