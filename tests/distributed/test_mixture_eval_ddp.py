"""``eval_by_source`` under real 2-process DDP (CPU, gloo): each source's validation loader gives
every rank the same number of batches (a per-step collective in ``validation_step`` does not hang,
also where a source's last step has fewer rows than ranks), disjoint rows covering the source's
rows once, each batch with its source, and per-source metrics (``sync_dist``) equal to a hand
computation over the source's rows."""

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
SCRIPT = Path(__file__).with_name("scripts") / "mixture_eval_ddp.py"


def table(ids: np.ndarray, seed: int) -> pa.Table:
    x = np.random.default_rng(seed).standard_normal((len(ids), 4)).astype(np.float32)
    return pa.table({"id": ids.astype(np.int64), "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4)})


def test_two_ranks_validate_each_source_in_step_on_its_own_rows(tmp_path):
    uri = str(tmp_path / "db")
    db = lancedb.connect(uri)
    data = {"rows": table(np.arange(203), 0), "more": table(np.arange(1000, 1090), 1)}
    # 9 rows at 4 a batch on 2 ranks: one whole step and 1 row; the plain cut would give rank 1 a batch fewer
    data["more_val"] = table(np.arange(2000, 2009), 2)
    for name, rows in data.items():
        db.create_table(name, rows)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, str(SCRIPT), uri, str(out)]
    run_processes([(cmd, clean_env())], tmp_path, "mixture_eval")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["global_rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]

    val_ids = np.arange(160, 203)
    expected = {"even": val_ids[val_ids % 2 == 0], "odd": val_ids[val_ids % 2 == 1], "more": np.arange(2000, 2009)}
    x_of = {
        int(i): float(x[0])
        for t in data.values()
        for i, x in zip(t["id"].to_pylist(), t["x"].combine_chunks().flatten().to_numpy().reshape(-1, 4))
    }
    for index, (name, rows) in enumerate(expected.items()):
        batches = [[b for b in r["read"] if b["loader"] == index] for r in ranks]
        assert len(batches[0]) == len(batches[1]) > 0  # the same number of batches on both ranks
        per_rank = [[i for b in rank for i in b["ids"]] for rank in batches]
        assert not set(per_rank[0]) & set(per_rank[1])  # disjoint
        assert sorted(per_rank[0] + per_rank[1]) == rows.tolist()  # the source's rows, each once
        assert all(b["sources"] == [index] * len(b["ids"]) for rank in batches for b in rank)
        metrics = ranks[0]["metrics"]
        assert metrics[f"val/{name}/rows"] == len(rows)
        assert metrics[f"val/{name}/x0_sum"] == pytest.approx(sum(x_of[int(i)] for i in rows), rel=1e-5, abs=1e-5)
