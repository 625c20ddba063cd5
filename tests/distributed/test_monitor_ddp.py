"""LoaderMonitor under real 2-process DDP: the logged wait share is the slower rank's.

``scripts/monitor_ddp.py`` fits on 2 CPU processes (gloo) where only rank 1's transform
sleeps. Rank 1 then waits for data most of each step; rank 0 waits for rank 1 in the gradient
all-reduce, which is compute, not data. The value in the CSV log must be rank 1's at every
logged step (the max over ranks), rows/s the min, and rank 0, whose own loader is fast, must
still give the warning (once), because it decides on the reduced value.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from tests.distributed._ddp import TABLE, clean_env, make_table, run_processes

pytestmark = pytest.mark.distributed

SCRIPT = Path(__file__).parent / "scripts" / "monitor_ddp.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor-ddp")
    uri = make_table(root)
    out = root / "out"
    out.mkdir()
    run_processes([([sys.executable, str(SCRIPT), uri, TABLE, str(out)], clean_env())], root, "monitor")
    records = [json.loads((out / f"monitor-rank{r}.json").read_text()) for r in range(2)]
    with (out / "csv" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return records, rows


def logged(rows, key):
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]


def windows(record, stage):
    return [h for h in record["history"] if h["stage"] == stage]


def test_the_logged_wait_share_is_the_slower_ranks(run):
    records, rows = run
    assert [r["rank"] for r in records] == [0, 1] and {r["world_size"] for r in records} == {2}
    fast, slow = (windows(r, "train") for r in records)
    assert len(fast) == len(slow) == 5  # 151 rows / (2 x 8) -> 10 steps, logged every 2
    assert all(s["wait_fraction"] >= 0.5 > f["wait_fraction"] for f, s in zip(fast, slow)), (fast, slow)
    waits = logged(rows, "data/wait_fraction")
    assert len(waits) == 5
    for (_, value), f, s in zip(waits, fast, slow):
        assert value == pytest.approx(max(f["wait_fraction"], s["wait_fraction"]), rel=1e-6)
        assert value == pytest.approx(s["wait_fraction"], rel=1e-6)
        # every rank got the reduced value back from Lightning's logging
        assert f["logged_wait_fraction"] == s["logged_wait_fraction"] == pytest.approx(value, rel=1e-6)
    for (_, value), f, s in zip(logged(rows, "data/rows_per_s"), fast, slow):
        assert value == pytest.approx(min(f["rows_per_s"], s["rows_per_s"]), rel=1e-6)


def test_validation_is_reduced_the_same_way(run):
    records, rows = run
    (fast,), (slow,) = (windows(r, "val") for r in records)  # 33 rows: 3 and 2 batches
    ((_, value),) = logged(rows, "data/val_wait_fraction")
    assert value == pytest.approx(max(fast["wait_fraction"], slow["wait_fraction"]), rel=1e-6)
    assert slow["wait_fraction"] > fast["wait_fraction"]


def test_rank_0_warns_once_on_the_reduced_value(run):
    records, _ = run
    zero, one = records
    assert len(zero["warnings_emitted"]) == 1 and one["warnings_emitted"] == []
    assert zero["warning"] == one["warning"] == zero["warnings_emitted"][0]
    # rank 0's own transform is instant: the share in its warning is rank 1's, reduced like the wait
    assert "(the slowest of 2 ranks; warning threshold 50%)" in zero["warning"]
    share = int(zero["warning"].split("slow_on_rank_1 takes ")[1].split("%")[0])
    assert share >= 90 and "(the largest share among the ranks): make it cheaper" in zero["warning"]


def test_the_transform_share_is_logged_as_the_largest(run):
    records, rows = run
    fast, slow = (windows(r, "train") for r in records)
    shares = logged(rows, "data/transform_fraction")
    assert len(shares) == 5
    for (_, value), f, s in zip(shares, fast, slow):
        assert f["transform_fraction"] < 0.5 <= s["transform_fraction"]
        assert value == pytest.approx(s["transform_fraction"], rel=1e-6)
