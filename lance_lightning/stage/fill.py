"""Filling a stage: one pass over the pinned table, written into ``.tmp-<key>``, renamed into place.

What the stage directory holds is in :mod:`.plan`; how its files are written, in :mod:`.write`. This
module reads the split from the table, keeps to the budget, and guards the fill with the node lock
and the leases of :mod:`.store`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..readahead import read_ahead
from ..reads import CopyScan, TableChangedError, copy_scan, plan_copy_scan
from ..source import scrub
from . import store
from .plan import column_plan, estimate_stage_bytes
from .store import StageBudgetError, StageError, StageWarning
from .write import Demote, OverBudget, Progress, write_files

log = logging.getLogger("lance_lightning.stage")

SCAN_FRACTION = 0.05
"""Read the split with one sequential scan of the table when it holds at least this share of the
table's rows (a scanned row costs ~1/20 of a taken one); else take its rows by address."""
_SCAN_BATCH = 16_384
FILL_BATCH_BYTES = 8 << 20
"""About the bytes of one batch the fill reads (fewer rows a batch than ``_SCAN_BATCH`` where rows
are large): the fill holds a few batches at once (read ahead, being written), so 16k rows of a
5 KiB image (88 MB a batch) made a fill of 270 MB of images peak at +730 MB in the training process."""
SCAN_WITH_PYLANCE = True
"""Scan with pylance where it is installed (:func:`..reads.copy_scan`); False: lancedb's query."""
_TAKE_BATCH = 8_192
CHILD_FILL_BYTES: int | None = 64 << 20
"""A fill of at least this many bytes (estimated) runs in a child process (:mod:`.child`), so that the
memory its read allocates ends with the child instead of staying with the training process (50k
5.3 KiB images: +409 MB peak and +168 MB held in-process). None: always in this process. Smaller
fills stay in this process: starting the child costs ~1 s and their read holds little."""

_held: dict[str, store.Lease] = {}


# -- reading the split ------------------------------------------------------------------------------


class _NotInOrder(Exception):
    """The table's scan order is not ascending row address: read by takes instead."""


def fill_batch_rows(row_bytes: float) -> int:
    """Rows a batch of the fill reads, for rows of about ``row_bytes`` (:data:`FILL_BATCH_BYTES`)."""
    return int(min(_SCAN_BATCH, max(64, FILL_BATCH_BYTES // max(1.0, row_bytes))))


def _scan(
    table: Any, row_ids: np.ndarray, columns: list[str], plan: CopyScan, batch_rows: int = _SCAN_BATCH
) -> Iterator[pa.RecordBatch]:
    reader = copy_scan(table, columns, batch_rows=batch_rows, use_pylance=SCAN_WITH_PYLANCE, plan=plan)
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


def _take(
    table: Any, row_ids: np.ndarray, columns: list[str], batch_rows: int = _TAKE_BATCH
) -> Iterator[pa.RecordBatch]:
    step = min(_TAKE_BATCH, batch_rows)
    for start in range(0, len(row_ids), step):
        chunk = row_ids[start : start + step]
        got = table.take_row_ids(chunk.tolist()).select(columns).to_arrow()
        if got.num_rows != len(chunk):
            raise TableChangedError(f"asked the table for {len(chunk):,} rows to stage and got {got.num_rows:,}")
        yield from got.select(columns).to_batches()


def _fill(
    source: Any,
    table: Any,
    row_ids: np.ndarray,
    columns: list[str],
    tmp: Path,
    meta: dict[str, Any],
    progress: Progress,
    limit: int | None,
    batch_rows: int = _SCAN_BATCH,
) -> dict[str, Any]:
    schema = pa.schema([table.schema.field(c) for c in columns])
    demoted: set[str] = set()
    plan_scan = plan_copy_scan(table, row_ids, use_pylance=SCAN_WITH_PYLANCE)  # the fragments holding the split
    scan = len(row_ids) >= SCAN_FRACTION * max(plan_scan.rows, 1)
    while True:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / store.LEASE_FILE).touch()
        plan = column_plan(schema, meta["layout"], demoted)
        progress.rows = progress.bytes = 0
        # the table is read on a thread while this one writes the files: the larger of the two, not the sum
        batches = read_ahead(
            _scan(table, row_ids, columns, plan_scan, batch_rows)
            if scan
            else _take(table, row_ids, columns, batch_rows)
        )
        try:
            files = write_files(batches, tmp, schema, plan, len(row_ids), progress, limit)
        except Demote as err:
            demoted.add(err.column)
            log.info("column %r has nulls inside its values: staged in the Arrow file", err.column)
            continue
        except _NotInOrder:
            log.info("table %r does not scan in row-address order: staging by takes", source.name)
            scan = False
            continue
        finally:
            batches.close()  # stops the reading thread when the write stopped early
        meta = {**meta, "flat": plan, "files": files, "bytes": sum(f["bytes"] for f in files.values())}
        (tmp / store.MANIFEST).write_text(json.dumps(meta, indent=1))
        return meta


@dataclass(frozen=True)
class _Job:
    """One stage to make: the split, where it goes, and the budget it must keep to."""

    source: Any
    table: Any  # the source opened at its pinned version; None: opened when a fill needs it
    row_ids: np.ndarray  # sorted, distinct
    columns: list[str]
    root: Path
    final: Path
    budget: int | None
    filter: str | None
    split_name: str
    what: str  # the stage in words, for messages
    progress: bool
    layout: str
    setting: str  # the name of the budget setting, for messages
    root_setting: str  # the name of the setting of where stages live, for messages

    @property
    def tmp(self) -> Path:
        return self.root / f"{store.TMP_PREFIX}{self.final.name}"


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
    root_setting: str = "cache",
) -> Path:
    """The stage of these rows, filled now unless another process of the node did; verified (full
    CRC-32) before it is returned. A stage that fails verification is removed and rebuilt once, with a
    :class:`StageWarning`. This process keeps a lease on the returned stage (nothing evicts it) until
    :func:`release_stage`. Raises :class:`StageBudgetError` when it does not fit ``budget_bytes``
    after evicting least-recently-used stages not in use, and :class:`StageDiskError` (one of
    those, and a :class:`StageError`) when ``root`` cannot be written or its disk fills up during
    the fill. ``table`` is ``source`` opened at its pinned version (opened here when None)."""
    root = Path(root if root is not None else store.default_stage_root()).expanduser().absolute()
    row_ids = np.sort(np.asarray(row_ids, dtype=np.uint64))
    if len(row_ids) > 1 and not np.all(row_ids[1:] > row_ids[:-1]):
        raise ValueError(f"split {split_name!r}: row ids must be distinct")
    columns = list(columns)
    final = root / store.stage_key(source, columns, row_ids, filter=filter, layout=layout)
    job = _Job(
        source=source,
        table=table,
        row_ids=row_ids,
        columns=columns,
        root=root,
        final=final,
        budget=budget_bytes,
        filter=filter,
        split_name=split_name,
        what=store.describe(source, split_name, len(row_ids), columns),
        progress=progress,
        layout=layout,
        setting=budget_setting,
        root_setting=root_setting,
    )
    try:
        return _ensure(job)
    except OSError as err:
        problem = store.disk_error(err, root, job.what, root_setting, budget_setting=budget_setting)
        if problem is None:
            raise
        raise problem from err


def _ensure(job: _Job) -> Path:
    final, root = job.final, job.root
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        first_user = not store.in_use(final)  # another rank (or job) of this node holds it: it said so
        ready, seen, problem = _use_existing(final)
        if ready:
            if first_user:
                _announce_reuse(job)
            return final
        with store.root_lock(root):
            now, _ = store.read_manifest(final)
            if attempt == 0 and now is not None and now.get("fill_id") != seen:
                continue  # filled or rebuilt by another process while this one waited: verify that
            _discard_broken(job, problem)
            _fill_locked(job)
            _keep(final, store.Lease(final))
            return final
    raise AssertionError("unreachable")  # the second attempt always returns


def _use_existing(final: Path) -> tuple[bool, str | None, str | None]:
    """``(ready, fill_id seen, problem)``: ready when the stage at ``final`` verified and this
    process now keeps a lease on it; else what was wrong with it (None: there is none)."""
    held = _try_lease(final)
    if held is None:
        return False, None, (f"its {store.LEASE_FILE} file is missing" if final.exists() else None)
    seen = None
    meta, problem = store.read_manifest(final)
    if meta is not None:
        seen = meta.get("fill_id")
        problem = store.verify_stage(final, meta)
        if problem is None:
            _keep(final, held)
            return True, seen, None
    held.release()
    return False, seen, problem


def _discard_broken(job: _Job, problem: str | None) -> None:
    """Remove a stage (or a half-made fill) that cannot be used, with a :class:`StageWarning`.
    Called under the root lock."""
    final, tmp = job.final, job.tmp
    if not final.exists() and not tmp.exists():
        return
    if final.exists():
        problem = problem or store.verify_stage(final) or "it was replaced while being checked"
        where = final
    else:
        problem, where = "a fill that did not finish left it half-made", tmp
    warnings.warn(
        f"lance-lightning stage {str(where)!r} ({job.what}) is not used: {problem}. It is rebuilt from the table now.",
        StageWarning,
        stacklevel=4,  # the caller of ensure_stage
    )
    store.remove_stage(final, job.root)


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


def hold_again(reader: Any) -> bool:
    """For a later ``setup`` of a datamodule whose reader of a split was built by an earlier one:
    True when ``reader`` reads no stage, or this process holds its stage again (a lease taken
    anew) and its files are still the fill's (names, sizes, modification times). False when the
    stage is gone (another job evicted it once this one released it, or it was cleared) or damaged:
    the caller builds the reader again, which stages the split again (a damaged stage is rebuilt
    with a :class:`StageWarning`)."""
    rows = getattr(reader, "staged", None)
    if rows is None:
        return True
    path = Path(rows.path)
    held = _try_lease(path)
    if held is None:
        return False
    try:
        meta, _ = store.read_manifest(path)
        fine = meta is not None and store.check_sizes(path, meta) is None
    except OSError:
        fine = False
    if not fine:
        held.release()
        return False
    _keep(path, held)
    return True


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


def _fill_locked(job: _Job) -> None:
    """Copy the split into ``.tmp-<key>`` and rename it into place. Called under the root lock."""
    for leftover in job.root.glob(f"{store.TMP_PREFIX}*"):  # left by fillers that died: none runs now
        shutil.rmtree(leftover, ignore_errors=True)
    table = job.table if job.table is not None else job.source.open()
    needed = estimate_stage_bytes(table, job.columns, len(job.row_ids))
    # first whether it can fit at all (counting what eviction could free), then evict: a split that
    # never fits must not remove the stages of other jobs on its way to being refused
    problem = store.budget_problem(job.root, needed, job.budget, keep=job.final)
    if problem is not None:
        raise _budget_error(job.what, needed, job.budget, job.setting, problem, job.root)
    store.evict_for(job.root, needed, job.budget, keep=job.final)
    bar = Progress(len(job.row_ids), f"split {job.split_name!r}", job.progress and not _in_child(needed))
    started = time.monotonic()
    try:
        meta = _fill_somewhere(job, table, needed, bar)
        os.rename(job.tmp, job.final)
    except BaseException:
        bar.close()
        shutil.rmtree(job.tmp, ignore_errors=True)
        raise
    seconds = time.monotonic() - started
    # the node's one line about this stage (what, size, where); tests and benchmarks parse its args
    log.info(
        "staged %s: %s rows, %s bytes in %.1fs (%.0f MB/s) at %s",
        job.what,
        f"{len(job.row_ids):,}",
        f"{meta['bytes']:,}",
        seconds,
        meta["bytes"] / max(seconds, 1e-9) / 1e6,
        job.final,
    )


def _in_child(needed: int) -> bool:
    """Whether a fill of about ``needed`` bytes runs in a child process (:data:`CHILD_FILL_BYTES`);
    never from a daemonic process (a DataLoader worker), which may not have children."""
    import multiprocessing

    return CHILD_FILL_BYTES is not None and needed >= CHILD_FILL_BYTES and not multiprocessing.current_process().daemon


def _fill_somewhere(job: _Job, table: Any, needed: int, bar: Progress) -> dict[str, Any]:
    """:func:`_fill_in_budget` in a child process where :func:`_in_child` says so (the child shows
    the progress), else here; a child that gives no answer (could not start, or was killed) is
    logged and the fill made here."""
    if _in_child(needed):
        from .child import ChildNotStarted, fill_in_child

        try:
            return fill_in_child(job, needed)
        except ChildNotStarted as err:
            log.warning("staging %s in this process: %s", job.what, err)
        bar = Progress(len(job.row_ids), f"split {job.split_name!r}", job.progress)
    return _fill_in_budget(job, table, needed, bar)


def _announce_reuse(job: _Job) -> None:
    """The node's one line about a stage filled earlier: what, how big, where. Said by the first
    process of the node that takes it (the other ranks find it held: silent)."""
    meta, _ = store.read_manifest(job.final)
    size = (meta or {}).get("bytes")
    if not isinstance(size, int):
        size = store.directory_bytes(job.final)
    log.info("reusing the stage of %s: %s bytes at %s (filled earlier, verified now)", job.what, f"{size:,}", job.final)


def _manifest(job: _Job) -> dict[str, Any]:
    """What ``manifest.json`` says about the copy (before its files are known); no secrets."""
    source = job.source
    return {
        "format": store.STAGE_FORMAT,
        "layout": job.layout,
        "uri": scrub(store.table_location(source.uri), source.storage_options),
        "table": source.name,
        "version": source.version,
        "version_time": source.version_time,
        "columns": job.columns,
        "filter": job.filter,
        "split": job.split_name,
        "rows": len(job.row_ids),
        "fill_id": os.urandom(8).hex(),
    }


def _fill_in_budget(job: _Job, table: Any, needed: int, bar: Progress) -> dict[str, Any]:
    """Fill ``job.tmp``, stopping with :class:`StageBudgetError` once the copy passes the room the
    budget leaves beside the other stages; returns the manifest."""
    others = sum(store.directory_bytes(p) for p in store.stages(job.root) if p != job.final)
    limit = None if job.budget is None else job.budget - others
    try:
        batch_rows = fill_batch_rows(needed / max(1, len(job.row_ids)))
        meta = _fill(job.source, table, job.row_ids, job.columns, job.tmp, _manifest(job), bar, limit, batch_rows)
    except OSError as err:
        detail = (
            f", after {bar.rows:,} of {len(job.row_ids):,} rows ({bar.bytes:,} bytes; estimated from the table's "
            f"first rows: {needed:,} bytes for the whole split)"
        )
        problem = store.disk_error(err, job.root, job.what, job.root_setting, detail, budget_setting=job.setting)
        if problem is None:
            raise
        raise problem from err
    except OverBudget:
        problem = (
            f"the estimate was low: after {bar.rows:,} of {len(job.row_ids):,} rows it had copied {bar.bytes:,} "
            f"bytes, over the {limit:,} bytes the budget leaves beside stages in use"
        )
        raise _budget_error(job.what, needed, job.budget, job.setting, problem, job.root) from None
    bar.close()
    if limit is not None and meta["bytes"] > limit:
        problem = f"it takes {meta['bytes']:,} bytes and the budget leaves {limit:,} beside stages in use"
        raise _budget_error(job.what, meta["bytes"], job.budget, job.setting, problem, job.root)
    return meta
