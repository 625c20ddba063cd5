"""The writer's staging lock (writer/lock.py) and its thread hand-over (writer/feed.py), on their own.

Real processes hold the locks (a ``python -c`` child that takes a ``flock`` and sleeps); each feed
test runs under a bounded join, so a hang fails the test instead of stopping the suite.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from lance_lightning.writer.feed import QUEUE_BATCHES, Feed
from lance_lightning.writer.lock import FileLock, StagingBusyError, directory_lock_path, lock_run, rank_lock_path
from lance_lightning.writer.stage import PredictionWriteError

WHAT = "column(s) 'score' of table 'rows'"


def hold(path: Path) -> subprocess.Popen:
    """A live process holding an exclusive flock on ``path`` (it says 'held' once it does)."""
    code = textwrap.dedent(
        f"""
        import fcntl, os, sys, time
        fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("held", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_run_holding_the_directory_refuses_a_second_and_its_files_stay(tmp_path):
    directory = tmp_path / "rows.columns-score"
    first, leftover = lock_run(directory, WHAT)
    assert not leftover
    directory.mkdir()
    (directory / "data-files-00000.txt").write_text("x\n")
    with pytest.raises(StagingBusyError, match=r"another predict run is writing column\(s\) 'score' of table 'rows'"):
        lock_run(directory, WHAT)  # another open file of the same path: refused, even in one process
    assert (directory / "data-files-00000.txt").exists()
    first.release(remove=True)
    second, leftover = lock_run(directory, WHAT)  # the first ended: its files are an ended run's
    assert leftover
    second.release(remove=True)
    assert not directory_lock_path(directory).exists()


def test_a_live_rank_of_an_ended_rank_0_keeps_its_files(tmp_path):
    directory = tmp_path / "rows.columns-score"
    directory.mkdir()
    proc = hold(rank_lock_path(directory, 1))  # rank 1 of a run whose rank 0 is gone
    try:
        with pytest.raises(StagingBusyError, match="still alive"):
            lock_run(directory, WHAT)
        again = FileLock.try_acquire(directory_lock_path(directory))
        assert again is not None  # the refusal let go of the directory lock
        again.release()
    finally:
        proc.kill()
        proc.wait()
    lock, leftover = lock_run(directory, WHAT)  # its lock died with it (SIGKILL): the files can go
    assert leftover
    lock.release()


def test_a_lock_file_removed_by_its_holder_is_not_locked_twice(tmp_path):
    path = tmp_path / "x.lock"
    first = FileLock.try_acquire(path)
    assert FileLock.try_acquire(path) is None
    first.release(remove=True)
    second = FileLock.try_acquire(path)  # a new file: one holder at a time still
    assert second is not None and FileLock.try_acquire(path) is None
    second.release()


def bounded(fn, timeout: float = 20.0):
    """``fn()``'s result or error; fails the test if it has not returned within ``timeout``."""
    box: dict = {}

    def call():
        try:
            box["result"] = fn()
        except BaseException as err:  # noqa: BLE001
            box["error"] = err

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"hung for {timeout} s"
    if "error" in box:
        raise box["error"]
    return box["result"]


def test_an_error_after_the_end_marker_reaches_finish_named():
    """What hung NewTableWriter.finish: the items end (the marker is read), then writing fails."""

    def consume(items):
        list(items)
        raise OSError(28, "No space left on device")

    feed = Feed(consume, name="t", what=WHAT)
    for i in range(3):
        feed.put(i)
    with pytest.raises(PredictionWriteError, match=r"writing column\(s\) 'score' of table 'rows' failed: OSError"):
        bounded(feed.finish)


def test_an_early_error_stops_the_loop_instead_of_blocking_it():
    def consume(items):
        next(items)
        raise OSError(28, "No space left on device")

    feed = Feed(consume, name="t", what=WHAT)

    def put_many():
        for i in range(QUEUE_BATCHES * 4):  # more than the queue holds: a dead thread would block the loop
            feed.put(i)

    with pytest.raises(PredictionWriteError, match="No space left"):
        bounded(put_many)
    with pytest.raises(PredictionWriteError, match="No space left"):
        bounded(feed.finish)


def test_abort_stops_a_thread_waiting_for_items():
    seen = []

    def consume(items):
        for item in items:
            seen.append(item)

    feed = Feed(consume, name="t", what=WHAT)
    feed.put(1)
    bounded(feed.abort)
    assert not feed._thread.is_alive() and seen in ([], [1])
