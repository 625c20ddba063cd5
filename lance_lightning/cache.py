"""An opt-in local copy of the splits a run reads, for tables in object storage.

``LanceDataModule(cache="/local/dir", cache_max_bytes=...)``: at ``setup``, each stage's split
(the selected columns of its rows, at the pinned table version) is copied once into
``<cache>/<table>-v<version>-<key>/`` and every later read (every epoch, every DataLoader
worker) reads that local copy instead of the remote table.

One entry is a directory holding

``rows.lance``   a local Lance table: the split's rows, selected columns, in ascending row address
``row_ids.npy``  the split's original row addresses (sorted ``uint64``): row ``i`` of the table
                 above is original address ``row_ids[i]`` (so readers address it by position)
``meta.json``    what was copied (URI, table, version, columns, filter, rows, bytes): no secrets

The key is a hash of the table URI (and endpoint), table name, version, columns, filter and the
split's row addresses themselves, so a new table version, another column list, filter, split
spec or seed gets a new entry and nothing stale is ever read. Entries are never modified.

Concurrency: ranks on one node share the directory. The first to arrive takes an exclusive
``fcntl.flock`` on ``<cache>/.lock``, copies into ``.tmp-<entry>`` and renames it into place
(atomic); the others wait on the lock, then find the entry and read it. Use a node-local
directory: ``flock`` is not reliable on every network file system.

``cache_max_bytes`` bounds the whole cache directory: before copying, the entry's size is
estimated from a sample of its rows; if it does not fit beside what is already there, the copy
is refused with the numbers and the setting to change. Nothing is evicted automatically.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .dataset import LanceBatchDataset, TableChangedError
from .source import storage_endpoint

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
TABLE_NAME = "rows"
ROW_IDS_FILE = "row_ids.npy"
META_FILE = "meta.json"
LOCK_FILE = ".lock"
_TMP_PREFIX = ".tmp-"
_SAMPLE_ROWS = 256
_COPY_BATCH_ROWS = 8192
_SCAN_FRACTION = 0.25  # copy by a sequential scan when the split holds at least this share of the table


class CacheLimitError(ValueError):
    """The cache entry would not fit under ``cache_max_bytes``."""


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


def estimate_bytes(table: Any, row_ids: np.ndarray, columns: Sequence[str]) -> int:
    """Bytes the selected columns of ``row_ids`` take, from evenly spaced sample rows (Arrow size)."""
    n = len(row_ids)
    if n == 0:
        return 0
    sample = np.unique(row_ids[np.linspace(0, n - 1, min(n, _SAMPLE_ROWS)).astype(np.int64)])
    batch = table.take_row_ids(sample.tolist()).select(list(columns)).to_arrow()
    per_row = batch.nbytes / max(batch.num_rows, 1)
    return int(per_row * n) + 8 * n  # plus row_ids.npy


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


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return None


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


def _copy(table: Any, row_ids: np.ndarray, columns: list[str], target: Path, meta: dict[str, Any]) -> None:
    import lancedb

    target.mkdir(parents=True)
    schema = pa.schema([table.schema.field(c) for c in columns])
    reader = pa.RecordBatchReader.from_batches(schema, _batches(table, row_ids, columns, schema))
    lancedb.connect(str(target)).create_table(TABLE_NAME, reader)
    np.save(target / ROW_IDS_FILE, np.ascontiguousarray(row_ids, dtype=np.uint64))
    meta = {**meta, "bytes": directory_bytes(target)}
    (target / META_FILE).write_text(json.dumps(meta, indent=1))


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

    ``table`` is ``source`` opened at its pinned version (opened here when None).
    """
    root = Path(directory).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    row_ids = np.asarray(row_ids, dtype=np.uint64)
    columns = list(columns)
    key = cache_key(source, columns, row_ids, filter=filter)
    final = root / key
    meta = _read_meta(final)
    if meta is not None:
        return CacheEntry(final, False, meta["num_rows"], meta["bytes"])
    with _locked(root / LOCK_FILE):
        meta = _read_meta(final)
        if meta is not None:  # another rank filled it while this one waited
            return CacheEntry(final, False, meta["num_rows"], meta["bytes"])
        if table is None:
            table = source.open()
        tmp = root / f"{_TMP_PREFIX}{key}"
        shutil.rmtree(tmp, ignore_errors=True)  # left by a process that died while filling
        what = (
            f"split {split_name!r} of table {source.name!r} "
            f"(version {source.version}, {len(row_ids)} rows, columns {columns})"
        )
        needed = estimate_bytes(table, row_ids, columns)
        if max_bytes is not None:
            used = directory_bytes(root)
            if used + needed > max_bytes:
                raise CacheLimitError(
                    f"the cache at {str(root)!r} cannot hold {what}: it needs about {needed:,} bytes and "
                    f"{used:,} bytes are already there, over the limit cache_max_bytes={max_bytes:,} "
                    f"(LanceDataModule(cache_max_bytes=...), data.cache_max_bytes in Hydra). Raise the limit, "
                    "delete old entries in that directory, select fewer columns, or set cache=None to read "
                    "the table directly."
                )
        started = time.monotonic()
        meta = {
            "format": CACHE_FORMAT,
            **source.describe(),
            "split": split_name,
            "columns": columns,
            "filter": filter,
            "num_rows": len(row_ids),
            "estimated_bytes": needed,
        }
        try:
            _copy(table, row_ids, columns, tmp, meta)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        meta = _read_meta(final) or meta
        log.info("cached %s: %s bytes in %.1fs at %s", what, f"{meta['bytes']:,}", time.monotonic() - started, final)
        return CacheEntry(final, True, len(row_ids), meta["bytes"])


class CachedBatchDataset(LanceBatchDataset):
    """A :class:`LanceBatchDataset` that reads its rows from a local cache entry.

    The entry holds the split's rows in split order, so a row's offset in the cached table is
    its position in the split: ``rows`` stays None (positions are offsets) and batches are
    read from the local table like any other (range scans, takes).
    """

    def __init__(self, base: LanceBatchDataset, entry_path: str | os.PathLike[str]) -> None:
        self.__dict__.update(base.__dict__)
        self.cache_path = str(entry_path)
        self._table = None
        self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_table=None, _pid=None)
        return state  # workers read the local copy: even an in-memory source table is fine

    def table(self) -> Any:
        if self._table is None or self._pid != os.getpid():
            import lancedb

            self._table = lancedb.connect(self.cache_path).open_table(TABLE_NAME)
            self._pid = os.getpid()
        return self._table


def cached_dataset(
    dataset: LanceBatchDataset,
    row_ids: np.ndarray,
    *,
    directory: str | os.PathLike[str],
    max_bytes: int | None = None,
    filter: str | None = None,
    split_name: str = "",
    table: Any = None,
) -> CachedBatchDataset:
    """``dataset`` reading from the cache entry of ``row_ids`` (filled first if needed)."""
    entry = ensure_cached(
        dataset.source,
        table,
        row_ids,
        dataset.columns,
        directory=directory,
        max_bytes=max_bytes,
        filter=filter,
        split_name=split_name,
    )
    return CachedBatchDataset(dataset, entry.path)
