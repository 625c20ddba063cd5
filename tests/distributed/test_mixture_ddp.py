"""A mixture under real 2-process DDP (CPU, gloo, 2 workers a rank): every rank the same number of
batches, disjoint rows at every step, each epoch's exact count a source, the same global sequence
as one process (mixed layout) and each global step's shares within one row (stratified)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from tests.distributed._ddp import clean_env, run_processes

pytestmark = [pytest.mark.distributed, pytest.mark.long]
SCRIPT = Path(__file__).with_name("scripts") / "mixture_ddp.py"
ROWS = 203
# even: 102 rows, one pass an epoch; low_odd: 60 rows, 41 an epoch; more: 90 rows, 61 an epoch
COUNTS = [102, 41, 61]


def tables(root: Path) -> str:
    uri = str(root / "db")
    db = lancedb.connect(uri)
    for name, ids in [("rows", np.arange(ROWS)), ("more", np.arange(1000, 1090))]:
        x = np.random.default_rng(0).standard_normal((len(ids), 4)).astype(np.float32)
        data = pa.table({"id": ids.astype(np.int64), "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4)})
        db.create_table(name, data)
    return uri


def launch(root: Path, uri: str, runs: list[tuple[str, int, int, str]]) -> dict[str, list[dict]]:
    commands = []
    for name, devices, batch_size, batching in runs:
        out = root / name
        out.mkdir()
        cmd = [sys.executable, str(SCRIPT), uri, str(out), str(devices), str(batch_size), batching]
        commands.append((cmd, clean_env()))
    run_processes(commands, root, "mixture")
    return {
        name: [json.loads((root / name / f"rank{r}.json").read_text()) for r in range(devices)]
        for name, devices, _, _ in runs
    }


def source_of(ids: np.ndarray) -> np.ndarray:
    return np.where(ids >= 1000, 2, np.where(ids % 2 == 0, 0, 1))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict]]:
    """One launch for every cell (two 2-rank runs and a 1-process one at once: one start-up cost)."""
    root = tmp_path_factory.mktemp("mixture_ddp")
    uri = tables(root)
    return launch(root, uri, [("mixed", 2, 8, "mixed"), ("alone", 1, 16, "mixed"), ("stratified", 2, 8, "stratified")])


@pytest.mark.parametrize("batching", ["mixed", "stratified"])
def test_two_ranks_read_a_mixture_in_step_disjoint_and_exact(runs, batching):
    ranks, (single,) = runs[batching], runs["alone"]
    assert [(r["global_rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    steps = [r["steps"] for r in ranks]
    assert len(steps[0]) == len(steps[1])  # the same number of batches: no rank waits for another
    both_epochs = []
    for epoch in (0, 1):
        pairs = [(a, b) for a, b in zip(*steps) if a["epoch"] == epoch]
        read = [i for a, b in pairs for i in a["ids"] + b["ids"]]
        both_epochs += read
        assert len(read) == sum(COUNTS)  # 204 rows over 2 ranks: none padded
        for a, b in pairs:
            assert np.array_equal(source_of(np.asarray(a["ids"])), a["sources"])
            if epoch == 0:  # disjoint at every step: no source has come to the end of its first pass yet
                assert not set(a["ids"]) & set(b["ids"])
        assert np.bincount(source_of(np.asarray(read)), minlength=3).tolist() == COUNTS
        if epoch == 0:
            assert len(set(read)) == sum(COUNTS)  # every drawn row once
        if batching == "mixed":  # the mixed order does not depend on the world size: each global step
            # holds the rows of the one process's batch of that step (a batch is grouped by source within)
            alone = [s["ids"] for s in single["steps"] if s["epoch"] == epoch]
            assert [sorted(a["ids"] + b["ids"]) for a, b in pairs] == [sorted(ids) for ids in alone]
        else:  # every global step (both ranks' batches) holds each source's share within one row
            for a, b in pairs:
                step = source_of(np.asarray(a["ids"] + b["ids"]))
                quota = len(step) * np.asarray(COUNTS) / sum(COUNTS)
                assert np.all(np.abs(np.bincount(step, minlength=3) - quota) < 1)
    # epoch 1 goes on with each source's pass: low_odd (60 rows, 82 draws) and more (90, 122) give
    # every row once, then start a new pass; even (102, one pass an epoch) every row twice
    drawn = np.asarray(both_epochs)
    for rows, low, high in [(np.arange(0, ROWS, 2), 2, 2), (np.arange(1, 120, 2), 1, 2), (np.arange(1000, 1090), 1, 2)]:
        times = np.array([np.count_nonzero(drawn == r) for r in rows])
        assert times.min() == low and times.max() == high
