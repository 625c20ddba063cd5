"""The prediction writer's fault matrix: writer paths x faults, every run a process of its own under a timeout
(forked from the test zygote, ``tests/zygote.py``: torch and Lightning imported once).

Writer paths (``WRITERS``; a new path joins with one line): two runs A and B writing the same
column, other columns of the same table, or the same new table. Faults (``FAULTS``):

* ``two-at-once``: A stops itself (SIGSTOP) at predict batch 2, its staging files made and data
  files being written; B runs from start to end; A goes on (SIGCONT) and ends;
* ``two-at-once-at-commit``: the same, A stopped just before lance's commit;
* ``disk-full``: A runs on a tmpfs with 256 KB left; then the space is freed and B runs;
* ``sigkill-before-commit`` / ``sigkill-after-commit``: A is SIGKILLed just before / just after
  lance's commit; then B runs.

Every cell: nothing hangs (each run has a timeout), every error is a ``PredictionWriteError``
naming the table (and the column, for a column), every version of every table in the database
reads, the winner's values are right for every row, and when A and B write the same target, no
data file that no version refers to is left after B. With the same target exactly one of two runs
at once wins; with other columns both may win (lance allows it) or one is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import psutil
import pytest
import torch

from tests import zygote
from tests.conftest import toy_table
from tests.faults.writer_run import outputs

pytest.importorskip("lance")
import lance  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("writer_run.py")
RUN_TIMEOUT_S = 180
ROWS, BATCH = 203, 16
FULL_ROWS, FULL_BATCH, FULL_DIM = 2000, 100, 256  # 2 MB of outputs for a disk with 256 KB left
TABLE = "rows"


@dataclass(frozen=True)
class WriterPath:
    """Two runs' writer arguments, and whether they write the same target."""

    name: str
    a: dict[str, Any]
    b: dict[str, Any]
    same_target: bool
    dims: dict[str, int] = field(default_factory=lambda: {"score": 1, "emb": 4})


WRITERS = [
    WriterPath("same-column", {"column": "score"}, {"column": "score"}, same_target=True),
    WriterPath("other-columns", {"column": "score"}, {"column": "emb"}, same_target=False),
    WriterPath("same-new-table", {"column": "score", "table": "preds"}, {"column": "score", "table": "preds"}, True),
]
FAULTS = ["two-at-once", "two-at-once-at-commit", "disk-full", "sigkill-before-commit", "sigkill-after-commit"]
DEFAULT_CELLS = {  # issue 29's three bugs; the other cells run with -m long
    ("same-column", "two-at-once"),
    ("same-new-table", "two-at-once"),
    ("same-new-table", "disk-full"),
}
CELLS = [
    pytest.param(w, f, id=f"{w.name}-{f}", marks=() if (w.name, f) in DEFAULT_CELLS else pytest.mark.long)
    for w in WRITERS
    for f in FAULTS
]


# -- the runs ------------------------------------------------------------------------------------


class Runs:
    """Predict runs in processes of their own (own session each); every one left is killed at teardown."""

    def __init__(self, root: Path) -> None:
        self.root, self.procs = root, {}

    def start(self, tag: str, uri: str, writer: dict, *, dim: int, batch: int, pause: str | None = None) -> None:
        spec = {"uri": uri, "table": TABLE, "writer": writer, "dim": dim, "batch": batch, "pause": pause}
        spec["out"] = str(self.root / f"out-{tag}.json")
        path = self.root / f"spec-{tag}.json"
        path.write_text(json.dumps(spec))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        # Forked from the test zygote (torch and Lightning imported once), in a session of its own.
        self.procs[tag] = zygote.start([str(RUNNER), str(path)], cwd=ROOT, env=env, output=self.root / f"log-{tag}.txt")

    def log(self, tag: str) -> str:
        return (self.root / f"log-{tag}.txt").read_text()[-4000:]

    def wait_stopped(self, tag: str, *, may_end: bool = False) -> bool:
        """Until run ``tag`` has stopped itself at its pause (True), or ended (False; only if ``may_end``)."""
        proc = self.procs[tag]
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                if may_end:
                    return False
                pytest.fail(f"run {tag} ended (rc {proc.returncode}) before its pause:\n{self.log(tag)}")
            with contextlib.suppress(psutil.NoSuchProcess):
                if psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED:
                    return True
            time.sleep(0.05)
        pytest.fail(f"run {tag} did not reach its pause in {RUN_TIMEOUT_S} s:\n{self.log(tag)}")

    def finish(self, tag: str) -> dict[str, Any]:
        """Run ``tag``'s outcome; it must end within the timeout (nothing hangs)."""
        proc = self.procs[tag]
        try:
            proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill(tag)
            pytest.fail(f"run {tag} hung (killed after {RUN_TIMEOUT_S} s):\n{self.log(tag)}")
        out = self.root / f"out-{tag}.json"
        assert out.exists(), f"run {tag} left no outcome (rc {proc.returncode}):\n{self.log(tag)}"
        return json.loads(out.read_text())

    def run(self, tag: str, uri: str, writer: dict, **kwargs: Any) -> dict[str, Any]:
        self.start(tag, uri, writer, **kwargs)
        return self.finish(tag)

    def resume(self, tag: str) -> None:
        os.killpg(self.procs[tag].pid, signal.SIGCONT)

    def kill(self, tag: str) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[tag].pid, signal.SIGKILL)
        self.procs[tag].wait()

    def close(self) -> None:
        for tag, proc in self.procs.items():
            if proc.poll() is None:
                self.kill(tag)


@pytest.fixture
def runs(tmp_path):
    runs = Runs(tmp_path)
    yield runs
    runs.close()


@contextlib.contextmanager
def small_disk(where: Path, size: str = "3m"):
    """A tmpfs of ``size`` at ``where`` (root and mount permission needed, else the test skips)."""
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("the disk-full cells mount a small tmpfs: they need root (CI runs them as root)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the disk-full cells: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` but ``leave`` bytes; returns the filler file (delete it to free the space)."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


# -- the checks ----------------------------------------------------------------------------------


def every_version_reads(db: Path) -> None:
    """Each table directory in ``db`` opens, and every one of its versions reads in full."""
    for path in sorted(db.glob("*.lance")):
        dataset = lance.dataset(str(path))
        for version in dataset.versions():
            lance.dataset(str(path), version=version["version"]).to_table()


def unreferenced(path: Path) -> set[str]:
    """Data files of the dataset at ``path`` that no version refers to."""
    if not (path / "data").is_dir():
        return set()
    dataset = lance.dataset(str(path))
    used: set[str] = set()
    for version in dataset.versions():
        old = lance.dataset(str(path), version=version["version"])
        used |= {f.path for fragment in old.get_fragments() for f in fragment.metadata.files}
    return {p.name for p in (path / "data").iterdir()} - used


def check_refusal(outcome: dict[str, Any], writer: dict[str, Any]) -> None:
    """A refused run raised a PredictionWriteError naming the table (and the column)."""
    assert "error" in outcome, outcome
    assert outcome["named"], f"not a PredictionWriteError: {outcome}"
    target = writer.get("table", TABLE)
    assert repr(target) in outcome["message"], outcome["message"]
    if "table" not in writer:
        assert repr(writer["column"]) in outcome["message"], outcome["message"]


def check_written(uri: str, writer: dict[str, Any], dim: int, rows: int) -> None:
    """The values of ``writer``'s output, every row, in the latest version."""
    db = lancedb.connect(uri)
    name = writer["column"]
    table = db.open_table(writer.get("table", TABLE)).to_arrow()
    assert table.num_rows == rows
    ids = table["id"].to_numpy()
    order = np.argsort(ids)
    want = outputs(name, torch.from_numpy(ids[order].copy()), dim).numpy()
    column = table[name].combine_chunks().take(order)
    got = column.flatten().to_numpy().reshape(len(column), -1) if dim > 1 else column.to_numpy()
    np.testing.assert_array_equal(got.reshape(want.shape), want)


# -- the faults: each runs A and B and returns their outcomes ---------------------------------------


def two_at_once(runs: Runs, uri: str, w: WriterPath, run_a: dict, run_b: dict) -> tuple[dict, dict]:
    """Both in their loops: A stops at a batch, B starts (and stops at its batch, or is refused at its
    start), A goes on and ends, then B."""
    runs.start("a", uri, w.a, pause="batch", **run_a)
    runs.wait_stopped("a")
    runs.start("b", uri, w.b, pause="batch", **run_b)
    b_paused = runs.wait_stopped("b", may_end=True)
    runs.resume("a")
    a = runs.finish("a")
    if b_paused:
        runs.resume("b")
    return a, runs.finish("b")


def two_at_once_at_commit(runs: Runs, uri: str, w: WriterPath, run_a: dict, run_b: dict) -> tuple[dict, dict]:
    """A stops just before lance's commit; B runs from start to end; A goes on."""
    runs.start("a", uri, w.a, pause="before-commit", **run_a)
    runs.wait_stopped("a")
    b = runs.run("b", uri, w.b, **run_b)
    runs.resume("a")
    return runs.finish("a"), b


def disk_full(runs: Runs, uri: str, w: WriterPath, run_a: dict, run_b: dict) -> tuple[dict, dict]:
    """A on a disk with 256 KB left (its outputs are 2 MB): refused, by name; then B, with space."""
    filler = fill(Path(uri).parent, leave=256 * 1024)
    a = runs.run("a", uri, w.a, **run_a)
    check_refusal(a, w.a)
    every_version_reads(Path(uri))
    filler.unlink()
    return a, runs.run("b", uri, w.b, **run_b)


def sigkill_at(pause: str):
    """A is SIGKILLed at ``pause`` (just before or after lance's commit); then B runs."""

    def sigkill(runs: Runs, uri: str, w: WriterPath, run_a: dict, run_b: dict) -> tuple[dict, dict]:
        runs.start("a", uri, w.a, pause=pause, **run_a)
        runs.wait_stopped("a")
        runs.kill("a")
        landed = pause == "after-commit"
        return ({"ok": "committed, then killed"} if landed else {"killed": True}), runs.run("b", uri, w.b, **run_b)

    return sigkill


FAULT_RUNS = {
    "two-at-once": two_at_once,
    "two-at-once-at-commit": two_at_once_at_commit,
    "disk-full": disk_full,
    "sigkill-before-commit": sigkill_at("before-commit"),
    "sigkill-after-commit": sigkill_at("after-commit"),
}


# -- the matrix ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("writer", "fault"), CELLS)
def test_writer_fault(tmp_path, runs, writer: WriterPath, fault: str):
    full = fault == "disk-full"
    rows, batch = (FULL_ROWS, FULL_BATCH) if full else (ROWS, BATCH)
    dims = dict.fromkeys(writer.dims, FULL_DIM) if full else writer.dims
    with small_disk(tmp_path / "disk") if full else contextlib.nullcontext(tmp_path) as where:
        uri = str(where / "db")
        lancedb.connect(uri).create_table(TABLE, toy_table(rows))
        dim_a, dim_b = dims[writer.a["column"]], dims[writer.b["column"]]
        a, b = FAULT_RUNS[fault](runs, uri, writer, {"dim": dim_a, "batch": batch}, {"dim": dim_b, "batch": batch})
        runs.close()
        every_version_reads(Path(uri))  # first: a table that no longer reads is the worst outcome
        wins = [outcome for outcome in (a, b) if "ok" in outcome]
        if writer.same_target:
            assert len(wins) == 1, (a, b)  # exactly one wins ...
        else:
            assert wins, (a, b)  # both may win (lance allows it)
        for outcome, w in ((a, writer.a), (b, writer.b)):
            if "error" in outcome:
                check_refusal(outcome, w)  # ... and the other is refused, naming the table and column
        if "ok" in a:
            check_written(uri, writer.a, dim_a, rows)
        if "ok" in b:
            check_written(uri, writer.b, dim_b, rows)
        if writer.same_target and "ok" in b:  # B's start-up removed what A left that no version refers to
            assert not unreferenced(Path(uri) / f"{writer.b.get('table', TABLE)}.lance")
