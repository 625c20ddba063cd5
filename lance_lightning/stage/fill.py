"""Filling a stage: one pass over the pinned table, written into ``.tmp-<key>``, renamed into place.

Layout of a stage directory (``layout="flat"``, the default; ``"arrow"`` puts every column in the
Arrow file):

``col-<i>.npy``        column ``i`` when its values have a fixed width (numbers, bools, fixed-size
                       lists and fixed-shape tensors of them): ``(rows, *shape)``, the shape
                       :func:`~lance_lightning.convert.batch_to_tensors` gives; nulls stored as 0
``col-<i>.valid.npy``  its validity (bool), written only when the column has nulls
``rows.arrow``         the other columns: an uncompressed Arrow IPC file, memory-mapped to read
``schema.arrow``       the split's Arrow schema (every column, with its metadata)
``manifest.json``      what was copied (no secrets) and every file's size and CRC-32
``.lease``             the lock file of readers (see :class:`~.store.Lease`); not in the manifest

Row ``i`` of every file is the split's ``i``-th smallest row address.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import sys
import time
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..reads import TableChangedError
from ..source import scrub
from . import store
from .store import StageBudgetError, StageError, StageWarning

log = logging.getLogger("lance_lightning.stage")

ARROW_FILE = "rows.arrow"
SCHEMA_FILE = "schema.arrow"
LAYOUTS = ("flat", "arrow")
SCAN_FRACTION = 0.05
"""Read the split with one sequential scan of the table when it holds at least this share of the
table's rows (a scanned row costs ~1/20 of a taken one); else take its rows by address."""
_SCAN_BATCH = 65_536
_TAKE_BATCH = 8_192
_ARROW_BATCH_BYTES = 64 << 20  # Arrow-file record batches: few, large (a take resolves chunks)
_LEAF_TYPES = {
    pa.bool_(),
    pa.int8(),
    pa.int16(),
    pa.int32(),
    pa.int64(),
    pa.uint8(),
    pa.uint16(),
    pa.uint32(),
    pa.uint64(),
    pa.float16(),
    pa.float32(),
    pa.float64(),
}

_held: dict[str, store.Lease] = {}


def flat_spec(field: pa.Field) -> dict[str, Any] | None:
    """How a fixed-width column is stored as one flat array (None: it goes to the Arrow file)."""
    t = field.type
    shape: list[int] | None = None
    if isinstance(t, pa.FixedShapeTensorType):
        shape, t = list(t.shape), t.storage_type
    elif isinstance(t, pa.ExtensionType) or field.metadata and b"ARROW:extension:name" in field.metadata:
        return None  # bfloat16 and other extensions: their own conversion
    levels = []
    while pa.types.is_fixed_size_list(t):
        levels.append(t.list_size)
        t = t.value_type
    if t not in _LEAF_TYPES:
        return None
    dtype = pa.array([], t).to_numpy(zero_copy_only=False).dtype
    return {"dtype": dtype.str, "shape": shape if shape is not None else levels, "levels": levels}


def column_plan(schema: pa.Schema, layout: str, demoted: set[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """``{column: {"file": ..., **flat_spec}}`` for the columns stored flat; the rest go to the Arrow file."""
    if layout not in LAYOUTS:
        raise ValueError(f"stage layout must be one of {LAYOUTS}, got {layout!r}")
    plan = {}
    for i, field in enumerate(schema):
        spec = flat_spec(field) if layout == "flat" and field.name not in demoted else None
        if spec is not None:
            plan[field.name] = {"file": f"col-{i}.npy", **spec}
    return plan


def estimate_stage_bytes(table: Any, columns: Sequence[str], num_rows: int, *, sample_rows: int = 1024) -> int:
    """Bytes a stage of ``num_rows`` rows of ``columns`` will take: fixed widths from the schema,
    the others from the first ``sample_rows`` rows of the table (plus 5% and 64 KiB of slack)."""
    schema = pa.schema([table.schema.field(c) for c in columns])
    per_row = 0.0
    variable = []
    for field in schema:
        spec = flat_spec(field)
        if spec is None:
            variable.append(field.name)
        else:
            per_row += np.dtype(spec["dtype"]).itemsize * int(np.prod(spec["shape"], dtype=np.int64))
    if variable and num_rows:
        sample = table.search().select(variable).limit(sample_rows).to_arrow()
        if sample.num_rows:
            per_row += sample.nbytes / sample.num_rows
    return int(per_row * num_rows * 1.05) + (64 << 10)


# -- reading the split ------------------------------------------------------------------------------


class _NotInOrder(Exception):
    """The table's scan order is not ascending row address: read by takes instead."""


def _scan(table: Any, row_ids: np.ndarray, columns: list[str]) -> Iterator[pa.RecordBatch]:
    reader = table.search().select(columns).with_row_id(True).limit(None).to_batches(_SCAN_BATCH)
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
            raise _NotInOrder
        done += len(kept)
        yield (batch if keep.all() else batch.filter(pa.array(keep))).select(columns)
    if done != len(row_ids):
        raise TableChangedError(f"the split has {len(row_ids):,} rows but the table scan found {done:,} of them")


def _take(table: Any, row_ids: np.ndarray, columns: list[str]) -> Iterator[pa.RecordBatch]:
    for start in range(0, len(row_ids), _TAKE_BATCH):
        chunk = row_ids[start : start + _TAKE_BATCH]
        got = table.take_row_ids(chunk.tolist()).select(columns).to_arrow()
        if got.num_rows != len(chunk):
            raise TableChangedError(f"asked the table for {len(chunk):,} rows to stage and got {got.num_rows:,}")
        yield from got.select(columns).to_batches()


# -- writing -------------------------------------------------------------------------------------


class _OverBudget(Exception):
    """The rows copied so far already pass the room the budget leaves (the estimate was low)."""


class _Demote(Exception):
    """A fixed-width column holds nulls inside its values: it goes to the Arrow file instead."""

    def __init__(self, column: str) -> None:
        super().__init__(column)
        self.column = column


def _flat_values(array: pa.Array, spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """``(values (rows, *shape), validity or None)`` of one chunk of a flat column; nulls as 0."""
    n = len(array)
    valid = array.is_valid().to_numpy(zero_copy_only=False) if array.null_count else None
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    for size in spec["levels"]:  # the values behind null slots too: row i is values[i*size:(i+1)*size]
        array = array.values.slice(array.offset * size, len(array) * size)
    if array.null_count:
        if valid is None or spec["levels"]:
            raise _Demote("")
        array = array.fill_null(False if pa.types.is_boolean(array.type) else 0)
    values = array.to_numpy(zero_copy_only=False)
    return values.reshape(n, *spec["shape"]), valid


class _NpyWriter:
    """One ``.npy`` file written front to back, its CRC-32 computed on the way."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        )
        self.fh = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.crc = 0
        self.write(header.getvalue())

    def write(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        self.crc = zlib.crc32(view, self.crc)
        self.fh.write(view)

    def close(self) -> str:
        self.fh.close()
        return f"{self.crc:08x}"


class _Progress:
    """``rows, MB/s`` on one line of stderr (a TTY only); nothing otherwise."""

    def __init__(self, total: int, what: str, enabled: bool) -> None:
        self.total, self.what = total, what
        self.enabled = enabled and sys.stderr.isatty()
        self.rows = self.bytes = 0
        self.start = self.last = time.monotonic()

    def update(self, rows: int, nbytes: int) -> None:
        self.rows += rows
        self.bytes += nbytes
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.2 or self.rows == self.total):
            self.last = now
            rate = self.bytes / max(now - self.start, 1e-9) / 1e6
            pct = 100 * self.rows / max(self.total, 1)
            sys.stderr.write(f"\rstaging {self.what}: {self.rows:,}/{self.total:,} rows ({pct:.0f}%), {rate:,.0f} MB/s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _write(
    batches: Iterator[pa.RecordBatch],
    target: Path,
    schema: pa.Schema,
    plan: dict[str, dict[str, Any]],
    n: int,
    progress: _Progress,
    limit: int | None,
) -> dict[str, dict[str, Any]]:
    """Write the stage's data files into ``target``; returns their manifest (size, CRC-32)."""
    flat = {name: _NpyWriter(target / s["file"], np.dtype(s["dtype"]), (n, *s["shape"])) for name, s in plan.items()}
    validity: dict[str, np.ndarray] = {}
    others = pa.schema([f for f in schema if f.name not in plan])
    arrow = pa.ipc.new_file(str(target / ARROW_FILE), others) if len(others) else None
    pending: list[pa.RecordBatch] = []
    pending_bytes = done = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        if pending and arrow is not None:
            arrow.write_batch(pa.concat_batches(pending) if len(pending) > 1 else pending[0])
        pending, pending_bytes = [], 0

    try:
        for batch in batches:
            if batch.schema != schema:
                batch = batch.cast(schema)
            rows = batch.num_rows
            for name, writer in flat.items():
                try:
                    values, valid = _flat_values(batch.column(name), plan[name])
                except _Demote:
                    raise _Demote(name) from None
                writer.write(np.ascontiguousarray(values))
                if valid is not None:
                    validity.setdefault(name, np.ones(n, dtype=bool))[done : done + rows] = valid
            if arrow is not None:
                part = pa.RecordBatch.from_arrays([batch.column(f.name) for f in others], schema=others)
                pending.append(part)
                pending_bytes += part.nbytes
                if pending_bytes >= _ARROW_BATCH_BYTES:
                    flush()
            done += rows
            progress.update(rows, batch.nbytes)
            if limit is not None and progress.bytes > limit:
                raise _OverBudget
        flush()
    finally:
        crcs = {plan[name]["file"]: w.close() for name, w in flat.items()}
        if arrow is not None:
            arrow.close()
    if done != n:
        raise TableChangedError(f"staged {done:,} rows of a {n:,}-row split")
    for name, valid in validity.items():
        path = target / plan[name]["file"].replace(".npy", ".valid.npy")
        np.save(path, valid)
        crcs[path.name] = store.crc32_file(path)
    (target / SCHEMA_FILE).write_bytes(schema.serialize().to_pybytes())
    for name in (ARROW_FILE, SCHEMA_FILE):
        if (target / name).exists():
            crcs[name] = store.crc32_file(target / name)
    return {rel: {"bytes": (target / rel).stat().st_size, store.CHECKSUM: crc} for rel, crc in sorted(crcs.items())}


def _fill(
    source: Any,
    table: Any,
    row_ids: np.ndarray,
    columns: list[str],
    tmp: Path,
    meta: dict[str, Any],
    progress: _Progress,
    limit: int | None,
) -> dict[str, Any]:
    schema = pa.schema([table.schema.field(c) for c in columns])
    demoted: set[str] = set()
    scan = len(row_ids) >= SCAN_FRACTION * max(table.count_rows(), 1)
    while True:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / store.LEASE_FILE).touch()
        plan = column_plan(schema, meta["layout"], demoted)
        progress.rows = progress.bytes = 0
        batches = _scan(table, row_ids, columns) if scan else _take(table, row_ids, columns)
        try:
            files = _write(batches, tmp, schema, plan, len(row_ids), progress, limit)
        except _Demote as err:
            demoted.add(err.column)
            log.info("column %r has nulls inside its values: staged in the Arrow file", err.column)
            continue
        except _NotInOrder:
            log.info("table %r does not scan in row-address order: staging by takes", source.name)
            scan = False
            continue
        meta = {**meta, "flat": plan, "files": files, "bytes": sum(f["bytes"] for f in files.values())}
        (tmp / store.MANIFEST).write_text(json.dumps(meta, indent=1))
        return meta


def ensure_stage(
    source: Any,
    table: Any,
    row_ids: np.ndarray,
    columns: Sequence[str],
    *,
    root: str | os.PathLike[str] | None = None,
    budget_bytes: int | None = None,
    split_name: str = "",
    filter: str | None = None,
    progress: bool = True,
    layout: str = "flat",
    budget_setting: str = "stage_budget_bytes",
) -> Path:
    """The stage of these rows, filled now unless another process of the node did; verified (full
    CRC-32) before it is returned. A stage that fails verification is removed and rebuilt once, with a
    :class:`StageWarning`. This process keeps a lease on the returned stage (nothing evicts it) until
    :func:`release_stage`. Raises :class:`StageBudgetError` when it does not fit ``budget_bytes``
    after evicting least-recently-used stages not in use. ``table`` is ``source`` opened at its
    pinned version (opened here when None)."""
    root = Path(root if root is not None else store.default_stage_root()).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    row_ids = np.sort(np.asarray(row_ids, dtype=np.uint64))
    if len(row_ids) > 1 and not np.all(row_ids[1:] > row_ids[:-1]):
        raise ValueError(f"split {split_name!r}: row ids must be distinct")
    columns = list(columns)
    final = root / store.stage_key(source, columns, row_ids, filter=filter, layout=layout)
    what = store.describe(source, split_name, len(row_ids), columns)
    for attempt in range(2):
        seen, problem = None, None
        held = _try_lease(final)
        if held is not None:
            meta, problem = store.read_manifest(final)
            if meta is not None:
                seen = meta.get("fill_id")
                problem = store.verify_stage(final, meta)
                if problem is None:
                    _keep(final, held)
                    return final
            held.release()
        elif final.exists():
            problem = f"its {store.LEASE_FILE} file is missing"
        with store.root_lock(root):
            now, _ = store.read_manifest(final)
            if attempt == 0 and now is not None and now.get("fill_id") != seen:
                continue  # filled or rebuilt by another process while this one waited: verify that
            tmp = root / f"{store.TMP_PREFIX}{final.name}"
            if final.exists() or tmp.exists():
                if final.exists():
                    problem = problem or store.verify_stage(final) or "it was replaced while being checked"
                    where = final
                else:
                    problem, where = "a fill that did not finish left it half-made", tmp
                warnings.warn(
                    f"lance-lightning stage {str(where)!r} ({what}) is not used: {problem}. It is rebuilt from the "
                    "table now.",
                    StageWarning,
                    stacklevel=2,
                )
                store.remove_stage(final, root)
            _fill_locked(
                source,
                table,
                row_ids,
                columns,
                root,
                final,
                budget_bytes,
                filter,
                split_name,
                what,
                progress,
                layout,
                budget_setting,
            )
            _keep(final, store.Lease(final))
            return final
    raise AssertionError("unreachable")  # the second attempt always returns


def _try_lease(path: Path) -> store.Lease | None:
    try:
        return store.Lease(path)
    except StageError:
        return None


def _keep(path: Path, held: store.Lease) -> None:
    old = _held.pop(str(path), None)
    _held[str(path)] = held
    if old is not None:
        old.release()


def release_stage(path: str | os.PathLike[str]) -> None:
    """Drop the lease :func:`ensure_stage` left this process holding on ``path`` (readers keep theirs)."""
    held = _held.pop(str(Path(path)), None)
    if held is not None:
        held.release()


def _budget_error(
    what: str, needed: int, budget: int | None, setting: str, problem: str, root: Path
) -> StageBudgetError:
    return StageBudgetError(
        f"cannot stage {what} under {str(root)!r}: {problem} (about {needed:,} bytes needed; staging budget "
        f"{setting}={budget if budget is None else f'{budget:,}'}). Raise {setting}, free space, select fewer "
        "columns, or read from the table."
    )


def _fill_locked(
    source: Any,
    table: Any,
    row_ids: np.ndarray,
    columns: list[str],
    root: Path,
    final: Path,
    budget: int | None,
    filter: str | None,
    split_name: str,
    what: str,
    progress: bool,
    layout: str,
    setting: str,
) -> None:
    """Copy the split into ``.tmp-<key>`` and rename it into place. Called under the root lock."""
    for leftover in root.glob(f"{store.TMP_PREFIX}*"):  # left by fillers that died: none runs now
        shutil.rmtree(leftover, ignore_errors=True)
    if table is None:
        table = source.open()
    needed = estimate_stage_bytes(table, columns, len(row_ids))
    # first whether it can fit at all (counting what eviction could free), then evict: a split that
    # never fits must not remove the stages of other jobs on its way to being refused
    problem = store.budget_problem(root, needed, budget, keep=final)
    if problem is not None:
        raise _budget_error(what, needed, budget, setting, problem, root)
    store.evict_for(root, needed, budget, keep=final)
    tmp = root / f"{store.TMP_PREFIX}{final.name}"
    meta = {
        "format": store.STAGE_FORMAT,
        "layout": layout,
        "uri": scrub(source.uri, source.storage_options),
        "table": source.name,
        "version": source.version,
        "version_time": source.version_time,
        "columns": columns,
        "filter": filter,
        "split": split_name,
        "rows": len(row_ids),
        "fill_id": os.urandom(8).hex(),
    }
    bar = _Progress(len(row_ids), f"split {split_name!r}", progress)
    started = time.monotonic()
    try:
        others = sum(store.directory_bytes(p) for p in store.stages(root) if p != final)
        limit = None if budget is None else budget - others
        try:
            meta = _fill(source, table, row_ids, columns, tmp, meta, bar, limit)
        except _OverBudget:
            problem = (
                f"the estimate was low: after {bar.rows:,} of {len(row_ids):,} rows it had copied {bar.bytes:,} bytes, "
                f"over the {limit:,} bytes the budget leaves beside stages in use"
            )
            raise _budget_error(what, needed, budget, setting, problem, root) from None
        bar.close()
        if limit is not None and meta["bytes"] > limit:
            problem = f"it takes {meta['bytes']:,} bytes and the budget leaves {limit:,} beside stages in use"
            raise _budget_error(what, meta["bytes"], budget, setting, problem, root)
        os.rename(tmp, final)
    except BaseException:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.monotonic() - started
    log.info(
        "staged %s: %s rows, %s bytes in %.1fs (%.0f MB/s) at %s",
        what,
        f"{len(row_ids):,}",
        f"{meta['bytes']:,}",
        seconds,
        meta["bytes"] / max(seconds, 1e-9) / 1e6,
        final,
    )
