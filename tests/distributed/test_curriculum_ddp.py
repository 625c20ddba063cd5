"""RowValueWriter under real 2-process DDP (CPU, gloo): each epoch's values from both ranks land in
the table in one commit, each row once, and the next epoch reads the new weights."""

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
SCRIPT = Path(__file__).with_name("scripts") / "curriculum_ddp.py"
ROWS = 203  # odd: 12 global steps of 2 x 8 rows, then 11 rows (one padded)


def test_two_ranks_write_every_rows_value_once_an_epoch_in_one_commit(tmp_path):
    uri = str(tmp_path / "db")
    x = np.random.default_rng(0).standard_normal((ROWS, 4)).astype(np.float32)
    data = pa.table(
        {
            "id": np.arange(ROWS, dtype=np.int64),
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4),
            "w": np.ones(ROWS),
        }
    )
    table = lancedb.connect(uri).create_table("rows", data)
    start = table.version
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, str(SCRIPT), uri, str(out)]
    run_processes([(command, clean_env())], tmp_path, "curriculum")
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["global_rank"], r["world_size"]) for r in records] == [(0, 2), (1, 2)]
    for epoch in ("0", "1"):
        seen = [i for r in records for i in r["seen"][epoch]]
        assert sorted(set(seen)) == list(range(ROWS))  # both ranks together: every row
        assert len(seen) == 204  # the last step: 11 rows, one padded so that both ranks read 6
    assert records[0]["versions"] == [start + 1, start + 2]  # one commit an epoch, made by rank 0
    assert records[1]["versions"] == []
    table.checkout_latest()
    assert table.version == start + 2
    written = table.to_arrow()
    assert len(written) == ROWS  # merge_insert updated rows, inserted none
    values = dict(zip(written["id"].to_pylist(), written["w"].to_pylist()))
    assert values == {i: i + 1001.0 for i in range(ROWS)}  # epoch 1's value, once each
