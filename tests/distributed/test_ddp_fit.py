"""Real multi-process training: 2-process DDP (Lightning's launcher), 2 nodes x 2 (torchrun), SLURM.

Each test launches ``scripts/ddp_run.py`` in fresh processes; every rank writes the ids of
every batch it read, per stage and epoch, and the tests check them against the rules in
``tests/sharding_invariants.py`` and against the batches predicted in this process from the
pure sharding functions for (rank, world size, seed, epoch).
"""

from __future__ import annotations

import pytest

from tests.distributed._ddp import (
    DATA,
    Expected,
    check_stage,
    launch_lightning,
    launch_slurm,
    launch_torchrun,
    load_records,
    make_table,
    write_spec,
)

pytestmark = pytest.mark.distributed

WORKERS = {"num_workers": 2}
FIT_RUNS = [
    {"tag": "sampler-flag-on-workers-0", "use_distributed_sampler": True},
    {"tag": "sampler-flag-off-workers-0", "use_distributed_sampler": False},
    {"tag": "sampler-flag-on-workers-2", "use_distributed_sampler": True, "data": WORKERS},
    {
        "tag": "drop-last-block-shuffle",
        "use_distributed_sampler": True,
        # windows of 3 batches: each worker reads a window as one group, the loader hands out batches
        "data": {"drop_last": True, "shuffle": "block", "block_size": 4, "window_blocks": 6, **WORKERS},
    },
    # weights y = id % 3: a third of the rows weigh 0 and are never read
    {"tag": "weighted-workers-2", "use_distributed_sampler": True, "data": {"weight_column": "y", **WORKERS}},
]
for _run in FIT_RUNS:
    _run.update(action="fit", devices=2, epochs=2)

_expected: dict[str, Expected] = {}


def expected_for(uri: str, run: dict) -> Expected:
    data = {**DATA, **{k: v for k, v in run.get("data", {}).items() if k != "num_workers"}}
    key = repr(sorted(data.items()))
    if key not in _expected:
        _expected[key] = Expected(uri, data)
    return _expected[key]


def check_fit(records, expected: Expected) -> list:
    train = check_stage(records, expected, "train", epochs=2)
    val = check_stage(records, expected, "val", epochs=2)
    # Rule 4: a new order every epoch (the rank-by-rank batches differ).
    assert train[0] != train[1], "epoch 1 repeated epoch 0's order"
    # Rule 3: the uneven case was really exercised, and nothing hung.
    assert len({len(rank_batches) for rank_batches in val[0]}) > 1, "val batch counts happened to be equal"
    # torchmetrics gathered over all ranks: every rank reports the same, every val row counted once.
    for key in ("val/0", "val/1"):
        assert len({repr(r["metrics"][key]) for r in records}) == 1
        assert records[0]["metrics"][key]["id_sum"] == sum(expected.stage_ids("val"))
    return train


@pytest.fixture(scope="module")
def two_process_fit(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp2")
    uri = make_table(root)
    spec = write_spec(root, uri, FIT_RUNS, "fit")
    launch_lightning(spec)
    return uri, spec


@pytest.mark.parametrize("run", FIT_RUNS, ids=[r["tag"] for r in FIT_RUNS])
def test_two_process_fit(two_process_fit, run):
    uri, spec = two_process_fit
    records = load_records(spec, run["tag"], 2)
    assert {r["strategy"] for r in records} == {"DDPStrategy"}
    assert {r["cluster_environment"] for r in records} == {"LightningEnvironment"}
    check_fit(records, expected_for(uri, run))


def test_weighted_ranks_read_disjoint_rows_of_weight_above_zero(two_process_fit):
    """Equal batch counts, no row twice in an epoch, none of weight 0: checked by check_fit's rules
    against the rows of weight > 0; here what the weights add: the epoch is those rows, not the split."""
    uri, spec = two_process_fit
    records = load_records(spec, "weighted-workers-2", 2)
    run = next(r for r in FIT_RUNS if r["tag"] == "weighted-workers-2")
    positive = expected_for(uri, run).stage_ids("train")
    assert 0 < len(positive) < 151
    for epoch in ("0", "1"):
        batches = [r["seen"]["train"][epoch] for r in records]
        assert len(batches[0]) == len(batches[1])
        ids = [i for rank in batches for batch in rank for i in batch]
        assert set(ids) == set(positive) and all(i % 3 for i in ids)  # the train rows with y != 0
        assert len(ids) - len(positive) < 2  # at most world_size - 1 padded rows read twice


def test_order_depends_on_seed_and_epoch_only(two_process_fit):
    """Same (seed, epoch): the same batches on every rank, whatever num_workers or the sampler flag."""
    _, spec = two_process_fit
    same_data = [r["tag"] for r in FIT_RUNS if set(r.get("data", {})) <= {"num_workers"}]
    assert len(same_data) == 3
    seen = {tag: [rec["seen"]["train"] for rec in load_records(spec, tag, 2)] for tag in same_data}
    first = seen[same_data[0]]
    for tag in same_data[1:]:
        assert seen[tag] == first, f"{tag} read a different order than {same_data[0]}"


@pytest.fixture(scope="module")
def two_nodes_torchrun(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    uri = make_table(root)
    topology = {"devices": 2, "num_nodes": 2}
    runs = [
        {"tag": "fit", "action": "fit", "epochs": 2, **topology},
        {"tag": "validate", "action": "validate", **topology},
        {"tag": "predict", "action": "predict", **topology},
    ]
    spec = write_spec(root, uri, runs, "torchrun")
    launch_torchrun(spec, nnodes=2, nproc_per_node=2)
    return uri, spec


def check_topology(records, environment: str) -> None:
    for rank, record in enumerate(records):
        assert record["cluster_environment"] == environment
        assert (record["node_rank"], record["local_rank"]) == divmod(rank, 2)


@pytest.mark.long
def test_two_nodes_torchrun_fit(two_nodes_torchrun):
    uri, spec = two_nodes_torchrun
    records = load_records(spec, "fit", 4)
    check_topology(records, "TorchElasticEnvironment")
    check_fit(records, expected_for(uri, {}))


@pytest.mark.long
def test_two_nodes_torchrun_validate_and_predict(two_nodes_torchrun):
    uri, spec = two_nodes_torchrun
    expected = expected_for(uri, {})
    validate = load_records(spec, "validate", 4)
    check_topology(validate, "TorchElasticEnvironment")
    val = check_stage(validate, expected, "val", epochs=1)
    assert len({len(b) for b in val[0]}) > 1
    assert validate[0]["metrics"]["val/0"]["id_sum"] == sum(expected.stage_ids("val"))
    predict = load_records(spec, "predict", 4)
    check_stage(predict, expected, "predict", epochs=1)


@pytest.mark.long
def test_two_nodes_slurm_fit(tmp_path):
    """The variables srun sets for 2 nodes x 2 tasks: Lightning's SLURMEnvironment gives the topology."""
    uri = make_table(tmp_path)
    run = {"tag": "fit", "action": "fit", "epochs": 2, "devices": 2, "num_nodes": 2}
    spec = write_spec(tmp_path, uri, [run], "slurm")
    launch_slurm(spec, nnodes=2, ntasks_per_node=2)
    records = load_records(spec, "fit", 4)
    check_topology(records, "SLURMEnvironment")
    check_fit(records, expected_for(uri, {}))
