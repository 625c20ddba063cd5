"""The lock every rank of a predict run holds on its staging files, for the run's whole life.

A run's staging directory (``<base>/<table>.columns-<column>``, ``<base>/new-table-<name>``)
is found by name: what the run is writing. A second run writing the same thing at the same time
must not take the first one's live files for what an interrupted run left (and delete them), so:

* rank 0 holds an exclusive ``flock`` on ``<directory>.lock`` (beside the directory) from before
  it looks at the directory until the run has ended; it writes its pid, host and start time there
  for the error a second run gets;
* every other rank holds an exclusive ``flock`` on ``<directory>/rank-<r>.lock`` from the start
  barrier on (rank 0 holds the directory lock then, so no cleanup can run in between);
* a run may remove what it finds in the directory only when it holds the directory lock *and*
  can lock every ``rank-*.lock`` in it: no process of another run is alive there. A run that
  cannot is refused with :class:`StagingBusyError`, naming the table and what it writes.

The kernel drops a ``flock`` when its process dies, SIGKILL included, so a rerun after a killed
run still cleans up. Lock files are removed only while locked; whoever locks a path checks it
still names the file it locked (else it locks the new one), so a removal never lets two holders in.
``flock`` works across the nodes of an NFS mount on Linux (the client maps it to byte-range locks);
runs that write the same target must use the same staging base (the default, for a local table).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .stage import PredictionWriteError


class StagingBusyError(PredictionWriteError):
    """Another live predict run is writing the same columns or table: this run was refused."""


class FileLock:
    """An exclusive ``flock`` on one path, held until :meth:`release` (or the process dies)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    @classmethod
    def try_acquire(cls, path: Path, *, create: bool = True) -> FileLock | None:
        """The lock, or None when another open file (a live process) holds it. With ``create=False``
        a missing file is None too."""
        while True:
            flags = os.O_RDWR | (os.O_CREAT if create else 0)
            try:
                fd = os.open(path, flags, 0o644)
            except FileNotFoundError:
                if create:
                    raise
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return cls(path, fd)
            os.close(fd)  # removed (or replaced) by its holder while we waited: lock the new one
            if not create:
                return None

    def write(self, record: dict) -> None:
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(record).encode(), 0)

    def release(self, *, remove: bool = False) -> None:
        if self._fd < 0:
            return
        if remove:  # while locked: a process waiting on this file finds it gone and retries
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = -1


def holder(path: Path) -> str:
    """Who holds the directory lock at ``path``, in words (best effort)."""
    try:
        record = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    if not record:
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("since", 0)))
    return f"pid {record.get('pid')} on {record.get('host')} (since {started})"


def directory_lock_path(directory: Path) -> Path:
    return directory.with_name(directory.name + ".lock")


def rank_lock_path(directory: Path, rank: int) -> Path:
    return directory / f"rank-{rank:05d}.lock"


@contextlib.contextmanager
def _rank_locks(directory: Path) -> Iterator[list[Path]]:
    """Lock every ``rank-*.lock`` in ``directory``; yields the ones a live process holds."""
    held: list[FileLock] = []
    busy: list[Path] = []
    try:
        for path in sorted(directory.glob("rank-*.lock")) if directory.is_dir() else []:
            lock = FileLock.try_acquire(path, create=False)
            if lock is None:
                if path.exists():
                    busy.append(path)
            else:
                held.append(lock)
        yield busy
    finally:
        for lock in held:
            lock.release()


def lock_run(directory: Path, what: str) -> tuple[FileLock, bool]:
    """Rank 0: the directory lock of ``directory`` and whether files of an ended run are there (the
    caller removes them while it holds the lock). ``what`` names the target in the error, e.g.
    ``"column(s) 'score' of table 'rows'"``. Raises :class:`StagingBusyError` when a live process
    of another run holds the directory or a rank's files in it."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    path = directory_lock_path(directory)
    lock = FileLock.try_acquire(path)
    if lock is None:
        raise StagingBusyError(
            f"another predict run is writing {what} now ({holder(path)}; its staging files: {directory}). Nothing "
            "was written by this run: wait for that run to end, or write another column or table"
        )
    try:
        with _rank_locks(directory) as busy:
            if busy:
                raise StagingBusyError(
                    f"a process of an earlier predict run writing {what} is still alive (it holds {busy[0]}): nothing "
                    "was written by this run. Wait for it to end (or stop it), then run predict again"
                )
        lock.write({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        return lock, directory.exists()
    except BaseException:
        lock.release()
        raise


def lock_rank(directory: Path, rank: int, timeout_s: float = 30.0) -> FileLock:
    """Ranks other than 0, after rank 0 made the directory: this rank's lock on its own files."""
    path = rank_lock_path(directory, rank)
    deadline = time.monotonic() + timeout_s
    while True:
        lock = FileLock.try_acquire(path)
        if lock is not None:
            return lock
        if time.monotonic() > deadline:  # only a cleanup holds it, and rank 0's lock keeps cleanups out
            raise PredictionWriteError(f"rank {rank} could not lock its staging files {path} in {timeout_s:.0f} s")
        time.sleep(0.05)
