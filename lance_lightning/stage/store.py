"""The stage root on disk: keys, manifests, verification, locks, leases, budget and eviction.

Pure bookkeeping of the files; what goes into a stage is :mod:`.fill`, how it is read :mod:`.reader`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ..source import storage_endpoint

log = logging.getLogger("lance_lightning.stage")

STAGE_FORMAT = 2
MANIFEST = "manifest.json"
LOCK_FILE = ".lock"
LEASE_FILE = ".lease"
TMP_PREFIX = ".tmp-"
CHECKSUM = "crc32"
"""zlib's CRC-32 in 1 MiB chunks (~0.9 GB/s here): detects accidental damage, not forgery."""
CHUNK = 1 << 20
SEGMENT_BYTES = 64 << 20
"""The manifest records a CRC-32 for each segment of this many bytes of a file."""
VERIFY_THREADS = 8
"""Threads that verify a stage's segments at most (memory bandwidth bounds it beyond)."""


class StageError(RuntimeError):
    """A stage does not hold what was written into it (found after setup, e.g. by a worker)."""


class StageBudgetError(ValueError):
    """The stage would not fit the staging budget, even after evicting every stage not in use."""


class StageDiskError(StageBudgetError, StageError):
    """The directory where stages live cannot take this stage: read-only, not writable, or its disk
    filled up during the fill. A :class:`StageBudgetError` (default staging reads the table instead,
    with a warning) and a :class:`StageError` (what staging that was asked for raises)."""


NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})
NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def root_settings(root: Path, setting: str) -> str:
    """Where stages live and the settings that choose it, for messages."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (
        f"stages live in {setting}= (here {str(root)!r}; default $XDG_CACHE_HOME/lance-lightning/stages, "
        f"XDG_CACHE_HOME={'unset: ~/.cache' if xdg is None else repr(xdg)})"
    )


def disk_error(
    err: OSError, root: Path, what: str, setting: str, detail: str = "", budget_setting: str = "cache_max_bytes"
) -> StageDiskError | None:
    """The :class:`StageDiskError` for an ``OSError`` met while placing a stage under ``root``
    (None: not a problem of the disk there)."""
    reason = err.strerror or str(err)
    name = getattr(err, "filename", None)
    where = f" ({name})" if name else ""
    if err.errno in NOT_WRITABLE:
        target = Path(name).absolute() if name else None
        if target is None or not (target == root or root in target.parents or target in root.parents):
            return None  # not about the stage directory (e.g. reading the table was refused)
        problem = f"the stage directory cannot be written: {reason}{where}"
        fix = f"point {setting}= or XDG_CACHE_HOME at a writable node-local directory"
    elif err.errno in NO_ROOM:
        problem = f"the disk ran out of room during the fill{detail}: {reason}{where}"
        fix = f"free space there, point {setting}= or XDG_CACHE_HOME at a disk with room, lower {budget_setting}"
    else:
        return None
    return StageDiskError(
        f"cannot stage {what}: {problem}. {root_settings(root, setting)}. To stage it, {fix}; or set "
        "staging='off' to read the table."
    )


class StageWarning(UserWarning):
    """A stage failed verification and is rebuilt from the table."""


def default_stage_root() -> Path:
    """``$XDG_CACHE_HOME/lance-lightning/stages``, or ``~/.cache/lance-lightning/stages``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lance-lightning" / "stages"


def table_location(uri: str) -> str:
    """The database location a stage is keyed by: one spelling per place, so that ``data//db``,
    ``./data/db`` and ``/abs/data/db`` (and ``file://`` of it) share one stage. A local path becomes
    absolute, with symbolic links resolved; an object-store URI keeps its scheme (lower case),
    bucket, query and every key segment (``.`` and ``..`` are names in a bucket), and loses only
    empty segments and a trailing ``/`` (the stores read ``a//b/`` as ``a/b``). ``memory://`` as is."""
    uri = str(uri)
    if uri.startswith("memory://"):
        return uri
    parsed = urlsplit(uri)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        path = parsed.path if parsed.scheme == "file" else uri
        return os.path.realpath(os.path.expanduser(path))
    path = re.sub(r"/+", "/", parsed.path).rstrip("/")
    return urlunsplit((parsed.scheme.lower(), parsed.netloc, path, parsed.query, parsed.fragment))


def stage_key(
    source: Any, columns: Sequence[str], row_ids: np.ndarray, *, filter: str | None, layout: str = "flat"
) -> str:
    """The stage's directory name: readable prefix, then a hash of everything that decides its content
    (table identity and version, commit time of the version, columns, filter, the split's rows)."""
    if source.version is None:
        raise ValueError("a stage needs a pinned table version")
    rows = np.sort(np.asarray(row_ids, dtype=np.uint64))
    payload = {
        "format": STAGE_FORMAT,
        "layout": layout,
        "uri": table_location(source.uri),
        "endpoint": storage_endpoint(source.storage_options),
        "table": source.name,
        "version": source.version,
        "version_time": source.version_time,  # a recreated table restarts at version 1
        "columns": list(columns),
        "filter": filter,
        "num_rows": len(rows),
        "rows": hashlib.sha256(rows.tobytes()).hexdigest(),
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", source.name)[:64]
    return f"{name}-v{source.version}-{digest}"


def describe(source: Any, split_name: str, num_rows: int, columns: Sequence[str]) -> str:
    """What a stage holds, for messages."""
    return (
        f"split {split_name!r} of table {source.name!r}, version {source.version}, "
        f"{num_rows:,} rows, columns {list(columns)}"
    )


# -- manifest and verification -------------------------------------------------------------------


class SegmentCrc:
    """CRC-32 of each :data:`SEGMENT_BYTES` segment of a stream, fed in pieces of any size: the
    manifest records one a segment, so that verification checks the segments on every core."""

    def __init__(self) -> None:
        self.crcs: list[int] = []
        self._crc = self._filled = 0

    def update(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            piece = view[: SEGMENT_BYTES - self._filled]
            self._crc = zlib.crc32(piece, self._crc)
            self._filled += len(piece)
            view = view[len(piece) :]
            if self._filled == SEGMENT_BYTES:
                self.crcs.append(self._crc)
                self._crc = self._filled = 0

    def hexes(self) -> list[str]:
        tail = [self._crc] if self._filled or not self.crcs else []
        return [f"{crc:08x}" for crc in [*self.crcs, *tail]]


def _crc32_range(path: Path, offset: int, length: int) -> str:
    buf = bytearray(min(CHUNK, max(length, 1)))
    view = memoryview(buf)
    crc = 0
    with open(path, "rb", buffering=0) as fh:
        fh.seek(offset)
        while length > 0:
            n = fh.readinto(view[: min(len(buf), length)])
            if not n:
                break
            crc = zlib.crc32(view[:n], crc)
            length -= n
    return f"{crc:08x}"


def crc32_file(path: str | os.PathLike[str]) -> list[str]:
    """The CRC-32 of each segment of the file at ``path`` (what the manifest records)."""
    return [_crc32_range(Path(path), offset, length) for offset, length in _segments(os.path.getsize(path))]


def _segments(size: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of each segment of a ``size``-byte file (one, empty, for an empty file)."""
    return [(offset, min(SEGMENT_BYTES, size - offset)) for offset in range(0, max(size, 1), SEGMENT_BYTES)]


def _first_mismatch(path: Path, files: dict[str, dict[str, Any]]) -> str | None:
    """Every segment of every file checked against the manifest, on up to :data:`VERIFY_THREADS`
    threads (zlib and file reads release the GIL): what is wrong first, or None."""
    tasks = []
    for rel, want in files.items():  # sizes already checked (check_sizes): the manifest's are the files'
        recorded, segments = want[CHECKSUM], _segments(want["bytes"])
        if not isinstance(recorded, list) or len(recorded) != len(segments):
            return f"{MANIFEST} records {CHECKSUM} of file {rel} in the wrong shape"
        tasks += [(rel, offset, length, crc) for (offset, length), crc in zip(segments, recorded)]

    def check(task: tuple[str, int, int, str]) -> str | None:
        rel, offset, length, recorded = task
        got = _crc32_range(path / rel, offset, length)
        if got != recorded:
            return (
                f"file {rel} does not hold what was written (bytes {offset:,}-{offset + SEGMENT_BYTES:,}: "
                f"{CHECKSUM} {got}, recorded {recorded})"
            )
        return None

    threads = max(1, min(VERIFY_THREADS, os.cpu_count() or 1, len(tasks)))
    if threads == 1:
        return next((p for p in map(check, tasks) if p), None)
    with ThreadPoolExecutor(threads, thread_name_prefix="lance-lightning-verify") as pool:
        return next((p for p in pool.map(check, tasks) if p), None)


def stage_files(path: Path) -> list[str]:
    """The files of a stage but the manifest and the dot files (lease), sorted relative paths."""
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            rel = Path(root, f).relative_to(path).as_posix()
            if rel != MANIFEST and not f.startswith("."):
                found.append(rel)
    return sorted(found)


def read_manifest(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The stage's manifest, or None and what is wrong with it."""
    try:
        meta = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return None, f"{MANIFEST} is missing (a fill that did not finish, or a deleted file)"
    except (OSError, ValueError) as err:
        return None, f"{MANIFEST} cannot be read ({err})"
    if not isinstance(meta, dict) or meta.get("format") != STAGE_FORMAT or not isinstance(meta.get("files"), dict):
        return None, f"{MANIFEST} is not a format-{STAGE_FORMAT} lance-lightning stage manifest"
    return meta, None


def changed_since_fill(rel: str, want: dict[str, Any], st: os.stat_result) -> str | None:
    """How the file ``rel`` (stat ``st``) differs from what the fill wrote, by size and modification
    time (``mtime_ns``; a manifest written before fills recorded it: size only), or None."""
    if st.st_size != want["bytes"]:
        return f"file {rel} has {st.st_size:,} bytes, {want['bytes']:,} were written"
    mtime = want.get("mtime_ns")
    if mtime is not None and st.st_mtime_ns != mtime:
        return f"file {rel} was modified after the fill (modification time {st.st_mtime_ns} ns, the fill's {mtime} ns)"
    return None


def check_sizes(path: Path, meta: dict[str, Any]) -> str | None:
    """Cheap check (names, sizes and modification times): what is wrong, or None."""
    files: dict[str, dict[str, Any]] = meta["files"]
    present = set(stage_files(path))
    missing = sorted(set(files) - present)
    if missing:
        return f"file {missing[0]} is missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    extra = sorted(present - set(files))
    if extra:
        return f"file {extra[0]} was not written by the fill"
    for rel, want in files.items():
        problem = changed_since_fill(rel, want, (path / rel).stat())
        if problem is not None:
            return problem
    return None


def verify_stage(path: Path, meta: dict[str, Any] | None = None) -> str | None:
    """What is wrong with the stage at ``path``; None when its files are exactly its manifest's,
    with the sizes and CRC-32 recorded at the fill (reads every byte once)."""
    if not path.is_dir():
        return "the stage directory is missing"
    if meta is None:
        meta, problem = read_manifest(path)
        if meta is None:
            return problem
    try:
        problem = check_sizes(path, meta)
        if problem is not None:
            return problem
        problem = _first_mismatch(path, meta["files"])
        if problem is not None:
            return problem
    except OSError as err:
        return f"a file cannot be read: {err}"
    except (KeyError, TypeError) as err:
        return f"{MANIFEST} has a malformed file list ({err!r})"
    return None


def directory_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, f))
    return total


# -- locks and leases -------------------------------------------------------------------------------


@contextlib.contextmanager
def root_lock(root: Path) -> Iterator[None]:
    """The node's exclusive lock on a stage root: fills, removals and evictions happen under it."""
    with open(root / LOCK_FILE, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            start = time.monotonic()
            log.info("waiting for another process to fill a stage (lock %s)", root / LOCK_FILE)
            fcntl.flock(fh, fcntl.LOCK_EX)
            log.info("stage lock acquired after %.1fs", time.monotonic() - start)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Lease:
    """A shared ``flock`` on ``<stage>/.lease``, held while a process may read the stage: eviction
    never removes a stage whose lease it cannot take exclusively. Taking it marks the stage used
    (the lease file's mtime is the stage's last use). Release with :meth:`release` or ``with``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        lease = self.path / LEASE_FILE
        try:
            fd = os.open(lease, os.O_RDONLY)
        except FileNotFoundError:
            raise StageError(f"stage {str(self.path)!r} is gone (evicted or removed)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            st = os.fstat(fd)
            try:
                now = os.stat(lease)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
                raise StageError(f"stage {str(self.path)!r} was evicted or replaced while it was being opened")
            with contextlib.suppress(OSError):
                os.utime(lease)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        try:  # noqa: SIM105 - contextlib may be gone at interpreter exit
            self.release()
        except Exception:
            pass


def lease(path: str | os.PathLike[str]) -> Lease:
    """Hold the stage at ``path`` (a shared lock) until the lease is released or the process ends."""
    return Lease(path)


def last_used(path: Path) -> float:
    try:
        return (path / LEASE_FILE).stat().st_mtime
    except OSError:
        return 0.0


def remove_stage(path: Path, root: Path) -> None:
    """Take ``path`` out of the root at once (a rename), then delete it. Processes that still map its
    files keep reading them (unlinked files live until unmapped)."""
    aside = root / f"{TMP_PREFIX}{path.name}.removed-{os.getpid()}-{os.urandom(3).hex()}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    except OSError:
        aside = path
    shutil.rmtree(aside, ignore_errors=True)


def stages(root: Path) -> list[Path]:
    """The finished stages under ``root`` (directories not starting with a dot)."""
    try:
        return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except FileNotFoundError:
        return []


def free_if_unused(path: Path) -> int | None:
    """Remove ``path`` if no process holds its lease; the bytes freed, or None when in use."""
    try:
        fd = os.open(path / LEASE_FILE, os.O_RDONLY)
    except FileNotFoundError:
        fd = None  # no lease file: nobody can hold it
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
        size = directory_bytes(path)
        remove_stage(path, path.parent)
        return size
    finally:
        if fd is not None:
            os.close(fd)


def in_use(path: Path) -> bool:
    """True when some process holds a lease on the stage."""
    try:
        fd = os.open(path / LEASE_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def budget_problem(
    root: str | os.PathLike[str], needed_bytes: int, budget_bytes: int | None, *, keep: Path | None = None
) -> str | None:
    """Why a stage of ``needed_bytes`` cannot be placed under ``root`` (None: it fits, evicting
    stages not in use if needed). Counts the budget and the disk's free space. Changes nothing."""
    root = Path(root)
    if budget_bytes is not None and needed_bytes > budget_bytes:
        return f"it needs about {needed_bytes:,} bytes, more than the whole budget of {budget_bytes:,} bytes"
    held = sum(directory_bytes(p) for p in stages(root) if p != keep and in_use(p))
    if budget_bytes is not None and held + needed_bytes > budget_bytes:
        return (
            f"it needs about {needed_bytes:,} bytes and stages in use by running jobs hold {held:,} of the "
            f"{budget_bytes:,}-byte budget"
        )
    existing = [p for p in stages(root) if p != keep]
    evictable = sum(directory_bytes(p) for p in existing if not in_use(p))
    probe = root if root.exists() else next((p for p in root.parents if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    if needed_bytes > free + evictable:
        return f"it needs about {needed_bytes:,} bytes and the disk holding {str(root)!r} has {free:,} bytes free"
    return None


def fits(root: str | os.PathLike[str], needed_bytes: int, budget_bytes: int | None) -> bool:
    """Whether a stage of ``needed_bytes`` can be placed under ``root`` (see :func:`budget_problem`)."""
    return budget_problem(root, needed_bytes, budget_bytes) is None


def default_budget_bytes(root: str | os.PathLike[str] | None = None, share: float = 0.5) -> int:
    """``share`` of what stages may occupy where they live: the free space plus the stages already there."""
    root = Path(root) if root is not None else default_stage_root()
    probe = root if root.exists() else next((p for p in root.parents if p.exists()), Path("/"))
    return int(share * (shutil.disk_usage(probe).free + directory_bytes(root)))


def table_exists(meta: dict[str, Any]) -> bool | None:
    """Whether the table a stage copied still exists: looked up on disk for a local database
    (``<location>/<table>.lance``); False for a ``memory://`` table (it lives as long as the
    process that made it, which then holds the stage); None (unknown) for an object store."""
    location, table = meta.get("uri"), meta.get("table")
    if not isinstance(location, str) or not isinstance(table, str):
        return None
    if location.startswith("memory://"):
        return False
    if "://" in location and not location.startswith("file://"):
        return None
    return os.path.isdir(os.path.join(table_location(location), f"{table}.lance"))


def _table_known(path: Path) -> bool:
    """False when the stage's table is known to be gone (its stage is evicted first)."""
    meta, _ = read_manifest(path)
    return meta is None or table_exists(meta) is not False


def evict_for(root: Path, needed_bytes: int, budget_bytes: int | None, *, keep: Path) -> list[Path]:
    """Under the root lock: remove stages not in use (never ``keep``) until ``needed_bytes`` fits
    beside the rest: first those whose table no longer exists (:func:`table_exists`), then the
    least recently used. Returns what was removed."""
    removed: list[Path] = []
    if budget_bytes is None:
        return removed
    others = sorted((_table_known(p), last_used(p), p) for p in stages(root) if p != keep)
    used = sum(directory_bytes(p) for _, _, p in others)
    for known, _, path in others:
        if used + needed_bytes <= budget_bytes:
            break
        freed = free_if_unused(path)
        if freed is not None:
            why = "least recently used" if known else "its table no longer exists"
            log.info("evicted stage %s (%s bytes, %s)", path, f"{freed:,}", why)
            used -= freed
            removed.append(path)
    return removed
