"""A stage filled in a child process (:mod:`lance_lightning.stage.child`) is the stage filled here.

Large fills run in a child so that the memory their read allocates ends with it; what a user relies
on is unchanged: the same files (CRC-32 for CRC-32), the same batches in the same order at 0 and 2
workers, with and without a transform, and after a mid-epoch resume; an error of the fill in the
child raised in the training process as the same type with the same message; a child that cannot
start leaves the fill to this process, said in the log.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from lance_lightning import LanceDataModule
from lance_lightning.stage import StageBudgetError, StageDiskError, fill, store
from tests.faults import test_stage_integrity as integrity
from tests.faults.test_stage_integrity import assert_names_the_disk_and_settings, setup_capturing, short_then_long_names
from tests.helpers import Recorder
from tests.integration.test_resume import datamodule, interrupted_then_resumed, trainer

NUM_ROWS, BATCH = 410, 16
small_disk = integrity.small_disk  # a fixture: a 1 MiB tmpfs


@pytest.fixture
def fills_here(monkeypatch) -> list[int]:
    """Every fill runs in a child process; the list grows by one for each fill made in this one."""
    calls: list[int] = []
    real = fill._fill_in_budget

    def here(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fill, "_fill_in_budget", here)
    monkeypatch.setattr(fill, "CHILD_FILL_BYTES", 0)
    return calls


def batches(uri: str, cache: Path, **settings) -> list[list[int]]:
    dm = LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=BATCH, seed=9, cache=str(cache), **settings)
    dm.setup("fit")
    dm.samplers["train"].set_epoch(1)
    out = [batch["id"].tolist() for batch in dm.train_dataloader()]
    dm.teardown("fit")
    return out


def manifest(cache: Path) -> dict:
    (stage,) = store.stages(cache)
    return json.loads((stage / store.MANIFEST).read_text())


@pytest.mark.parametrize(("workers", "transform"), [(0, False), (2, True)], ids=["w0", "w2-transform"])
def test_a_stage_filled_in_a_child_is_the_same_stage_and_the_same_batches(
    make_table, tmp_path, monkeypatch, workers, transform
):
    uri, _ = make_table("toy", NUM_ROWS)
    monkeypatch.setattr(fill, "CHILD_FILL_BYTES", None)
    extra = {"num_workers": workers, "transform": "tests.helpers.double_x" if transform else None}
    reference = batches(uri, tmp_path / "here", **extra)
    assert sorted(i for b in reference for i in b) == list(range(NUM_ROWS))

    calls: list[int] = []
    real = fill._fill_in_budget
    monkeypatch.setattr(fill, "_fill_in_budget", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(fill, "CHILD_FILL_BYTES", 0)
    assert batches(uri, tmp_path / "child", **extra) == reference
    assert calls == []  # filled in the child, not here
    here, child = manifest(tmp_path / "here"), manifest(tmp_path / "child")
    assert {k: (v["bytes"], v["crc32"]) for k, v in child["files"].items()} == {
        k: (v["bytes"], v["crc32"]) for k, v in here["files"].items()
    }


def test_a_stage_filled_in_a_child_resumes_mid_epoch_exactly(make_table, tmp_path, monkeypatch):
    uri, _ = make_table("toy", 100)
    reference = Recorder()
    monkeypatch.setattr(fill, "CHILD_FILL_BYTES", None)
    trainer(tmp_path).fit(reference, datamodule=datamodule(uri, cache=str(tmp_path / "here")))
    monkeypatch.setattr(fill, "CHILD_FILL_BYTES", 0)
    kwargs = {"num_workers": 2, "transform": "tests.helpers.double_x", "cache": str(tmp_path / "child")}
    assert interrupted_then_resumed(tmp_path, uri, 5, kwargs, kwargs) == reference.seen
    assert len(store.stages(tmp_path / "child")) == 1


def test_the_child_says_the_stage_it_made_once(make_table, tmp_path, fills_here, caplog):
    uri, _ = make_table("toy", NUM_ROWS)
    with caplog.at_level(logging.INFO, logger="lance_lightning"):
        batches(uri, tmp_path / "child")
    staged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("staged ")]
    assert len(staged) == 1 and "split 'train'" in staged[0] and str(tmp_path / "child") in staged[0], staged
    assert fills_here == []
    assert not list((tmp_path / "child").glob(f"{store.TMP_PREFIX}*"))


def test_a_disk_that_fills_during_a_fill_in_the_child_is_named_in_this_process(
    make_table, small_disk, fills_here, monkeypatch
):
    """The disk fills up in the child: by default the split is read from the table with one warning;
    ``staging='always'`` raises :class:`StageDiskError` here, with the child's message."""
    uri, _ = make_table("toy", short_then_long_names(3000))
    monkeypatch.setenv("XDG_CACHE_HOME", str(small_disk))
    root = small_disk / "lance-lightning" / "stages"
    settings = {"columns": ["id", "name"], "batch_size": 100, "cache_max_bytes": 10**9}
    dm = LanceDataModule(uri, "toy", **settings)
    messages = [m for m in setup_capturing(dm) if "not staged" in m]
    assert len(messages) == 1, messages
    assert "No space left on device" in messages[0] and "the disk ran out of room during the fill, after" in messages[0]

    with pytest.raises(StageDiskError) as raised:
        LanceDataModule(uri, "toy", staging="always", **settings).setup("fit")
    assert_names_the_disk_and_settings(str(raised.value), root, "No space left on device")
    assert "stage-fill process" in "".join(getattr(raised.value, "__notes__", []))
    assert fills_here == []
    assert not list(root.glob(f"{store.TMP_PREFIX}*")) and store.stages(root) == []


def test_a_fill_over_budget_in_the_child_raises_the_budget_error_here(make_table, tmp_path, fills_here):
    """The size estimate is low (long rows after the sampled ones): the child stops at the budget
    and this process raises :class:`StageBudgetError` naming the setting."""
    uri, _ = make_table("toy", short_then_long_names(3000))
    settings = {"columns": ["id", "name"], "batch_size": 100, "cache_max_bytes": 1_000_000, "staging": "always"}
    with pytest.raises(StageBudgetError) as raised:
        LanceDataModule(uri, "toy", cache=str(tmp_path / "stages"), **settings).setup("fit")
    assert type(raised.value) is StageBudgetError
    for part in ("the estimate was low", "cache_max_bytes=1,000,000", "split 'train'", "table 'toy'"):
        assert part in str(raised.value), (part, str(raised.value))
    assert fills_here == []
    assert store.stages(tmp_path / "stages") == []


@pytest.mark.parametrize(
    ("executable", "said"),
    [("/bin/false", "exit code 1"), ("/nonexistent/python", "could not start")],
    ids=["exits-at-once", "no-such-interpreter"],
)
def test_a_child_that_cannot_start_leaves_the_fill_to_this_process(
    make_table, tmp_path, fills_here, monkeypatch, caplog, executable, said
):
    uri, _ = make_table("toy", NUM_ROWS)
    monkeypatch.setattr(sys, "executable", executable)
    with caplog.at_level(logging.INFO, logger="lance_lightning"):
        got = batches(uri, tmp_path / "stages")
    assert sorted(i for b in got for i in b) == list(range(NUM_ROWS))
    assert fills_here == [1]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("staging" in m and "in this process" in m and said in m for m in warned), warned


KILLED_PARENT = """
import sys
import lancedb, numpy as np
from lance_lightning.source import TableSource
from lance_lightning.stage import ensure_stage, fill
fill.CHILD_FILL_BYTES = 0
fill._SCAN_BATCH = 4  # a slow fill: 4 rows a batch
uri, root = sys.argv[1], sys.argv[2]
table = lancedb.connect(uri).open_table("toy")
source = TableSource(uri, "toy", table.version).stamped(table)
ids = np.sort(table.search().select(["_rowid"]).limit(None).to_arrow()["_rowid"].to_numpy())
ensure_stage(source, table, ids, ["id", "x", "y"], root=root, split_name="train", progress=False)
"""


@pytest.mark.long
def test_a_child_filling_a_stage_ends_when_the_training_process_is_killed(make_table, tmp_path):
    """SIGKILL of the process that started the fill (the OOM killer, preemption): the child ends too,
    so no orphan keeps writing into a ``.tmp-<key>`` that the next filler clears."""
    import os
    import signal
    import subprocess
    import time

    import psutil

    uri, _ = make_table("toy", 40_000)
    root = tmp_path / "stages"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT, uri, str(root)], env=env)
    deadline = time.monotonic() + 60
    children: list[psutil.Process] = []
    while time.monotonic() < deadline and parent.poll() is None:
        children = psutil.Process(parent.pid).children()
        if children and list(root.glob(f"{store.TMP_PREFIX}*/*.npy")):
            break  # the child is writing the stage
        time.sleep(0.05)
    assert children and parent.poll() is None, "the fill ended (or never started in a child) before the kill"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"the stage-fill child outlived its parent: {alive}"
    assert store.stages(root) == []  # nothing was renamed into place


def test_any_error_of_the_fill_in_the_child_is_the_same_error_here(make_table, tmp_path, monkeypatch):
    """Not only the stage's own errors: whatever the fill raises in the child (here a ValueError of
    a bad setting, found only once the fill plans its files) is raised here as the same type with
    the same message as when this process fills."""
    import lancedb
    import numpy as np

    from lance_lightning.source import TableSource
    from lance_lightning.stage import ensure_stage

    uri, _ = make_table("toy", NUM_ROWS)
    table = lancedb.connect(uri).open_table("toy")
    source = TableSource(uri, "toy", table.version).stamped(table)
    ids = np.arange(NUM_ROWS, dtype=np.uint64)
    raised = {}
    for where, threshold in (("here", None), ("child", 0)):
        monkeypatch.setattr(fill, "CHILD_FILL_BYTES", threshold)
        with pytest.raises(Exception) as caught:
            ensure_stage(source, table, ids, ["id", "x"], root=tmp_path / where, split_name="train", layout="bogus")
        raised[where] = (type(caught.value), str(caught.value))
        notes = "".join(getattr(caught.value, "__notes__", []))
        assert ("stage-fill process" in notes) == (where == "child"), notes  # raised in the child, then here
        assert not list((tmp_path / where).glob(f"{store.TMP_PREFIX}*")) and store.stages(tmp_path / where) == []
    assert raised["child"] == raised["here"] and raised["here"][0] is ValueError, raised
    assert "stage layout must be one of" in raised["here"][1]
