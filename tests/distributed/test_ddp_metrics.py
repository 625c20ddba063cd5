"""Evaluation under 2-process DDP: every row exactly once, and torchmetrics equal to 1 process.

``trainer.validate`` / ``trainer.test`` / ``trainer.predict`` run in 2 processes (Lightning's
own launcher, a standalone script), and the same validate/test in this process on 1 device.
The val split (33 rows, batch 8) leaves the ranks with 3 and 2 batches: no padding is allowed
(a padded row would be counted twice by MeanSquaredError's ``total``), and nothing may hang
when one rank runs out of batches first. Inputs and weights are small integers, so the
float32 sums are exact whatever order the ranks' partial sums are added in: the DDP values
must equal the single-process values exactly, not approximately.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.distributed._ddp import (
    DATA,
    SCRIPT,
    TABLE,
    Expected,
    check_stage,
    launch_lightning,
    load_records,
    make_table,
    write_spec,
)

pytestmark = pytest.mark.distributed

RUNS = [
    {"tag": "validate", "action": "validate", "devices": 2},
    {"tag": "test", "action": "test", "devices": 2},
    {"tag": "predict", "action": "predict", "devices": 2},
]


def load_script():
    spec = importlib.util.spec_from_file_location("ddp_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp-eval")
    uri = make_table(root)
    spec = write_spec(root, uri, RUNS, "eval")
    launch_lightning(spec)
    # The single-process reference, in this process (1 device: no DDP, no launcher).
    script = load_script()
    single = {"uri": uri, "table": TABLE, "out": str(root), "data": DATA}
    reference = {
        run["tag"]: script.run_one(single, {**run, "tag": f"single-{run['tag']}", "devices": 1}) for run in RUNS
    }
    return uri, spec, reference, Expected(uri, DATA)


@pytest.mark.parametrize(("tag", "stage", "key"), [("validate", "val", "val/0"), ("test", "test", "test")])
def test_metrics_equal_single_process_exactly(evaluation, tag, stage, key):
    _, spec, reference, expected = evaluation
    records = load_records(spec, tag, 2)
    batches = check_stage(records, expected, stage, epochs=1)  # every row once, no padding
    single = reference[tag]
    assert single["world_size"] == 1
    check_stage([single], expected, stage, epochs=1)
    want = single["metrics"][key]
    assert want["id_sum"] == sum(expected.stage_ids(stage))
    for record in records:
        got = record["metrics"][key]
        assert got == want, f"rank {record['global_rank']}: {json.dumps(got)} != single process {json.dumps(want)}"
    if stage == "val":
        assert [len(b) for b in batches[0]] == [3, 2], "the uneven-batch-count case was not exercised"


def test_predict_covers_every_row_once(evaluation):
    _, spec, reference, expected = evaluation
    records = load_records(spec, "predict", 2)
    batches = check_stage(records, expected, "predict", epochs=1)
    got = sorted(i for rank in batches[0] for batch in rank for i in batch)
    assert got == sorted(expected.stage_ids("predict")) == list(range(203))
    single = reference["predict"]["seen"]["predict"]["0"]
    assert sorted(i for batch in single for i in batch) == got
