"""Reading rows of a pinned table by *offset* (position in scan order), as few calls as possible.

Every read from a LanceDB table pays a fixed cost per call (planning, opening fragment
readers: about 1-3 ms here) plus a cost per row that is about three times lower for a scan
than for a take (measured on 520-byte rows, 2 cores: a take of 16,384 contiguous offsets
reads 0.74M rows/s, a scan of the same range 1.5M). So:

* dense runs of wanted offsets (at least :data:`MIN_SCAN_ROWS` rows, at least half of the
  range wanted) are read with one range scan each (``search().offset().limit()``), and the
  unwanted rows of the range are filtered out in Arrow;
* everything else is read with one ``take_offsets`` call.

Offsets are what this module speaks because a range scan positions itself by offset; a
split's row *addresses* are mapped to offsets once per setup (:func:`offsets_of`), from one
scan of the ``_rowid`` column.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from .source import TableChangedError  # raised here too; defined with the table identity

MIN_SCAN_ROWS = 2048
"""A run of wanted offsets shorter than this is cheaper to take than to scan."""
MIN_SCAN_DENSITY = 0.5
"""A run is scanned only when at least this share of its range is wanted."""
MAX_RUN_GAP = 64
"""Wanted offsets further apart than this start a new run."""
SCAN_THREADS = 2
"""Range scans of one read in flight at once: overlaps their fixed costs (8 scans of 4,096 rows
read 1.06M rows/s one after the other, 1.21M two at a time, 1.24M four, 1.04M eight, 2 cores)."""

_ROWID_BATCH = 1 << 20
_pool: tuple[int, ThreadPoolExecutor] | None = None


def _schema(table: Any, columns: list[str]) -> pa.Schema:
    schema = table.schema
    return pa.schema([schema.field(c) for c in columns])


def _scan_pool() -> ThreadPoolExecutor:
    """This process's scan threads (made after any fork or spawn, never inherited)."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(SCAN_THREADS, thread_name_prefix="lance-scan"))
    return _pool[1]


def scan_with_row_ids(table: Any, columns: Sequence[str] = (), *, where: str | None = None) -> pa.Table:
    """``_rowid`` and ``columns`` of every row (that ``where`` keeps), in scan order: the one scan of
    row addresses (splits by column, label counts, offsets), read in 1M-row batches.

    (``to_arrow()`` reads 1,024 rows a round trip: 2.7 s for 10M row addresses instead of 0.1 s.)
    """
    batches = list(iter_with_row_ids(table, columns, where=where))
    if not batches:
        fields = [pa.field("_rowid", pa.uint64())] + [table.schema.field(c) for c in columns]
        return pa.Table.from_batches([], pa.schema(fields))
    return pa.Table.from_batches(batches)


def iter_with_row_ids(
    table: Any, columns: Sequence[str] = (), *, where: str | None = None, batch_rows: int = _ROWID_BATCH
) -> Iterator[pa.RecordBatch]:
    """The batches of :func:`scan_with_row_ids`, streamed (``columns`` and ``_rowid``, by name):
    for a pass over a table too large to hold, e.g. filling a stage."""
    # the row id alone is a column of its own; beside other columns it is asked for with with_row_id
    select = table.search().select
    query = (select(list(columns)).with_row_id(True) if columns else select(["_rowid"])).limit(None)
    if where is not None:
        query = query.where(where)
    return iter(query.to_batches(batch_rows))


COPY_READAHEAD_BATCHES = 4
COPY_IO_BUFFER_BYTES = 64 << 20


def _pylance_dataset(table: Any) -> Any:
    """``table`` as a pylance dataset at its (pinned) version, or None (no pylance, or a table it
    cannot open, such as memory://)."""
    try:
        import lance  # noqa: F401  (pylance: optional)

        return table.to_lance()
    except Exception:  # noqa: BLE001 - lancedb reads it instead
        return None


@dataclass(frozen=True)
class CopyScan:
    """What :func:`copy_scan` will read: the fragments holding the rows asked for (None: all) and
    how many rows they hold."""

    fragments: list[Any] | None
    rows: int
    dataset: Any = None  # the pylance dataset the fragments are of


def plan_copy_scan(table: Any, row_ids: np.ndarray | None = None, *, use_pylance: bool = True) -> CopyScan:
    """The fragments a copy of rows ``row_ids`` must scan: with pylance and row addresses as row
    ids, only those whose id is in the addresses' high 32 bits (a val split at the end of a 10M-row
    table scans its last fragment or two, not all ten); otherwise the whole table."""
    dataset = _pylance_dataset(table) if use_pylance and row_ids is not None else None
    if dataset is None or dataset.has_stable_row_ids:
        return CopyScan(None, table.count_rows())
    wanted = set(np.unique(np.asarray(row_ids, dtype=np.uint64) >> np.uint64(32)).tolist())
    fragments = [f for f in dataset.get_fragments() if f.fragment_id in wanted]
    return CopyScan(fragments, sum(f.count_rows() for f in fragments), dataset)


def copy_scan(
    table: Any,
    columns: Sequence[str],
    *,
    batch_rows: int,
    use_pylance: bool = True,
    plan: CopyScan | None = None,
) -> Iterator[pa.RecordBatch]:
    """The batches of :func:`iter_with_row_ids` (``columns`` and ``_rowid``) for copying a table's
    columns out (the stage fill), of the fragments ``plan`` names (default: all): through pylance's
    scanner where it is installed, with its read-ahead bounded (a slower writer otherwise lets lance
    buffer hundreds of MB: +604 MB against +292 MB over 4M rows here, and it read them in 2.9 s
    against 4.7 s); else lancedb's query over the whole table."""
    dataset = None
    if use_pylance:
        dataset = plan.dataset if plan is not None and plan.dataset is not None else _pylance_dataset(table)
    if dataset is not None:
        scanner = dataset.scanner(
            columns=list(columns),
            with_row_id=True,
            batch_size=batch_rows,
            batch_readahead=COPY_READAHEAD_BATCHES,
            io_buffer_size=COPY_IO_BUFFER_BYTES,
            fragments=None if plan is None else plan.fragments,
        )
        return iter(scanner.to_batches())
    return iter_with_row_ids(table, columns, batch_rows=batch_rows)


def scan_row_ids(table: Any, *, where: str | None = None) -> np.ndarray:
    """Every row address of ``table`` (that ``where`` keeps) in scan order (``uint64``): offset i
    holds row ``result[i]``."""
    ids = scan_with_row_ids(table, where=where).column("_rowid")
    return ids.to_numpy().astype(np.uint64, copy=False) if len(ids) else np.empty(0, np.uint64)


def offsets_of(row_ids: np.ndarray, scan_ids: np.ndarray, *, table_name: str, version: int | None) -> np.ndarray:
    """The offsets (``int64``) of ``row_ids`` in a table whose scan order is ``scan_ids``.

    Raises :class:`TableChangedError` naming the table and version when a row is missing.
    """
    row_ids = np.asarray(row_ids, dtype=np.uint64)
    if len(scan_ids) > 1 and not np.all(scan_ids[1:] > scan_ids[:-1]):
        order = np.argsort(scan_ids, kind="stable")
        sorted_ids = scan_ids[order]
    else:
        order, sorted_ids = None, scan_ids
    pos = np.searchsorted(sorted_ids, row_ids)
    found = pos < len(sorted_ids)
    found[found] = sorted_ids[pos[found]] == row_ids[found]
    if not found.all():
        raise TableChangedError(
            f"{int((~found).sum())} of {len(row_ids)} rows of the split are not in table {table_name!r} "
            f"(version {version}): rows were deleted from the version this run pinned"
        )
    return (pos if order is None else order[pos]).astype(np.int64, copy=False)


def plan_reads(offsets: np.ndarray) -> list[tuple[str, int, int]]:
    """Cut sorted, distinct ``offsets`` into reads: ``[(kind, lo, hi), ...]`` over index ranges.

    ``kind`` is ``"scan"`` (scan the table range ``offsets[lo] .. offsets[hi - 1]``) or
    ``"take"`` (take those offsets); neighbouring takes are one read. Pure: tested without a table.
    """
    n = len(offsets)
    if n == 0:
        return []
    breaks = np.flatnonzero(np.diff(offsets) > MAX_RUN_GAP) + 1
    starts, stops = np.r_[0, breaks], np.r_[breaks, n]
    count = stops - starts
    span = offsets[stops - 1] - offsets[starts] + 1
    scan = (count >= MIN_SCAN_ROWS) & (count >= MIN_SCAN_DENSITY * span)
    reads: list[tuple[str, int, int]] = []
    at = 0
    for lo, hi in zip(starts[scan].tolist(), stops[scan].tolist()):
        if lo > at:
            reads.append(("take", at, lo))
        reads.append(("scan", lo, hi))
        at = hi
    if at < n:
        reads.append(("take", at, n))
    return reads


def read_offsets(table: Any, offsets: np.ndarray, columns: Sequence[str]) -> pa.Table:
    """The rows at sorted, distinct ``offsets`` of ``table`` (``columns`` only), in that order."""
    offsets = np.asarray(offsets, dtype=np.int64)
    columns = list(columns)
    reads = plan_reads(offsets)
    takes = [offsets[lo:hi] for kind, lo, hi in reads if kind == "take"]
    scans = [(lo, hi) for kind, lo, hi in reads if kind == "scan"]

    def scan(bounds: tuple[int, int]) -> pa.Table:
        lo, hi = bounds
        first, last = int(offsets[lo]), int(offsets[hi - 1])
        query = table.search().select(columns).offset(first).limit(last - first + 1)
        # to_batches(span): one batch for the range; to_arrow() would cut it into 1,024-row
        # batches, one round trip each (a 16,384-row scan: 1.69M rows/s that way, 2.78M this way)
        batches = list(query.to_batches(last - first + 1))
        scanned = pa.Table.from_batches(batches) if batches else pa.Table.from_batches([], _schema(table, columns))
        if scanned.num_rows != last - first + 1:
            raise TableChangedError(f"scanned offsets {first}..{last} and got {scanned.num_rows} rows")
        if hi - lo != scanned.num_rows:
            wanted = np.zeros(scanned.num_rows, dtype=bool)
            wanted[offsets[lo:hi] - first] = True
            scanned = scanned.filter(pa.array(wanted))
        return scanned

    scanned = iter(_scan_pool().map(scan, scans) if len(scans) > 1 else map(scan, scans))
    taken = table.take_offsets(np.concatenate(takes).tolist()).select(columns).to_arrow() if takes else None
    if taken is not None and taken.num_rows != sum(len(t) for t in takes):
        raise TableChangedError(f"took {sum(len(t) for t in takes)} offsets and got {taken.num_rows} rows")
    pieces: list[pa.Table] = []
    taken_at = 0
    for kind, lo, hi in reads:
        if kind == "scan":
            pieces.append(next(scanned))
        else:
            assert taken is not None
            pieces.append(taken.slice(taken_at, hi - lo))
            taken_at += hi - lo
    if not pieces:
        return pa.Table.from_batches([], schema=_schema(table, columns))
    return pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
