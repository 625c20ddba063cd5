"""Mining a split's neighbour lists in one batched pass, stored once per node beside its stage.

:func:`ensure_neighbors` returns the directory of the lists of one split: ``neighbors.npy``, an
``int32 [rows, k]`` array of split positions, nearest first, ``-1`` where a row has fewer than ``k``
eligible neighbours. It is a stage directory of its own (same root, manifest format, CRC-32, lease
and eviction as :mod:`lance_lightning.stage`; ``layout: "neighbors"``), keyed by the table identity
and version, the split's rows and the mining settings (column, k, exclude_same, where, mode,
metric), so a rerun, another rank or a resume reuses it; one process of the node mines it, under
the stage root's lock.

Two ways to mine (``neighbors['mode']``):

* ``"exact"``: the split's vectors read once from the pinned version, then
  :func:`.exact.exact_neighbors` (blocks of matrix products: exact, ``rows^2 x dim`` work);
* ``"index"``: lancedb's vector search over the table's index on the column at the pinned
  version, :data:`QUERY_BATCH` query vectors a call (the results carry ``query_index``),
  over-fetching to apply the exclusions; a row still short of ``k`` after that is searched exactly.
* ``"auto"``: ``"index"`` when the column has a vector index and the split has more than
  :data:`AUTO_INDEX_ROWS` rows, else ``"exact"``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..source import scrub, storage_endpoint
from .exact import exact_neighbors
from .spec import NeighborSpec

log = logging.getLogger("lance_lightning.stage")

LISTS_FILE = "neighbors.npy"
LAYOUT = "neighbors"
AUTO_INDEX_ROWS = 100_000
"""``mode="auto"`` mines with the vector index above this many split rows (and exactly below:
``rows^2 x dim`` multiply-adds stay under a minute on two cores)."""
QUERY_BATCH = 1024
"""Query vectors a vector search call takes."""
SETTING = "neighbors"


class NeighborSettingError(ValueError):
    """The ``neighbors`` setting does not fit the table or the split (the message names what is valid)."""


# -- checks against the table --------------------------------------------------------------------


def check_vector_column(table_name: str, schema: pa.Schema, column: str, *, key: str = "column") -> int:
    """The dimension of ``column``, which must be a fixed-size list of floats; else an error naming the setting."""
    if column not in schema.names:
        raise NeighborSettingError(
            f"{SETTING}['{key}']={column!r}: table {table_name!r} has no such column; its columns are {schema.names}"
        )
    t = schema.field(column).type
    if isinstance(t, pa.FixedShapeTensorType) and len(t.shape) == 1:
        t = t.storage_type
    if not (pa.types.is_fixed_size_list(t) and pa.types.is_floating(t.value_type)):
        raise NeighborSettingError(
            f"{SETTING}['{key}']={column!r}: column {column!r} of table {table_name!r} is {t}, not a vector "
            "(a fixed-size list of floats, e.g. fixed_size_list<float>[128]); name a vector column"
        )
    return t.list_size


def check_columns_exist(table_name: str, schema: pa.Schema, spec: NeighborSpec) -> None:
    """``exclude_same`` and ``columns`` name columns of the table."""
    for key, names in (("exclude_same", [spec.exclude_same] if spec.exclude_same else []), ("columns", spec.columns)):
        missing = [n for n in names or () if n not in schema.names]
        if missing:
            raise NeighborSettingError(
                f"{SETTING}['{key}'] names {missing}, not columns of table {table_name!r}; its columns are "
                f"{schema.names}"
            )


def check_split_rows(spec: NeighborSpec, table_name: str, split_name: str, rows: int) -> None:
    """``k`` must be below the split's rows (a row is never its own neighbour)."""
    if spec.k >= rows:
        raise NeighborSettingError(
            f"{SETTING}['k']={spec.k} but split {split_name!r} of table {table_name!r} has {rows} rows: a row has at "
            f"most {rows - 1} neighbours (itself excluded). Use k < {rows}"
        )


def has_vector_index(table: Any, column: str) -> bool:
    """Whether the table (at its checked-out version) has a vector index on ``column``."""
    try:
        indices = table.list_indices()
    except Exception:  # a remote or older table: no way to know, so no index
        return False
    for index in indices:
        cols = list(getattr(index, "columns", []) or [])
        kind = str(getattr(index, "index_type", "")).upper()
        if cols == [column] and ("IVF" in kind or "HNSW" in kind or "PQ" in kind or "FLAT" in kind):
            return True
    return False


def resolve_mode(spec: NeighborSpec, table: Any, rows: int, table_name: str) -> str:
    """``exact`` or ``index``: what ``spec.mode`` means for this table and split (see the module)."""
    indexed = has_vector_index(table, spec.column)
    if spec.mode == "index" and not indexed:
        raise NeighborSettingError(
            f"{SETTING}['mode']='index' but column {spec.column!r} of table {table_name!r} has no vector index at "
            "this version: build one (table.create_index(vector_column_name=...)), or use mode='exact' or 'auto'"
        )
    if spec.mode == "auto":
        return "index" if indexed and rows > AUTO_INDEX_ROWS else "exact"
    return spec.mode


# -- reading the split's vectors, groups and eligibility -------------------------------------------


def read_split_columns(table: Any, row_ids: np.ndarray, columns: list[str]) -> pa.Table:
    """``columns`` of the split's rows (sorted row addresses), in split order: one scan (or takes)
    of the pinned version, the way a stage is filled."""
    from ..reads import plan_copy_scan
    from ..stage import fill

    plan = plan_copy_scan(table, row_ids, use_pylance=fill.SCAN_WITH_PYLANCE)
    try:
        if len(row_ids) >= fill.SCAN_FRACTION * max(plan.rows, 1):
            batches = list(fill._scan(table, row_ids, columns, plan))
            return pa.Table.from_batches(batches, schema=_schema(table, columns))
    except fill._NotInOrder:
        pass
    return pa.Table.from_batches(list(fill._take(table, row_ids, columns)), schema=_schema(table, columns))


def _schema(table: Any, columns: list[str]) -> pa.Schema:
    return pa.schema([table.schema.field(c) for c in columns])


def vectors_of(column: pa.ChunkedArray, name: str, table_name: str) -> np.ndarray:
    """A vector column as a float32 ``[rows, dim]`` array; nulls refused, naming the column."""
    arr = column.combine_chunks()
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    if arr.null_count:
        raise NeighborSettingError(
            f"{SETTING}['column']={name!r}: {arr.null_count} row(s) of the split have no vector (null) in table "
            f"{table_name!r}; every row needs one to have neighbours (filter them out with filter=)"
        )
    dim = arr.type.list_size
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat.reshape(len(arr), dim), dtype=np.float32)


def groups_of(column: pa.ChunkedArray) -> np.ndarray:
    """A group number a row (rows of equal value share one); a null is a group of its own."""
    codes = pc.dictionary_encode(column.combine_chunks()).indices
    out = codes.to_numpy(zero_copy_only=False).astype(np.int64)
    nulls = np.asarray(codes.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    out[nulls] = -1 - np.flatnonzero(nulls)
    return out


def eligible_rows(table: Any, row_ids: np.ndarray, where: str, table_name: str) -> np.ndarray:
    """Which split rows match ``where`` (one ``_rowid`` scan of the rows it keeps)."""
    from ..reads import scan_row_ids

    try:
        keep = scan_row_ids(table, where=where)
    except Exception as err:
        raise NeighborSettingError(
            f"{SETTING}['where']={where!r} cannot filter table {table_name!r}: {str(err)[:300]}"
        ) from err
    return np.isin(row_ids, keep)


def exclusions_digest(spec: NeighborSpec, table: Any, row_ids: np.ndarray, table_name: str = "") -> str | None:
    """What ``exclude_same`` and ``where`` make of the split's rows at the table's checked-out
    version, in a few bytes (None: neither is set): which rows share a group (numbered by first
    appearance, so relabelling every group alike changes nothing) and which are eligible. Lists
    mined at another version still apply to this one only where this is equal (and the rows are)."""
    if not spec.exclude_same and not spec.where:
        return None
    digest = hashlib.sha256()
    if spec.exclude_same:
        groups = groups_of(read_split_columns(table, row_ids, [spec.exclude_same]).column(spec.exclude_same))
        digest.update(b"groups" + np.ascontiguousarray(groups, dtype=np.int64).tobytes())
    if spec.where:
        digest.update(b"where" + np.packbits(eligible_rows(table, row_ids, spec.where, table_name)).tobytes())
    return digest.hexdigest()[:32]


# -- mining ----------------------------------------------------------------------------------------


class _Bar:
    """``mining neighbours: rows/total`` on one line of stderr (a TTY only)."""

    def __init__(self, total: int, what: str, enabled: bool) -> None:
        self.total, self.what, self.enabled = total, what, enabled and sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.2 or done == self.total):
            self.last = now
            sys.stderr.write(f"\rmining neighbours of {self.what}: {done:,}/{self.total:,} rows")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def mine(
    spec: NeighborSpec,
    table: Any,
    row_ids: np.ndarray,
    *,
    mode: str,
    table_name: str = "",
    progress: Any = None,
    queries: np.ndarray | None = None,
) -> np.ndarray:
    """The lists of the split ``row_ids`` (sorted addresses) at the table's checked-out version:
    ``int32 [rows, k]`` split positions, nearest first, ``-1`` padding.

    ``queries`` (split positions): the lists of those rows only, searched against every row of the
    split (one row of the result per query). The search's cost is linear in the queries, so
    ``benchmarks/bench_neighbors.py --sample`` times a sample this way and scales it to the split."""
    columns = [spec.column] + ([spec.exclude_same] if spec.exclude_same and spec.exclude_same != spec.column else [])
    data = read_split_columns(table, row_ids, columns)
    vectors = vectors_of(data.column(spec.column), spec.column, table_name)
    groups = groups_of(data.column(spec.exclude_same)) if spec.exclude_same else None
    eligible = eligible_rows(table, row_ids, spec.where, table_name) if spec.where else None
    if mode == "index":
        ids = index_neighbors(
            table, vectors, row_ids, spec, groups=groups, eligible=eligible, progress=progress, queries=queries
        )
    else:
        found = exact_neighbors(
            vectors, spec.k, metric=spec.metric, groups=groups, eligible=eligible, progress=progress, queries=queries
        )
        ids = found.ids
    return ids.astype(np.int32)


LANCEDB_METRICS = {"l2": "l2", "cosine": "cosine", "dot": "dot"}


def candidates_of(spec: NeighborSpec) -> int:
    """Index mode's candidates a row: ``candidates``, else ``15k`` (``30k`` with ``exclude_same``).

    15k: recall@10 0.92 on 100k x 128-d (IVF-PQ, 316 partitions, 16 sub-vectors) at 2.3x the mining
    time of the earlier ``4k + 16`` (0.71; 114.5 against 49.3 s on 2 busy cores); the PQ codes limit
    the recall, not ``nprobes`` (docs/guides/neighbors.md)."""
    if spec.candidates is not None:
        return spec.candidates
    return 15 * spec.k if spec.exclude_same is None else 30 * spec.k


def index_neighbors(
    table: Any,
    vectors: np.ndarray,
    row_ids: np.ndarray,
    spec: NeighborSpec,
    *,
    groups: np.ndarray | None,
    eligible: np.ndarray | None,
    progress: Any = None,
    fetch: int | None = None,
    queries: np.ndarray | None = None,
) -> np.ndarray:
    """Neighbour positions by the table's vector index: :data:`QUERY_BATCH` queries a search,
    ``fetch`` candidates each (default ``15k``, ``30k`` with ``exclude_same``), exclusions applied
    to what comes back, the rest ranked by their exact distance (computed here from the vectors in
    memory: the index's PQ distances alone gave recall@10 0.62 on a 5k-row 32-d table, lancedb's
    ``refine_factor`` cost 10x the time); rows left short of ``k`` are searched exactly.
    ``queries`` (positions): the lists of those rows only (one result row per query)."""
    n, k = len(vectors), spec.k
    fetch = candidates_of(spec) if fetch is None else fetch
    fetch = min(fetch, n)
    q_all = np.arange(n, dtype=np.int64) if queries is None else np.asarray(queries, dtype=np.int64)
    out = np.full((len(q_all), k), -1, dtype=np.int64)
    for b0 in range(0, len(q_all), QUERY_BATCH):
        b1 = min(len(q_all), b0 + QUERY_BATCH)
        batch = vectors[b0:b1] if queries is None else vectors[q_all[b0:b1]]
        result = (
            table.search(batch, vector_column_name=spec.column)
            .distance_type(LANCEDB_METRICS[spec.metric])
            .limit(fetch)
            .with_row_id(True)
            .select([])
            .to_arrow()
        )
        if b1 - b0 == 1 and "query_index" not in result.column_names:
            qi = np.zeros(result.num_rows, dtype=np.int64)
        else:
            qi = result.column("query_index").to_numpy().astype(np.int64)
        rid = result.column("_rowid").to_numpy().astype(np.uint64)
        pos = np.searchsorted(row_ids, rid)
        inside = pos < n
        inside[inside] = row_ids[pos[inside]] == rid[inside]  # rows outside the split are not neighbours
        local = qi + b0  # the query's row of out
        query = q_all[local]  # its split position
        keep = inside.copy()
        keep[keep] = pos[keep] != query[keep]
        if groups is not None:
            keep[keep] = groups[pos[keep]] != groups[query[keep]]
        if eligible is not None:
            keep[keep] = eligible[pos[keep]]
        local, query, pos = local[keep], query[keep], pos[keep]
        dist = _exact_distances(vectors, query, pos, spec.metric)  # re-ranked here: the index's are PQ-approximate
        order = np.lexsort((pos, dist, local))
        local, pos = local[order], pos[order]
        starts = np.searchsorted(local, np.arange(b0, b1))
        rank = np.arange(len(local)) - starts[local - b0]
        first = rank < k
        out[local[first], rank[first]] = pos[first]
        if progress is not None:
            progress(b1)
    short = np.flatnonzero((out < 0).any(axis=1))
    if len(short):
        exact = exact_neighbors(vectors, k, metric=spec.metric, groups=groups, eligible=eligible, queries=q_all[short])
        out[short] = exact.ids
    return out


def _exact_distances(vectors: np.ndarray, query: np.ndarray, pos: np.ndarray, metric: str) -> np.ndarray:
    """The exact distance of each (query, candidate) pair, as :func:`.exact.exact_neighbors` ranks them."""
    a, b = vectors[query].astype(np.float64), vectors[pos].astype(np.float64)
    if metric == "l2":
        return ((a - b) ** 2).sum(axis=1)
    dot = (a * b).sum(axis=1)
    if metric == "cosine":
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        return 1 - np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)
    return -dot


# -- the stored lists --------------------------------------------------------------------------------


def neighbors_key(source: Any, row_ids: np.ndarray, spec: NeighborSpec, mode: str) -> str:
    """The lists' directory name: readable prefix, then a hash of what decides them."""
    from ..stage import store

    if source.version is None:
        raise ValueError("neighbour lists need a pinned table version")
    rows = np.sort(np.asarray(row_ids, dtype=np.uint64))
    payload = {
        "format": store.STAGE_FORMAT,
        "layout": LAYOUT,
        "uri": store.table_location(source.uri),
        "endpoint": storage_endpoint(source.storage_options),
        "table": source.name,
        "version": source.version,
        "version_time": source.version_time,
        "num_rows": len(rows),
        "rows": hashlib.sha256(rows.tobytes()).hexdigest(),
        "mining": spec.mining(),
        "resolved_mode": mode,
        **({"index_candidates": candidates_of(spec)} if mode == "index" else {}),  # a default that changed too
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", source.name)[:64]
    return f"{name}-v{source.version}-nbr-{digest}"


def ensure_neighbors(
    source: Any,
    table: Any,
    row_ids: np.ndarray,
    spec: NeighborSpec,
    *,
    root: str | os.PathLike[str],
    split_name: str = "",
    progress: bool = True,
) -> Path:
    """The directory of the split's lists, mined now unless this node has them (verified: CRC-32).
    ``table``: ``source`` opened at its pinned version. This process holds a lease on the returned
    directory until :func:`~lance_lightning.stage.release_stage` (nothing evicts it meanwhile)."""
    from ..stage import fill, store

    root = Path(root).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    row_ids = np.sort(np.asarray(row_ids, dtype=np.uint64))
    mode = resolve_mode(spec, table, len(row_ids), source.name)
    final = root / neighbors_key(source, row_ids, spec, mode)
    what = f"split {split_name!r} of table {source.name!r} (version {source.version}, {len(row_ids):,} rows)"
    for attempt in range(2):
        ready, seen, problem = fill._use_existing(final)
        if ready:
            log.info("reusing the neighbour lists of %s: %s (mined earlier, verified now)", what, final)
            return final
        with store.root_lock(root):
            now, _ = store.read_manifest(final)
            if attempt == 0 and now is not None and now.get("fill_id") != seen:
                continue  # mined by another process while this one waited: verify that
            if final.exists():
                warnings.warn(
                    f"lance-lightning neighbour lists {str(final)!r} ({what}) are not used: "
                    f"{problem or store.verify_stage(final) or 'they were replaced while being checked'}. "
                    "They are mined again now.",
                    store.StageWarning,
                    stacklevel=2,
                )
                store.remove_stage(final, root)
            _mine_locked(source, table, row_ids, spec, mode, final, root, what, split_name, progress)
            fill._keep(final, store.Lease(final))
            return final
    raise AssertionError("unreachable")


def _mine_locked(
    source: Any,
    table: Any,
    row_ids: np.ndarray,
    spec: NeighborSpec,
    mode: str,
    final: Path,
    root: Path,
    what: str,
    split_name: str,
    progress: bool,
) -> None:
    from ..stage import store
    from ..stage.write import _entry

    tmp = root / f"{store.TMP_PREFIX}{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log.info("mining the %d nearest neighbours of each row of %s by %r (%s)", spec.k, what, spec.column, mode)
    started = time.monotonic()
    bar = _Bar(len(row_ids), what, progress)
    try:
        (tmp / store.LEASE_FILE).touch()
        ids = mine(spec, table, row_ids, mode=mode, table_name=source.name, progress=bar)
        np.save(tmp / LISTS_FILE, ids)
        files = {LISTS_FILE: _entry(tmp / LISTS_FILE, store.crc32_file(tmp / LISTS_FILE))}
        meta = {
            "format": store.STAGE_FORMAT,
            "layout": LAYOUT,
            "uri": scrub(store.table_location(source.uri), source.storage_options),
            "table": source.name,
            "version": source.version,
            "version_time": source.version_time,
            "columns": [spec.column],
            "filter": None,
            "split": split_name,
            "rows": len(row_ids),
            "k": spec.k,
            "mining": spec.mining(),
            "mode": mode,
            "fill_id": os.urandom(8).hex(),
            "files": files,
            "bytes": files[LISTS_FILE]["bytes"],
        }
        (tmp / store.MANIFEST).write_text(json.dumps(meta, indent=1))
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    log.info(
        "mined neighbours of %s: %s rows x k=%d (%s) in %.1fs at %s",
        what,
        f"{len(row_ids):,}",
        spec.k,
        mode,
        time.monotonic() - started,
        final,
    )


def lists_mining(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What the manifest of the lists at ``path`` says of their mining: key, version, mode."""
    from ..stage import store

    meta, problem = store.read_manifest(Path(path))
    if meta is None:
        raise NeighborSettingError(f"neighbour lists at {str(path)!r} cannot be read: {problem}")
    return {"key": Path(path).name, "version": meta.get("version"), "mode": meta.get("mode")}
