"""Processes a test started: whether they ended, waiting for them, killing what is left (psutil)."""

from __future__ import annotations

import contextlib
import time

import psutil


def ended(pid: int) -> bool:
    """Gone, or a zombie (exited; only its parent's bookkeeping is left)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_ended(pids: list[int], timeout: float) -> list[int]:
    """The pids still running after ``timeout`` seconds (or as soon as none is)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if not ended(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if not ended(p)]


def kill_all(processes: list[psutil.Process]) -> None:
    """SIGKILL the ones still running: only processes this test started (and their children);
    psutil checks each is still the process it was (not a reused pid)."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
