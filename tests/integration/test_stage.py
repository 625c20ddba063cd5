"""The staging layer on real on-disk tables: staged rows are the table's rows, one fill per node,
eviction never removes a stage in use, one copy in memory for all processes (PSS)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest
import torch

from lance_lightning.app.stages import main as stages_main
from lance_lightning.convert import UnsupportedColumnError, batch_to_tensors
from lance_lightning.reads import scan_with_row_ids
from lance_lightning.source import TableChangedError, TableSource
from lance_lightning.stage import (
    StageBudgetError,
    StagedRows,
    ensure_stage,
    estimate_stage_bytes,
    fits,
    lease,
    release_stage,
    stage_key,
)
from lance_lightning.stage.catalog import clear_stages, list_stages
from tests.conftest import toy_table

N = 600


def every_type(n: int, seed: int = 0) -> pa.Table:
    """One column of each kind the staging layer stores differently; some with nulls."""
    rng = np.random.default_rng(seed)
    some_null = [i % 7 == 3 for i in range(n)]

    def nullable(values, type_):
        return pa.array(values, type_, mask=np.array(some_null))

    nested = pa.FixedSizeListArray.from_arrays(
        pa.FixedSizeListArray.from_arrays(pa.array(rng.integers(-9, 9, n * 6, dtype=np.int32)), 2), 3
    )
    return pa.table(
        {
            "id": np.arange(n, dtype=np.int64),
            "i8": rng.integers(-100, 100, n, dtype=np.int8),
            "u16": rng.integers(0, 60000, n, dtype=np.uint16),
            "u64": rng.integers(0, 2**63, n, dtype=np.uint64),
            "f16": rng.standard_normal(n).astype(np.float16),
            "f64": nullable(rng.standard_normal(n), pa.float64()),
            "flag": nullable(rng.integers(0, 2, n).astype(bool), pa.bool_()),
            "label": nullable(np.arange(n) % 10, pa.int64()),
            "x": pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(n * 4).astype(np.float32)), 4),
            "nested": nested,
            "img": pa.FixedShapeTensorArray.from_numpy_ndarray(rng.random((n, 2, 3)).astype(np.float32)),
            "name": nullable([f"row-{i}" * (i % 4) for i in range(n)], pa.string()),
            "blob": pa.array([rng.bytes(i % 9) for i in range(n)], pa.binary()),
            "seq": pa.array([list(range(i % 5)) for i in range(n)], pa.list_(pa.int32())),
            "pair": pa.array(
                [{"a": i, "b": f"b{i}"} for i in range(n)], pa.struct([("a", pa.int32()), ("b", pa.string())])
            ),
            "ts": pa.array(np.arange(n) * 1_000_000, pa.timestamp("us")),
        }
    )


def open_source(uri: str, name: str) -> tuple[TableSource, lancedb.table.Table]:
    table = lancedb.connect(uri).open_table(name)
    return TableSource(uri, name, table.version).stamped(table), table


def table_rows(table, columns: list[str]) -> tuple[np.ndarray, pa.Table]:
    """Row addresses and rows of the table as Lance reads them, in address order."""
    scanned = scan_with_row_ids(table, columns)
    ids = scanned.column("_rowid").to_numpy()
    order = np.argsort(ids)
    return ids[order], scanned.select(columns).take(pa.array(order))


def assert_same_tensors(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            assert torch.equal(got[key], value), key
        elif isinstance(value, dict):
            assert_same_tensors(got[key], value)
        elif value and isinstance(value[0], torch.Tensor):
            assert len(got[key]) == len(value) and all(torch.equal(a, b) for a, b in zip(got[key], value)), key
        else:
            assert got[key] == value, key


@pytest.fixture
def every_type_table(tmp_path):
    uri = str(tmp_path / "db")
    lancedb.connect(uri).create_table("types", every_type(N))
    return open_source(uri, "types")


@pytest.mark.parametrize("layout", ["flat", "arrow"])
@pytest.mark.parametrize("scan", ["pylance", "lancedb"])
def test_staged_rows_equal_table_rows_for_every_column_type(every_type_table, tmp_path, layout, scan, monkeypatch):
    """Either scan fills the stage (pylance's where it is installed, lancedb's query otherwise)."""
    import lance_lightning.stage.fill as fill

    if scan == "pylance":
        pytest.importorskip("lance")
    monkeypatch.setattr(fill, "SCAN_WITH_PYLANCE", scan == "pylance")
    source, table = every_type_table
    columns = table.schema.names
    ids, rows = table_rows(table, columns)
    keep = np.random.default_rng(1).random(len(ids)) < 0.6  # a split: 60% of the rows, scattered
    split = ids[keep]
    path = ensure_stage(
        source, table, split[::-1], columns, root=tmp_path / "stages", split_name="train", layout=layout
    )
    staged = StagedRows(path)
    want = rows.filter(pa.array(keep))  # row i of the stage = i-th smallest address of the split
    assert staged.num_rows == len(split) and staged.schema == want.schema
    assert staged.slice(0, len(split)).equals(want)
    positions = np.random.default_rng(2).integers(0, len(split), 257)  # any order, repeats
    positions[:3] = [5, 5, 0]
    taken = want.take(pa.array(positions))
    assert staged.take(positions).equals(taken)
    assert_same_tensors(staged.take_into_tensors(positions, nulls="mask"), batch_to_tensors(taken, nulls="mask"))
    no_nulls = [c for c in columns if want.column(c).null_count == 0]
    sub = StagedRows(ensure_stage(source, table, split, no_nulls, root=tmp_path / "stages", layout=layout))
    assert_same_tensors(sub.take_into_tensors(positions), batch_to_tensors(sub.take(positions)))
    assert sub.take(positions).equals(taken.select(no_nulls))
    flat = json.loads((path / "manifest.json").read_text())["flat"]
    if layout == "flat":  # fixed-width columns are flat arrays, the others in the Arrow file
        assert set(flat) == {"id", "i8", "u16", "u64", "f16", "f64", "flag", "label", "x", "nested", "img"}
    else:
        assert flat == {}


def test_a_split_in_the_last_fragments_scans_only_those(tmp_path):
    """A fill reads the fragments that hold the split's rows, not the whole table (a val split at
    the end of a large table), and stages exactly the split's rows."""
    pytest.importorskip("lance")
    from lance_lightning.reads import copy_scan, plan_copy_scan

    db = lancedb.connect(tmp_path / "db")
    table = db.create_table("t", pa.table({"id": np.arange(300), "x": np.arange(300) * 0.5}))
    for start in range(300, 1200, 300):  # 4 fragments of 300 rows
        table.add(pa.table({"id": np.arange(start, start + 300), "x": np.arange(start, start + 300) * 0.5}))
    table.delete("id = 1000")  # a deleted row inside the scanned fragment
    source = TableSource(str(tmp_path / "db"), "t", table.version).stamped(table)
    ids, rows = table_rows(table, ["id", "x"])
    keep = rows.column("id").to_numpy() >= 950  # 249 rows, all in fragment 3 (ids 900-1199)
    split = ids[keep]
    plan = plan_copy_scan(table, split)
    assert [f.fragment_id for f in plan.fragments] == [3] and plan.rows == 299
    scanned = sum(b.num_rows for b in copy_scan(table, ["id"], batch_rows=64, plan=plan))
    assert scanned == 299  # one fragment read, not 1,199 rows
    path = ensure_stage(source, table, split, ["id", "x"], root=tmp_path / "stages", split_name="val")
    assert StagedRows(path).slice(0, len(split)).equals(rows.filter(pa.array(keep)))
    spread = ids[::100]  # rows in every fragment: every fragment is scanned
    assert [f.fragment_id for f in plan_copy_scan(table, spread).fragments] == [0, 1, 2, 3]


def test_fixed_size_lists_with_null_rows_or_null_values_are_staged_exactly(tmp_path):
    n = 50
    values = pa.array(np.arange(n * 3, dtype=np.float32))
    null_rows = pa.FixedSizeListArray.from_arrays(values, 3, mask=pa.array(np.arange(n) % 5 == 0))
    inner = pa.FixedSizeListArray.from_arrays(pa.array([None if i % 11 == 0 else float(i) for i in range(n * 3)]), 3)
    uri = str(tmp_path / "db")
    lancedb.connect(uri).create_table("t", pa.table({"v": null_rows, "w": inner, "id": np.arange(n)}))
    source, table = open_source(uri, "t")
    ids, rows = table_rows(table, ["v", "w", "id"])
    path = ensure_stage(source, table, ids, ["v", "w", "id"], root=tmp_path / "stages")
    staged = StagedRows(path)
    positions = np.arange(n)[::-1]
    assert staged.take(positions).equals(rows.take(pa.array(positions)))
    assert set(json.loads((path / "manifest.json").read_text())["flat"]) == {"v", "id"}  # w: Arrow file


def test_take_flat_into_writes_the_values_take_into_tensors_gives_where_every_column_is_flat(
    every_type_table, tmp_path
):
    """The mixture reader's gather (each source's run written into the batch's arrays) gives the
    general gather's values, widened dtypes (uint16, uint64) and nested shapes included; a stage with
    a column it cannot write so (Arrow-stored, or with nulls) says so, and so does a mask asked for."""
    source, table = every_type_table
    ids, _ = table_rows(table, ["id"])
    flat = ["id", "i8", "u16", "u64", "f16", "x", "nested", "img"]
    staged = StagedRows(ensure_stage(source, table, ids, flat, root=tmp_path / "stages"))
    columns = staged.flat_columns()
    assert [name for name, _, _ in columns] == flat
    positions = np.random.default_rng(3).integers(0, N, 300)
    want = staged.take_into_tensors(positions, out_shared=False)
    outs = [np.full((len(positions), *shape), 7, dtype=dtype) for _, dtype, shape in columns]
    staged.take_flat_into(positions, outs)
    for (name, _, _), out in zip(columns, outs):
        assert torch.equal(torch.from_numpy(out), want[name]), name
    with pytest.raises(IndexError, match="positions must be in"):
        staged.take_flat_into(np.array([0, N]), [out[:2] for out in outs])
    assert staged.flat_columns(nulls="mask") is None  # take_into_tensors adds an `_valid` mask a column then
    with_nulls = StagedRows(ensure_stage(source, table, ids, ["id", "label"], root=tmp_path / "stages"))
    assert with_nulls.flat_columns() is None
    with_text = StagedRows(ensure_stage(source, table, ids, ["id", "blob"], root=tmp_path / "stages"))
    assert with_text.flat_columns() is None


def test_binary_and_string_columns_are_gathered_as_the_arrow_conversion_gives_them(tmp_path, monkeypatch):
    """Byte and text columns with no null are sliced straight out of the mapped file (issue 33):
    across the record batches of a stage, in any order, with repeats and none, the values, their
    types and the batch's keys are those of converting the Arrow take; a column with a null, or a
    mask asked for, reads the Arrow way and says so as before."""
    import lance_lightning.stage.fill as fill
    import lance_lightning.stage.write as write

    monkeypatch.setattr(fill, "fill_batch_rows", lambda row_bytes: 64)  # read 64 rows at a time,
    monkeypatch.setattr(write, "_ARROW_BATCH_BYTES", 1)  # each written as a record batch of its own
    n = 300
    rng = np.random.default_rng(4)
    blobs = [rng.bytes(i % 13) for i in range(n)]  # empty values too
    text = [f"\u00e9t\u00e9-{i}" * (i % 3) for i in range(n)]
    uri = str(tmp_path / "db")
    lancedb.connect(uri).create_table(
        "t",
        pa.table(
            {
                "id": np.arange(n),
                "blob": pa.array(blobs, pa.binary()),
                "big": pa.array(blobs, pa.large_binary()),
                "text": pa.array(text, pa.string()),
                "big_text": pa.array(text, pa.large_string()),
                "holes": pa.array([None if i % 50 == 7 else f"h{i}" for i in range(n)], pa.string()),
            }
        ),
    )
    source, table = open_source(uri, "t")
    columns = ["id", "blob", "big", "text", "big_text"]
    ids, rows = table_rows(table, columns + ["holes"])
    staged = StagedRows(ensure_stage(source, table, ids, columns + ["holes"], root=tmp_path / "stages"))
    staged._open()
    assert len(staged._batches) > 1 and set(staged._bytes) == {"blob", "big", "text", "big_text"}  # not "holes"
    for positions in (rng.integers(0, n, 500), np.array([299, 0, 64, 63, 64, 5]), np.array([], dtype=np.int64)):
        taken = rows.take(pa.array(positions, pa.int64()))
        got = staged.take_into_tensors(positions, columns=columns, out_shared=False)
        assert_same_tensors(got, batch_to_tensors(taken.select(columns)))
        assert got["blob"] == [blobs[i] for i in positions] and got["text"] == [text[i] for i in positions]
        masked = staged.take_into_tensors(positions, nulls="mask", out_shared=False)
        assert_same_tensors(masked, batch_to_tensors(taken, nulls="mask"))  # with a `_valid` mask a column
    with pytest.raises(UnsupportedColumnError, match="'holes' has 1 null value"):
        staged.take_into_tensors(np.array([1, 7, 2]))


def test_slice_is_zero_copy_and_shared_output_is_shared_memory(tmp_path, make_table):
    uri, _ = make_table("toy", 300, dim=8)
    source, table = open_source(uri, "toy")
    ids, _ = table_rows(table, ["id"])
    staged = StagedRows(ensure_stage(source, table, ids, ["id", "x"], root=tmp_path / "stages"))
    x = staged.slice(10, 20).column("x").chunk(0).values
    flat = staged._flat["x"][1]
    assert x.buffers()[1].address == flat[10:].ctypes.data  # a view of the mapped file
    batch = staged.take_into_tensors(np.array([3, 1, 2]), out_shared=True)
    assert batch["x"].is_shared() and batch["id"].tolist() == [3, 1, 2]
    assert not staged.take_into_tensors(np.array([3]), out_shared=False)["x"].is_shared()


def test_any_change_of_table_version_columns_filter_or_split_is_a_new_stage(tmp_path, make_table):
    uri, created = make_table("toy", 100)
    source, table = open_source(uri, "toy")
    ids, _ = table_rows(table, ["id"])
    key = stage_key(source, ["id", "x"], ids, filter=None)
    assert stage_key(source, ["id", "x"], ids[::-1].copy(), filter=None) == key  # order does not matter
    different = {
        stage_key(source, ["id"], ids, filter=None),
        stage_key(source, ["x", "id"], ids, filter=None),
        stage_key(source, ["id", "x"], ids, filter="y = 1"),
        stage_key(source, ["id", "x"], ids[:-1], filter=None),
    }
    assert key not in different and len(different) == 4
    created.add(toy_table(5))  # a new version
    source2, table2 = open_source(uri, "toy")
    assert source2.version == 2 and stage_key(source2, ["id", "x"], ids, filter=None) != key
    # dropped and recreated under the same name: version 1 again, other data
    db = lancedb.connect(uri)
    db.drop_table("toy")
    time.sleep(0.01)
    db.create_table("toy", toy_table(100, seed=5))
    source3, table3 = open_source(uri, "toy")
    assert source3.version == 1 and source3.version_time != source.version_time
    assert stage_key(source3, ["id", "x"], ids, filter=None) != key
    root = tmp_path / "stages"
    # the old source opens only the version it pinned: the recreated table's version 1 is refused, so no
    # stage under the old key ever holds the new rows
    with pytest.raises(TableChangedError, match="dropped and recreated"):
        ensure_stage(source, None, ids, ["id", "x"], root=root)
    assert not [p for p in root.iterdir() if p.is_dir()]  # the root holds its lock file only
    again = ensure_stage(source3, table3, ids, ["id", "x"], root=root)
    assert StagedRows(again).slice(0, 100).column("x").equals(toy_table(100, seed=5).column("x"))


@pytest.mark.slow
def test_a_pickled_reader_is_its_path_and_reads_the_same_rows_in_another_process(tmp_path, make_table):
    uri, _ = make_table("toy", 200)
    source, table = open_source(uri, "toy")
    ids, _ = table_rows(table, ["id"])
    staged = StagedRows(ensure_stage(source, table, ids, ["id", "x"], root=tmp_path / "stages"))
    staged.take([1])  # opened here: nothing of it travels
    blob = pickle.dumps(staged)
    assert len(blob) < 400
    code = "import pickle,sys; r=pickle.loads(sys.stdin.buffer.read()); print(r.take([7,3]).column('id').to_pylist())"
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=True, timeout=120)
    assert out.stdout.decode().strip() == "[7, 3]"


FILL = """
import logging, sys, json
import lancedb, numpy as np
from lance_lightning.source import TableChangedError, TableSource
from lance_lightning.stage import ensure_stage, StagedRows
fills = []
class Count(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("staged "):
            fills.append(1)
log = logging.getLogger("lance_lightning.stage"); log.setLevel(logging.INFO); log.addHandler(Count())
uri, root = sys.argv[1], sys.argv[2]
t = lancedb.connect(uri).open_table("toy")
s = TableSource(uri, "toy", t.version).stamped(t)
ids = t.search().select(["_rowid"]).limit(None).to_arrow()["_rowid"].to_numpy()
print("ready", flush=True)
sys.stdin.readline()  # start on cue
path = ensure_stage(s, t, ids, ["id", "x"], root=root, split_name="train")
rows = StagedRows(path).take(np.arange(len(ids)))
x = rows.column("x").combine_chunks().flatten().to_numpy()
same_ids = bool((rows.column("id").to_numpy() == np.arange(len(ids))).all())
print(json.dumps({"path": str(path), "fills": len(fills), "ids": same_ids, "x_sum": float(x.astype(np.float64).sum())}))
"""


def start_fill(uri: str, root: Path) -> subprocess.Popen:
    """A process that stages the whole table under ``root`` once it reads a line ("ready" first)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FILL, uri, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def x_sum(table) -> float:
    return float(table.to_arrow()["x"].combine_chunks().flatten().to_numpy().astype(np.float64).sum())


@pytest.mark.slow
def test_processes_racing_for_one_stage_fill_it_once(tmp_path, make_table):
    uri, table = make_table("toy", 20_000, dim=32)
    root = tmp_path / "stages"
    procs = [start_fill(uri, root) for _ in range(2)]  # both have imported and opened the table
    outs = [p.communicate("go\n", timeout=180)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    results = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    assert sum(r["fills"] for r in results) == 1
    assert len({r["path"] for r in results}) == 1
    assert all(r["ids"] and r["x_sum"] == x_sum(table) for r in results)
    assert [p.name for p in root.iterdir() if p.name.startswith(".tmp")] == []


def test_a_filler_killed_mid_fill_leaves_the_stage_to_the_next_process_whole(tmp_path, make_table):
    """SIGKILL the process filling a stage while another waits for the node lock: the lock dies
    with it, and the next process removes the half-made copy and fills the stage itself, exactly."""
    uri, table = make_table("toy", 400_000, dim=128)
    root = tmp_path / "stages"
    filler, waiter = start_fill(uri, root), start_fill(uri, root)
    try:

        def copied() -> int:
            return sum(f.stat().st_size for d in root.glob(".tmp-*") for f in d.iterdir() if f.is_file())

        filler.stdin.write("go\n")
        filler.stdin.flush()
        deadline = time.monotonic() + 120
        while copied() == 0 and time.monotonic() < deadline and filler.poll() is None:
            time.sleep(0.005)
        waiter.stdin.write("go\n")  # it now waits for the lock the filler holds
        waiter.stdin.flush()
        while copied() < 40e6 and time.monotonic() < deadline and filler.poll() is None:
            time.sleep(0.005)
        assert filler.poll() is None, "the fill ended before it could be killed: make the table larger"
        filler.kill()
        filler.wait()
        out, _ = waiter.communicate(timeout=180)
    finally:
        for proc in (filler, waiter):
            if proc.poll() is None:
                proc.kill()
    assert waiter.returncode == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert (result["fills"], result["ids"], result["x_sum"]) == (1, True, x_sum(table))
    assert [p.name for p in root.iterdir() if p.name.startswith(".tmp")] == []


HOLD = """
import sys, time
from lance_lightning.stage import StagedRows
r = StagedRows(sys.argv[1], prefault=sys.argv[2] == "1")
r.take([0])
print("ready", flush=True)
sys.stdin.readline()
"""


def hold(path: Path, prefault: bool = False) -> subprocess.Popen:
    """A real process reading the stage (holding its lease) until its stdin is closed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), "1" if prefault else "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.communicate("\n", timeout=60)


@pytest.mark.slow
def test_eviction_removes_the_least_recently_used_stage_but_never_one_in_use(tmp_path, make_table):
    uri, _ = make_table("toy", 3000, dim=64)  # ~0.8 MB a stage of id + x
    source, table = open_source(uri, "toy")
    ids, _ = table_rows(table, ["id"])
    root = tmp_path / "stages"
    splits = [ids[:1000], ids[1000:2000], ids[2000:]]
    size = estimate_stage_bytes(table, ["id", "x"], 1000)
    budget = int(2.5 * size)
    a, b = (ensure_stage(source, table, s, ["id", "x"], root=root, budget_bytes=budget) for s in splits[:2])
    release_stage(a), release_stage(b)
    with lease(b):  # b used after a: a is the least recently used
        pass
    holder = hold(a)  # ... but a running job holds a
    try:
        c = ensure_stage(source, table, splits[2], ["id", "x"], root=root, budget_bytes=budget)
        assert a.exists() and not b.exists() and c.exists()
    finally:
        release(holder)
    b = ensure_stage(
        source, table, splits[1], ["id", "x"], root=root, budget_bytes=budget
    )  # now a goes (LRU); c is this process's
    assert not a.exists() and b.exists() and c.exists()
    # everything in use and no room: StageBudgetError naming split, sizes, budget and the setting
    with pytest.raises(StageBudgetError) as err:
        ensure_stage(source, table, splits[0], ["id", "x"], root=root, budget_bytes=budget, split_name="val")
    message = str(err.value)
    for part in ("split 'val'", "table 'toy'", "stage_budget_bytes", f"{budget:,}", "in use"):
        assert part in message, (part, message)
    assert b.exists() and c.exists()


def test_a_split_larger_than_the_budget_is_refused_before_reading(tmp_path, make_table):
    uri, _ = make_table("toy", 2000, dim=64)
    source, table = open_source(uri, "toy")
    ids, _ = table_rows(table, ["id"])
    needed = estimate_stage_bytes(table, ["id", "x"], len(ids))
    assert needed >= 2000 * (64 * 4 + 8)
    assert fits(tmp_path / "stages", needed, needed) and not fits(tmp_path / "stages", needed, needed // 2)
    with pytest.raises(StageBudgetError, match=r"split 'train'.*stage_budget_bytes=1,000"):
        ensure_stage(source, table, ids, ["id", "x"], root=tmp_path / "stages", budget_bytes=1000, split_name="train")
    assert [p for p in (tmp_path / "stages").iterdir() if not p.name.startswith(".lock")] == []


def mapping_totals(pid: int, under: Path) -> dict[str, int]:
    """Rss, Pss, Private_Dirty (bytes) of the mappings of files under ``under`` in process ``pid``."""
    totals = {"Rss": 0, "Pss": 0, "Private_Dirty": 0}
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if parts and "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
            inside = len(parts) >= 6 and parts[5].startswith(str(under))
        elif inside and parts[0].rstrip(":") in totals:
            totals[parts[0].rstrip(":")] += int(parts[1]) * 1024
    return totals


@pytest.mark.slow
def test_two_processes_mapping_one_stage_share_its_pages(tmp_path, make_table):
    uri, _ = make_table("toy", 20_000, dim=128)  # ~10 MB stage
    source, table = open_source(uri, "toy")
    ids, _ = table_rows(table, ["id"])
    path = ensure_stage(source, table, ids, ["id", "x"], root=tmp_path / "stages")
    stage_bytes = json.loads((path / "manifest.json").read_text())["bytes"]
    holders = [hold(path, prefault=True), hold(path, prefault=True)]
    try:
        seen = [mapping_totals(p.pid, path) for p in holders]
    finally:
        for p in holders:
            release(p)
    for totals in seen:
        assert totals["Rss"] >= 0.9 * stage_bytes, totals  # pre-faulted: every page mapped
        assert totals["Pss"] <= 0.6 * totals["Rss"], totals  # ... and shared with the other process
        assert totals["Private_Dirty"] < 0.1 * stage_bytes, totals  # no private copy


def test_fill_is_quiet_off_a_tty_and_logs_once(tmp_path, make_table, capfd, caplog):
    uri, _ = make_table("toy", 500)
    source, table = open_source(uri, "toy")
    ids, _ = table_rows(table, ["id"])
    with caplog.at_level(logging.INFO, logger="lance_lightning.stage"):
        path = ensure_stage(source, table, ids, ["id", "x"], root=tmp_path / "stages", split_name="train")
        ensure_stage(source, table, ids, ["id", "x"], root=tmp_path / "stages", split_name="train")
    assert capfd.readouterr().err == ""
    staged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("staged ")]
    assert len(staged) == 1 and "500 rows" in staged[0] and str(path) in staged[0]
    meta = json.loads((path / "manifest.json").read_text())
    assert meta["rows"] == 500 and meta["split"] == "train" and meta["table"] == "toy" and meta["version"] == 1
    assert meta["version_time"] == source.version_time and meta["columns"] == ["id", "x"]


# -- stages a user can see and manage (lance-lightning-stages) ------------------------------------------


def stages_cli(root: Path, *args: str) -> str:
    """What ``lance-lightning-stages --cache root *args`` prints (its ``main``, in this process; the
    console script's own process is run by test_clear_needs_what_to_clear)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert stages_main(["--cache", str(root), *args]) == 0
    return out.getvalue()


def age(path: Path, days: float) -> None:
    """Mark the stage last used ``days`` ago (its lease file's modification time)."""
    then = time.time() - days * 86400
    os.utime(path / ".lease", (then, then))


def test_stages_are_listed_and_cleared_and_one_a_running_job_holds_survives(tmp_path, make_table):
    uri, _ = make_table("toy", N)
    lancedb.connect(uri).create_table("other", toy_table(200))
    source, table = open_source(uri, "toy")
    other_source, other = open_source(uri, "other")
    ids, _ = table_rows(table, ["id"])
    other_ids, _ = table_rows(other, ["id"])
    root = tmp_path / "stages"
    train = ensure_stage(source, table, ids[:400], ["id", "x"], root=root, split_name="train")
    val = ensure_stage(source, table, ids[400:], ["id", "x"], root=root, split_name="val")
    theirs = ensure_stage(other_source, other, other_ids, ["id"], root=root, split_name="train")
    for path in (train, val, theirs):
        release_stage(path)
    age(val, 3)

    listed = {s.path: s for s in list_stages(root)}
    assert set(listed) == {train, val, theirs}
    t = listed[train]
    assert (t.table, t.version, t.split, t.rows, t.columns) == ("toy", 1, "train", 400, ["id", "x"])
    assert t.bytes > 400 * 4 * 4 and t.table_exists is True and not t.held and t.problem is None
    assert t.location == str(Path(uri).resolve())
    text = stages_cli(root, "list")
    for part in (
        "TABLE",
        "SPLIT",
        "LAST USED",
        "toy",
        "other",
        "train",
        "val",
        "(3.0 d ago)",
        str(train),
        "3 stage(s)",
    ):
        assert part in text, (part, text)

    holder = hold(train)  # a running job reads train
    try:
        assert "held by a running job" in stages_cli(root, "list")
        out = stages_cli(root, "clear", "--older-than", "2")  # val only: last used 3 days ago
        assert not val.exists() and train.exists() and theirs.exists(), out
        assert "1 stage(s) removed" in out
        out = stages_cli(root, "clear", "--table", "other")
        assert not theirs.exists() and train.exists(), out
        (root / ".tmp-dead-fill").mkdir()  # what a fill that died left
        out = stages_cli(root, "clear", "--all")
        assert train.exists() and f"kept {train}: a running job holds it" in out and "1 held, kept" in out
        assert not (root / ".tmp-dead-fill").exists()
        assert [s.path for s in list_stages(root)] == [train]
    finally:
        release(holder)
    removed, held = clear_stages(root)
    assert [s.path for s in removed] == [train] and held == [] and list_stages(root) == []


def test_clear_needs_what_to_clear(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lance_lightning.app.stages", "--cache", str(tmp_path), "clear"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "clear needs --all, --table NAME or --older-than DAYS" in done.stderr


def test_every_spelling_of_one_table_location_is_one_stage(tmp_path, make_table, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_table("toy", N)  # tmp_path / "db"
    spellings = ["db", "./db", ".//db/", str(tmp_path / "db"), f"file://{tmp_path}/db", "db/../db"]
    paths = set()
    for uri in spellings:
        source, table = open_source(uri, "toy")
        ids, _ = table_rows(table, ["id"])
        path = ensure_stage(source, table, ids, ["id"], root=tmp_path / "stages")
        release_stage(path)
        paths.add(path)
    assert len(paths) == 1, paths


def test_eviction_removes_the_stages_of_deleted_tables_first(tmp_path, make_table):
    uri, _ = make_table("toy", 3000, dim=64)  # ~0.8 MB a stage of id + x
    gone_db = tmp_path / "gone"
    lancedb.connect(str(gone_db)).create_table("toy", toy_table(1000, dim=64))
    source, table = open_source(uri, "toy")
    gone_source, gone = open_source(str(gone_db), "toy")
    ids, _ = table_rows(table, ["id"])
    gone_ids, _ = table_rows(gone, ["id"])
    root = tmp_path / "stages"
    budget = int(2.5 * estimate_stage_bytes(table, ["id", "x"], 1000))
    of_gone = ensure_stage(gone_source, gone, gone_ids, ["id", "x"], root=root, budget_bytes=budget)
    old = ensure_stage(source, table, ids[:1000], ["id", "x"], root=root, budget_bytes=budget)
    for path in (of_gone, old):
        release_stage(path)
    age(old, 5)  # the least recently used by far ...
    lancedb.connect(str(gone_db)).drop_table("toy")  # ... but the other stage's table is gone
    assert [s.table_exists for s in list_stages(root)] == [False, True]
    new = ensure_stage(source, table, ids[1000:2000], ["id", "x"], root=root, budget_bytes=budget)
    assert not of_gone.exists() and old.exists() and new.exists()


def test_a_node_logs_where_it_staged_what_once(tmp_path, make_table, caplog):
    """The filler says where it staged what; a later job reusing it says so once; a process that
    finds another process of the node holding it (another rank) says nothing."""
    uri, _ = make_table("toy", N)
    source, table = open_source(uri, "toy")
    ids, _ = table_rows(table, ["id"])
    root = tmp_path / "stages"

    def said() -> list[str]:
        out = [r.getMessage() for r in caplog.records if "stage" in r.getMessage() and " at " in r.getMessage()]
        caplog.clear()
        return out

    with caplog.at_level(logging.INFO, logger="lance_lightning.stage"):
        path = ensure_stage(source, table, ids, ["id", "x"], root=root, split_name="train")
        first = said()
        assert len(first) == 1 and first[0].startswith("staged split 'train'") and str(path) in first[0]
        release_stage(path)
        ensure_stage(source, table, ids, ["id", "x"], root=root, split_name="train")
        again = said()
        assert len(again) == 1 and again[0].startswith("reusing the stage of split 'train'"), again
        assert str(path) in again[0] and " bytes at " in again[0]
        release_stage(path)
        holder = hold(path)  # the rank that filled it
        try:
            ensure_stage(source, table, ids, ["id", "x"], root=root, split_name="train")
            assert said() == []
        finally:
            release(holder)
