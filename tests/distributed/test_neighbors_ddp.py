"""Neighbours under real 2-process DDP (CPU, gloo): both ranks read the same lists, mined once on
the node, and every row comes with its brute-force neighbours."""

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
SCRIPT = Path(__file__).with_name("scripts") / "neighbors_ddp.py"
ROWS = 203


def test_two_ranks_read_one_mining_and_the_exact_neighbours(tmp_path):
    uri = str(tmp_path / "db")
    x = np.random.default_rng(0).standard_normal((ROWS, 4)).astype(np.float32)
    y = np.arange(ROWS) % 3
    data = pa.table(
        {
            "id": np.arange(ROWS, dtype=np.int64),
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4),
            "y": y.astype(np.int64),
        }
    )
    lancedb.connect(uri).create_table("rows", data)
    out = tmp_path / "out"
    out.mkdir()
    run_processes([([sys.executable, str(SCRIPT), uri, str(out)], clean_env())], tmp_path, "nbr")
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert records[0]["lists"] == records[1]["lists"]  # one mining, read by both ranks
    assert [p.name for p in (out / "stages").iterdir() if "-nbr-" in p.name] == [Path(records[0]["lists"]).name]
    d = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    d[y[:, None] == y[None, :]] = np.inf
    expected = np.argsort(d, axis=1, kind="stable")[:, :3]
    seen = [(i, n) for r in records for i, n in r["seen"]]
    assert {i for i, _ in seen} == set(range(ROWS))
    for row, found in seen:
        assert found == expected[row].tolist()
