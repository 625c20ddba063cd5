"""LancePredictionWriter under real 2-process DDP (CPU, gloo) over an odd row count.

Every row's value must be the model's output for that row, exactly once, whatever rank read
it; a run SIGKILLed mid-predict must leave the table as it was, and the next run must clean up
its staging files and write everything.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pytest
import torch

from lance_lightning.writer import KEY_ROWID, STAGING_DIRNAME
from lance_lightning.writer.fragments import lance_module
from tests.distributed._ddp import NUM_ROWS, TABLE, clean_env, make_table, run_processes, start_process
from tests.distributed.scripts.writer_ddp import outputs_for

pytestmark = pytest.mark.distributed
SCRIPT = Path(__file__).with_name("scripts") / "writer_ddp.py"
DATA = {"eval_batch_size": 8}  # 203 rows: 12 steps of 2 x 8, then 6 + 5 rows


def write_spec(root: Path, uri: str, runs: list[dict], name: str) -> Path:
    out = root / f"out-{name}"
    out.mkdir()
    path = root / f"spec-{name}.json"
    path.write_text(json.dumps({"uri": uri, "table": TABLE, "out": str(out), "data": DATA, "runs": runs}))
    return path


def command(spec: Path) -> tuple[list[str], dict[str, str]]:
    return [sys.executable, str(SCRIPT), str(spec)], clean_env()


def expected(table: pa.Table) -> dict[str, np.ndarray]:
    ids = torch.from_numpy(table["id"].to_numpy().copy())
    x = torch.from_numpy(np.stack(table["x"].to_numpy(zero_copy_only=False)).astype(np.float32))
    return {name: value.numpy() for name, value in outputs_for(ids, x).items()}


def values(table: pa.Table, name: str) -> np.ndarray:
    column = table[name].combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        return column.flatten().to_numpy().reshape(len(column), -1)
    return column.to_numpy()


def sigkill_when(spec: Path, root: Path, ready: Any, *, after_s: float = 0.0) -> None:
    """Run ``spec``'s DDP predict and SIGKILL its process group once ``ready()`` (+ ``after_s``)."""
    cmd, env = command(spec)
    proc = start_process(cmd, env, root / "slow.log")
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.1)
        time.sleep(after_s)
        assert proc.poll() is None, (root / "slow.log").read_text()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_every_row_written_once_by_two_ranks(tmp_path):
    """Three fragments (67 + 68 + 68 rows): batches of 8 dealt to the two ranks straddle them, and
    with pylance each rank writes the new data files of its share of the fragments."""
    uri = make_table(tmp_path, fragments=3)
    runs = [
        {"tag": "scalar", "writer": {"column": "score"}, "output": "score"},
        {"tag": "vector", "writer": {"column": "emb"}, "output": "emb"},
        {"tag": "dict", "writer": {"column": "d"}},
        {"tag": "table", "writer": {"column": "klass", "table": "preds"}, "output": "klass"},
        # each rank given a staging directory of its own (nodes without a shared file system): refused
        {"tag": "private", "writer": {"column": "p"}, "output": "score", "private_staging": True},
        # last: rank 0 appends a row at its third batch; every rank has written its data files
        # when rank 0 finds the table moved at the commit
        {"tag": "moved", "writer": {"column": "late"}, "output": "score", "move_at": 2},
    ]
    spec = write_spec(tmp_path, uri, runs, "all")
    run_processes([command(spec)], tmp_path, "all")
    out = Path(json.loads(spec.read_text())["out"])
    records = {
        run["tag"]: [json.loads((out / f"{run['tag']}-rank{r}.json").read_text()) for r in (0, 1)] for run in runs
    }

    for rank0, rank1 in [records.pop("private")]:  # refused on both ranks before any batch
        assert rank0["seen"] == rank1["seen"] == [] and rank0["result"] is None is rank1["result"]
        assert "staging directory" in rank0["error"] and "not there on every rank (rank 0: there)" in rank0["error"]
        assert "not there on every rank (rank 1: missing)" in rank1["error"] and "staging_dir" in rank1["error"]
        assert not (out / "staging-0").exists()  # rank 0 removed the directory it had made
    for tag, (rank0, rank1) in records.items():
        # each rank predicted its own rows, none twice, none padded: 102 + 101 = 203
        seen = [[i for batch in record["seen"] for i in batch] for record in (rank0, rank1)]
        assert sorted(seen[0] + seen[1]) == list(range(NUM_ROWS)), tag
        assert sorted(len(s) for s in seen) == [101, 102], tag
        if tag == "moved":
            for record in (rank0, rank1):
                assert record["result"] is None
                assert "changed while predicting" in record["error"] and "nothing was written" in record["error"]
            continue
        assert rank0["error"] is None and rank1["error"] is None, tag
        assert rank0["result"] == rank1["result"] and rank0["result"]["rows"] == NUM_ROWS, tag
        if lance_module() is not None and tag != "table":  # each rank wrote its share of the data files
            assert rank0["result"]["files_by_rank"] == [2, 1], tag  # fragments 0-1 and 2

    db = lancedb.connect(uri)
    table = db.open_table(TABLE)
    assert table.version == 7  # 3 made the table; one commit for each of the three column runs, then the row appended
    assert "late" not in table.schema.names and table.count_rows() == NUM_ROWS + 1
    if lance_module() is not None:  # the moved run's data files are gone: only files a version refers to are left
        referenced = set()
        for version in range(1, 8):
            dataset = lance_module().dataset(uri + f"/{TABLE}.lance", version=version)
            referenced |= {f.path for fragment in dataset.get_fragments() for f in fragment.metadata.files}
        assert {p.name for p in (Path(uri) / f"{TABLE}.lance" / "data").iterdir()} == referenced
    table.checkout(6)
    got = table.to_arrow()
    assert got.num_rows == NUM_ROWS and got.column_names == [
        "id",
        "x",
        "y",
        "score",
        "emb",
        *(f"d_{k}" for k in ("score", "emb", "klass")),
    ]
    want = expected(got)
    for name in ("score", "emb"):
        assert np.array_equal(values(got, name), want[name]), name
        assert np.array_equal(values(got, f"d_{name}"), want[name]), name
    assert np.array_equal(values(got, "d_klass"), want["klass"])

    preds = lancedb.connect(uri).open_table("preds").to_arrow().sort_by("id")
    assert preds.column_names == [KEY_ROWID, "id", "klass"]
    assert np.array_equal(preds["id"].to_numpy(), np.arange(NUM_ROWS))
    assert np.array_equal(preds["klass"].to_numpy(), want["klass"])
    assert len(np.unique(preds[KEY_ROWID].to_numpy())) == NUM_ROWS
    assert not (Path(uri) / STAGING_DIRNAME).exists()


@pytest.mark.long
def test_sigkill_mid_predict_leaves_the_tables_then_a_rerun_writes_them(tmp_path):
    """A 2-rank run SIGKILLed while adding a column, another while writing a new table (both ranks
    stream its rows into its data files during the loop): each leaves the table read as it was and
    no new table; one rerun of both cleans up what they left and writes every row once."""
    uri = make_table(tmp_path)
    column_staging = Path(uri) / STAGING_DIRNAME / f"{TABLE}.columns-score"
    table_staging = Path(uri) / STAGING_DIRNAME / "new-table-preds"
    dataset = Path(uri) / "preds.lance"
    column_run = {"writer": {"column": "score"}, "output": "score"}
    table_run = {"writer": {"column": "klass", "table": "preds"}, "output": "klass"}

    def both_ranks_wrote() -> bool:
        partial = list(column_staging.glob("rank-*.arrow.partial")) if column_staging.exists() else []
        return len(partial) == 2 and all(p.stat().st_size > 2000 for p in partial)  # some batches each

    sigkill_when(
        write_spec(tmp_path, uri, [{**column_run, "tag": "slow", "slow": 0.3}], "slow"), tmp_path, both_ranks_wrote
    )
    table = lancedb.connect(uri).open_table(TABLE)
    assert table.version == 1 and table.schema.names == ["id", "x", "y"] and table.count_rows() == NUM_ROWS
    staged = sorted(p.name for p in column_staging.iterdir())
    assert staged == ["rank-00000.arrow.partial", "rank-00001.arrow.partial", "rank-00001.lock"]  # rank 0: beside it
    assert column_staging.with_name(column_staging.name + ".lock").exists()

    lance = lance_module()
    if lance is not None:  # without pylance the ranks stage a new table's rows and write it after the loop
        # both ranks are writing the new table's data files: a few batches each are on their way
        sigkill_when(
            write_spec(tmp_path, uri, [{**table_run, "tag": "slow", "slow": 0.3}], "slow-table"),
            tmp_path,
            lambda: dataset.exists() and (table_staging / "creating.json").exists(),
            after_s=1.5,
        )
        db = lancedb.connect(uri)
        assert db.open_table(TABLE).version == 1  # the table read is untouched
        with pytest.raises(Exception):  # noqa: B017 - no version of preds was committed: it does not open
            db.open_table("preds")

    rerun = write_spec(tmp_path, uri, [{**column_run, "tag": "rerun"}, {**table_run, "tag": "rerun-table"}], "rerun")
    run_processes([command(rerun)], tmp_path, "rerun")
    table = lancedb.connect(uri).open_table(TABLE)
    source = table.to_arrow()
    assert table.version == 2 and np.array_equal(values(source, "score"), expected(source)["score"])
    assert not column_staging.exists()

    preds = lancedb.connect(uri).open_table("preds")
    assert preds.version == 1
    got = preds.to_arrow().sort_by("id")
    assert np.array_equal(got["id"].to_numpy(), np.arange(NUM_ROWS))
    assert np.array_equal(got["klass"].to_numpy(), expected(source)["klass"])
    if lance is not None:
        referenced = {
            f.path for fragment in lance.dataset(str(dataset)).get_fragments() for f in fragment.metadata.files
        }
        assert {p.name for p in (dataset / "data").iterdir()} == referenced  # nothing the killed run wrote is left
    assert not table_staging.exists()
