"""An opt-in local copy of the splits a run reads, for tables in object storage.

``LanceDataModule(cache="/local/dir", cache_max_bytes=...)``: at ``setup``, each stage's split
(the selected columns of its rows, at the pinned table version) is copied once into
``<cache>/<table>-v<version>-<key>/`` and every later read (every epoch, every DataLoader
worker) reads that local copy instead of the remote table.

One entry is a directory holding

``rows.lance``   a local Lance table: the split's rows, selected columns, in ascending row address
``row_ids.npy``  the split's original row addresses (sorted ``uint64``): row ``i`` of the table
                 above is original address ``row_ids[i]`` (so readers address it by position)
``meta.json``    what was copied (URI, table, version, columns, filter, rows, bytes: no secrets)
                 and the manifest: every other file of the entry with its size and CRC-32

The key is a hash of the table URI (and endpoint), table name, version, columns, filter and the
split's row addresses themselves, so a new table version, another column list, filter, split
spec or seed gets a new entry and nothing stale is ever read. Entries are never modified.

Verification: an entry is used only if what is read is what was written. At every ``setup``
(:func:`verify_entry`) its files must be exactly those of the manifest, with the recorded sizes
and checksums (CRC-32, ~0.9 GB/s here: ~0.11 s for a 100 MB entry). An entry that fails (a file
changed, truncated, deleted or added; ``meta.json`` missing or unreadable; a fill that never
finished) is never served: it is rebuilt once from the table, with a :class:`CacheEntryWarning`
naming its path, split, table and what was wrong. A read that fails later (a worker, mid-epoch)
verifies the entry again, and a damaged entry is reported as a :class:`CacheEntryError` naming
it instead of a raw Lance error; the next ``setup`` rebuilds it.

Concurrency: ranks on one node share the directory. The first to arrive takes an exclusive
``fcntl.flock`` on ``<cache>/.lock``, copies into ``.tmp-<entry>`` and renames it into place
(atomic); the others wait on the lock, then find the entry, verify it and read it. Leftover
``.tmp-*`` directories (a filler that died) are removed by the next filler. Use a node-local
directory: ``flock`` is not reliable on every network file system.

``cache_max_bytes`` bounds the whole cache directory on the bytes actually written (no estimate
from sample rows): the copy is checked while it is written and stopped, its partial entry
removed, once what it wrote plus what is already there passes the limit; a finished entry over
the limit is never kept. The :class:`CacheLimitError` names the split, the numbers and the
setting. Nothing is evicted automatically.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .dataset import LanceBatchDataset, TableChangedError
from .source import TableSource, storage_endpoint

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
TABLE_NAME = "rows"
ROW_IDS_FILE = "row_ids.npy"
META_FILE = "meta.json"
LOCK_FILE = ".lock"
CHECKSUM = "crc32"
"""zlib's CRC-32, read in 1 MiB chunks: measured 0.92 GB/s on a 100 MB entry file here (adler32
0.95, sha1 0.53, sha256 0.48, md5 0.23, blake2b 0.25 GB/s; reading alone 0.8-7.6 GB/s cold/warm).
It detects accidental damage (every burst up to 32 bits, anything else but 1 in 2**32), which is
what it is for: it is not a defence against someone forging an entry."""
_CHUNK = 1 << 20
_TMP_PREFIX = ".tmp-"
_COPY_BATCH_ROWS = 8192
_CHECK_BYTES = 4 << 20  # the copy is checked against cache_max_bytes before each piece of this size
_SCAN_FRACTION = 0.25  # copy by a sequential scan when the split holds at least this share of the table


class CacheLimitError(ValueError):
    """The cache entry would not fit under ``cache_max_bytes``."""


class CacheEntryError(RuntimeError):
    """A cache entry does not hold what was written into it (found by a read that failed)."""


class CacheEntryWarning(UserWarning):
    """A cache entry failed verification and is rebuilt from the table."""


@dataclass(frozen=True)
class CacheEntry:
    """A completed cache entry, and whether this process filled it (False: found it there)."""

    path: Path
    filled: bool
    num_rows: int
    bytes: int


def cache_key(source: Any, columns: Sequence[str], row_ids: np.ndarray, *, filter: str | None) -> str:
    """The entry's directory name: readable prefix plus a hash of everything that decides its content."""
    if source.version is None:
        raise ValueError("a cache entry needs a pinned table version")
    rows = np.ascontiguousarray(row_ids, dtype=np.uint64)
    payload = {
        "format": CACHE_FORMAT,
        "uri": source.uri,
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


def directory_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, f))
    return total


# -- verification: a manifest of the files written, checked at open ----------------------------


def file_checksum(path: str | os.PathLike[str]) -> str:
    """The file's CRC-32 (see :data:`CHECKSUM`), as 8 hex digits."""
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    crc = 0
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
    return f"{crc:08x}"


def entry_files(path: Path) -> list[str]:
    """The files under ``path`` but ``meta.json``, as sorted relative POSIX paths."""
    found = []
    for root, _, files in os.walk(path):
        for f in files:
            rel = Path(root, f).relative_to(path).as_posix()
            if rel != META_FILE:
                found.append(rel)
    return sorted(found)


def file_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """Every file under ``path`` (but ``meta.json``) with its size and checksum: what verification expects."""
    return {
        rel: {"bytes": (path / rel).stat().st_size, CHECKSUM: file_checksum(path / rel)} for rel in entry_files(path)
    }


def read_meta(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The entry's ``meta.json``, or None and what is wrong with it."""
    try:
        text = (path / META_FILE).read_text()
    except FileNotFoundError:
        return None, f"{META_FILE} is missing (a fill that did not finish, or a deleted file)"
    except OSError as err:
        return None, f"{META_FILE} cannot be read: {err}"
    try:
        meta = json.loads(text)
    except ValueError as err:
        return None, f"{META_FILE} is not valid JSON ({err})"
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        return None, f"{META_FILE} is not a format-{CACHE_FORMAT} lance-lightning cache entry"
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        return None, f"{META_FILE} lists no files (written before entries were verified)"
    return meta, None


def verify_entry(path: Path, meta: dict[str, Any] | None = None) -> str | None:
    """What is wrong with the entry at ``path``; None when its files are exactly those of its
    manifest, each with the size and checksum recorded when it was filled.

    Cheap checks (names, sizes) come first; checksums read every byte once.
    """
    path = Path(path)
    if not path.is_dir():
        return "the entry directory is missing"
    if meta is None:
        meta, problem = read_meta(path)
        if meta is None:
            return problem
    files: dict[str, dict[str, Any]] = meta["files"]
    present = set(entry_files(path))
    missing = sorted(set(files) - present)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return f"file {missing[0]} is missing{more}"
    extra = sorted(present - set(files))
    if extra:
        return f"file {extra[0]} was not written by the fill"
    try:
        for rel, want in files.items():
            size = (path / rel).stat().st_size
            if size != want["bytes"]:
                return f"file {rel} has {size:,} bytes, {want['bytes']:,} were written"
        for rel, want in files.items():
            got = file_checksum(path / rel)
            if got != want[CHECKSUM]:
                return f"file {rel} does not hold what was written ({CHECKSUM} {got}, recorded {want[CHECKSUM]})"
    except OSError as err:
        return f"a file cannot be read: {err}"
    except (KeyError, TypeError) as err:
        return f"{META_FILE} has a malformed file list ({err!r})"
    return None


# -- filling ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as fh:
        start = time.monotonic()
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to fill the cache (lock %s)", path)
            fcntl.flock(fh, fcntl.LOCK_EX)
            log.info("cache lock %s acquired after %.1fs", path, time.monotonic() - start)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fill_id(path: Path) -> str | None:
    """The id of the fill that wrote ``path``'s meta.json (None: no readable one)."""
    meta, _ = read_meta(path)
    return None if meta is None else meta.get("fill_id")


def _batches(table: Any, row_ids: np.ndarray, columns: list[str], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The selected columns of ``row_ids`` (sorted), in that order, in batches of the target schema."""
    total = table.count_rows()
    if len(row_ids) >= _SCAN_FRACTION * total:
        # Most of the table: one sequential scan (the fastest read from object storage), keeping
        # the split's rows. A scan yields rows in ascending address order; that is checked below.
        reader = table.search().select(columns).with_row_id(True).limit(None).to_batches(_COPY_BATCH_ROWS)
        done = 0
        for batch in reader:
            ids = batch.column("_rowid").to_numpy().astype(np.uint64, copy=False)
            pos = np.searchsorted(row_ids, ids)
            keep = pos < len(row_ids)
            keep[keep] = row_ids[pos[keep]] == ids[keep]
            if not keep.any():
                continue
            kept = ids[keep]
            if not np.array_equal(kept, row_ids[done : done + len(kept)]):
                raise RuntimeError("the table scan did not return rows in ascending address order")
            done += len(kept)
            picked = batch.filter(pa.array(keep))
            yield pa.RecordBatch.from_arrays([picked.column(c) for c in columns], schema=schema)
        if done != len(row_ids):
            raise TableChangedError(f"the split has {len(row_ids)} rows but the table scan found {done} of them")
        return
    for start in range(0, len(row_ids), _COPY_BATCH_ROWS):
        chunk = row_ids[start : start + _COPY_BATCH_ROWS]
        got = table.take_row_ids(chunk.tolist()).select(columns).to_arrow()
        if got.num_rows != len(chunk):
            raise TableChangedError(f"asked for {len(chunk)} rows to cache and got {got.num_rows}")
        for batch in got.select(columns).cast(schema).to_batches():
            yield batch


class _OverBudget(Exception):
    def __init__(self, written: int, rows: int) -> None:
        super().__init__(f"{written:,} bytes written after {rows:,} rows")
        self.written, self.rows = written, rows


class _Feed:
    """The batches handed to the Lance writer, cut into pieces of at most ``_CHECK_BYTES``, each
    checked first against the byte budget: what is on disk under ``target``. The writer buffers
    before it writes (measured: 1 KB vectors reached the disk ~4 MB behind; a fast producer of
    variable-size blobs got 35 MB ahead), so a copy stops that much past the budget, while the
    finished entry is checked exactly and never kept over it. Also remembers the exception that
    stopped the batches: the writer reports it as a RuntimeError that has lost its type.
    """

    def __init__(self, batches: Iterable[pa.RecordBatch], target: Path, budget: int | None) -> None:
        self.batches, self.target, self.budget = batches, target, budget
        self.rows = 0
        self.error: BaseException | None = None

    def check(self) -> None:
        if self.budget is not None:
            written = directory_bytes(self.target)
            if written > self.budget:
                raise _OverBudget(written, self.rows)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        try:
            for batch in self.batches:
                # pieces of at most _CHECK_BYTES (zero-copy slices): large rows are checked often
                step = max(1, int(batch.num_rows * _CHECK_BYTES / max(batch.nbytes, 1)))
                for start in range(0, batch.num_rows, step):
                    piece = batch.slice(start, step)
                    self.check()
                    yield piece
                    self.rows += piece.num_rows
        except Exception as err:
            self.error = err
            raise


def _copy(
    table: Any, row_ids: np.ndarray, columns: list[str], target: Path, meta: dict[str, Any], budget: int | None
) -> dict[str, Any]:
    """Write the entry into ``target``: the rows, their addresses, then meta.json with the manifest.
    Raises :class:`_OverBudget` as soon as what is on disk passes ``budget`` bytes."""
    import lancedb

    target.mkdir(parents=True)
    schema = pa.schema([table.schema.field(c) for c in columns])
    feed = _Feed(_batches(table, row_ids, columns, schema), target, budget)
    reader = pa.RecordBatchReader.from_batches(schema, iter(feed))
    try:
        lancedb.connect(str(target)).create_table(TABLE_NAME, reader)
    except Exception:
        if feed.error is not None:
            raise feed.error from None
        raise
    np.save(target / ROW_IDS_FILE, np.ascontiguousarray(row_ids, dtype=np.uint64))
    files = file_manifest(target)
    meta = {**meta, "bytes": sum(f["bytes"] for f in files.values()), "checksum": CHECKSUM, "files": files}
    text = json.dumps(meta, indent=1)
    if budget is not None and meta["bytes"] + len(text) > budget:
        raise _OverBudget(meta["bytes"] + len(text), len(row_ids))
    (target / META_FILE).write_text(text)
    return meta


def _remove(path: Path, root: Path) -> None:
    """Take ``path`` out of the cache at once (a rename), then delete it."""
    aside = root / f"{_TMP_PREFIX}{path.name}.removed-{os.getpid()}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    except OSError:
        aside = path
    shutil.rmtree(aside, ignore_errors=True)


def ensure_cached(
    source: Any,
    table: Any,
    row_ids: np.ndarray,
    columns: Sequence[str],
    *,
    directory: str | os.PathLike[str],
    max_bytes: int | None = None,
    filter: str | None = None,
    split_name: str = "",
) -> CacheEntry:
    """The cache entry of these rows, filled now unless another process did (see module docstring).

    The entry is verified before it is used; one that fails is rebuilt (with a warning).
    ``table`` is ``source`` opened at its pinned version (opened here when None).
    """
    root = Path(directory).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    row_ids = np.asarray(row_ids, dtype=np.uint64)
    columns = list(columns)
    final = root / cache_key(source, columns, row_ids, filter=filter)
    what = describe(source, split_name, len(row_ids), columns)
    for attempt in range(2):
        meta, problem = read_meta(final)
        if meta is not None:
            problem = verify_entry(final, meta)
            if problem is None:
                return CacheEntry(final, False, meta["num_rows"], meta["bytes"])
        seen = None if meta is None else meta.get("fill_id")
        with _locked(root / LOCK_FILE):
            now = _fill_id(final)
            if attempt == 0 and now is not None and now != seen:
                continue  # filled or rebuilt by another process while this one waited: verify that
            if final.exists():
                problem = problem or verify_entry(final)
                warnings.warn(
                    f"lance-lightning cache entry {str(final)!r} ({what}) is not used: {problem}. "
                    "It is rebuilt from the table now.",
                    CacheEntryWarning,
                    stacklevel=2,
                )
                _remove(final, root)
            return _fill(source, table, row_ids, columns, root, final, max_bytes, filter, split_name, what)
    raise AssertionError("unreachable")  # the second attempt always returns


def describe(source: Any, split_name: str, num_rows: int, columns: Sequence[str]) -> str:
    """What an entry holds, for messages: split, table, version, rows, columns."""
    return (
        f"split {split_name!r} of table {source.name!r}, version {source.version}, "
        f"{num_rows:,} rows, columns {list(columns)}"
    )


def _fill(
    source: Any,
    table: Any,
    row_ids: np.ndarray,
    columns: list[str],
    root: Path,
    final: Path,
    max_bytes: int | None,
    filter: str | None,
    split_name: str,
    what: str,
) -> CacheEntry:
    """Copy the split into ``.tmp-<entry>`` and rename it into place. Called under the lock."""
    for leftover in root.glob(f"{_TMP_PREFIX}*"):  # left by fillers that died: none runs now
        shutil.rmtree(leftover, ignore_errors=True)
    if table is None:
        table = source.open()
    used = directory_bytes(root)
    tmp = root / f"{_TMP_PREFIX}{final.name}"
    started = time.monotonic()
    meta = {
        "format": CACHE_FORMAT,
        **source.describe(),
        "split": split_name,
        "columns": columns,
        "filter": filter,
        "num_rows": len(row_ids),
        "fill_id": os.urandom(8).hex(),
    }
    try:
        meta = _copy(table, row_ids, columns, tmp, meta, None if max_bytes is None else max_bytes - used)
        os.rename(tmp, final)
    except _OverBudget as over:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CacheLimitError(
            f"the cache at {str(root)!r} cannot hold {what}: copying it wrote "
            f"{over.written:,} bytes (after {over.rows:,} of {len(row_ids):,} rows) beside the {used:,} bytes "
            f"already there, over the limit cache_max_bytes={max_bytes:,} (LanceDataModule(cache_max_bytes=...), "
            "data.cache_max_bytes in Hydra). The partial copy was removed. Raise the limit, delete old entries "
            "in that directory, select fewer columns, or set cache=None to read the table directly."
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("cached %s: %s bytes in %.1fs at %s", what, f"{meta['bytes']:,}", time.monotonic() - started, final)
    return CacheEntry(final, True, len(row_ids), meta["bytes"])


# -- reading ------------------------------------------------------------------------------------


class CachedBatchDataset(LanceBatchDataset):
    """A :class:`LanceBatchDataset` whose source is a local cache entry (a :class:`TableSource`
    pointing at the entry's table).

    The entry holds the split's rows in split order, so a row's offset in the cached table is
    its position in the split: ``rows`` is None (positions are offsets) and batches are read from
    the local table like any other (range scans, takes). A read that fails verifies the entry
    again (see :meth:`read_arrow`).
    """

    def __init__(
        self,
        entry_path: str | os.PathLike[str],
        columns: Sequence[str],
        *,
        num_rows: int,
        description: str = "a cached split",
        transform: Any = None,
        nulls: Any = "raise",
    ) -> None:
        super().__init__(
            TableSource(str(entry_path), TABLE_NAME), columns, num_rows=num_rows, transform=transform, nulls=nulls
        )
        self.cache_path = str(entry_path)
        self.cache_description = description

    def read_arrow(self, offsets: Sequence[int] | np.ndarray) -> pa.Table:
        """The rows at ``offsets``; when the read fails, the entry is verified: a damaged entry is
        reported as a :class:`CacheEntryError` naming it (not a raw Lance error or panic)."""
        try:
            return super().read_arrow(offsets)
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as err:  # Lance's Rust panics are BaseExceptions
            where = f"cache entry {self.cache_path!r} ({self.cache_description})"
            problem = verify_entry(Path(self.cache_path))
            if problem is not None:
                raise CacheEntryError(
                    f"a read from {where} failed ({type(err).__name__}: {err}) and the entry no longer holds "
                    f"what was written: {problem}. The next setup rebuilds it; or delete that directory."
                ) from err
            if not isinstance(err, Exception):
                raise CacheEntryError(f"a read from {where} failed ({type(err).__name__}: {err})") from err
            if hasattr(err, "add_note"):  # Python 3.11+
                err.add_note(f"while reading {where}; its files still match what was written")
            raise


def cached_dataset(
    source: TableSource,
    columns: Sequence[str],
    row_ids: np.ndarray,
    *,
    directory: str | os.PathLike[str],
    max_bytes: int | None = None,
    filter: str | None = None,
    split_name: str = "",
    table: Any = None,
    transform: Any = None,
    nulls: Any = "raise",
) -> CachedBatchDataset:
    """A reader of the cache entry of ``row_ids`` of ``source`` (filled first if needed, verified)."""
    entry = ensure_cached(
        source, table, row_ids, columns, directory=directory, max_bytes=max_bytes, filter=filter, split_name=split_name
    )
    return CachedBatchDataset(
        entry.path,
        columns,
        num_rows=len(row_ids),
        description=describe(source, split_name, len(row_ids), columns),
        transform=transform,
        nulls=nulls,
    )
