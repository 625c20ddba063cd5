"""Split specs → the sorted row addresses of each split.

A *split spec* says how the (filtered) table is divided into named splits. Accepted forms:

``{"train": 0.8, "val": 0.1, "test": 0.1}``
    Random, seeded, by fractions (floats; a sum below 1 leaves the rest unused).
``{"train": 8000, "val": 1000}``
    Random, seeded, by row counts (ints).
``{"kind": "random", "fractions" | "counts": {...}, "seed": 7}``
    The same, spelled out; ``seed`` defaults to the datamodule's seed.
``{"kind": "hash", "columns": ["id"], "weights": {"train": 8, "val": 1, "test": 1}}``
    By a hash of ``columns``: a row keeps its split when rows are appended or deleted.
    ``discard_weight`` (default 0) sets aside a share of rows in no split.
``{"kind": "sequential", "fractions" | "counts": {...}}``
    Consecutive runs of the table, in table order.
``{"kind": "column", "column": "split"}``
    Each row's value in ``column`` names its split (every distinct value is a split).
``{"kind": "sql", "predicates": {"train": "year < 2020", "val": "year = 2020"}}``
    One SQL predicate per split; a row matching two predicates is an error.
``{"kind": "tables", "tables": {"train": "train_table", "val": "val_table"}}``
    One table per split, in the same database.
``None``
    One split, ``"all"``: the whole filtered table.

Random, hash and sequential splits are built by lancedb's ``permutation_builder``; the
result is turned into one sorted ``uint64`` array of row addresses per split, which is all
that later steps need (16 bytes a row while building, 8 after).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from lancedb.permutation import permutation_builder

from .filters import cut_short, early_end, refusal
from .reads import scan_with_row_ids
from .rowset import RowSet
from .source import LanceSourceError, TableSource, check_filter

SPLIT_KINDS = ("random", "hash", "sequential", "column", "sql", "tables")
WHOLE_TABLE = "all"
# lancedb's builder spills its sort to disk once it passes this many bytes of memory; its
# own default fails ("Not enough memory to continue external sort") near 4M rows.
_BUILDER_MEMORY_ENV = "LANCEDB_PERM_BUILDER_MEMORY_LIMIT"
_BUILDER_MEMORY_DEFAULT = str(4 * 1024**3)
_INT64_MAX = 2**63 - 1


class SplitSpecError(ValueError):
    """The split spec is malformed, or a split it names is unknown or empty."""


@dataclass(frozen=True)
class SplitSpec:
    """A validated, normalized split spec: ``kind`` plus its parameters."""

    kind: str
    names: tuple[str, ...]
    fractions: tuple[float, ...] | None = None
    counts: tuple[int, ...] | None = None
    seed: int | None = None
    columns: tuple[str, ...] | None = None
    weights: tuple[int, ...] | None = None
    discard_weight: int = 0
    column: str | None = None
    predicates: tuple[str, ...] | None = None
    tables: tuple[str, ...] | None = None

    def fingerprint(self, *, filter: str | None, seed: int) -> str:
        """A short stable hash of everything that decides which row lands in which split."""
        payload = json.dumps({"spec": self.__dict__, "filter": filter, "seed": seed}, sort_keys=True, default=list)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class SplitRows:
    """One split: the table it reads and its row addresses, sorted ascending (table order).

    Held as a :class:`~.rowset.RowSet` (about 2 bits a spanned table row, not 8 bytes a
    row); :attr:`row_ids` unpacks the addresses for one-off uses at setup.
    """

    __slots__ = ("name", "rows", "source")

    def __init__(self, name: str, source: TableSource, row_ids: np.ndarray) -> None:
        self.name, self.source = name, source
        self.rows = RowSet.from_sorted(row_ids)

    @property
    def row_ids(self) -> np.ndarray:
        """The split's row addresses, sorted (``uint64``, 8 bytes a row while the caller holds it)."""
        return self.rows.to_array()

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"SplitRows({self.name!r}, table {self.source.name!r}, {len(self):,} rows)"


def _names_and_values(mapping: Any, what: str) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    if not isinstance(mapping, Mapping) or not mapping:
        raise SplitSpecError(f"split {what} must be a non-empty mapping of split name to value, got {mapping!r}")
    names = tuple(str(k) for k in mapping)
    return names, tuple(mapping.values())


def _is_count(value: Any) -> bool:
    """An integer (``int`` or a NumPy integer), not a ``bool``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _fraction(value: Any) -> float | None:
    """``value`` as a finite float >= 0, or None when it is not one (NaN, inf, a bool, a str...)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):  # an int beyond float range
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _fractions(mapping: Any) -> tuple[tuple[str, ...], tuple[float, ...]]:
    names, values = _names_and_values(mapping, "fractions")
    fractions = tuple(_fraction(v) for v in values)
    bad = [f"{n}={v!r}" for n, v, f in zip(names, values, fractions) if f is None]
    if bad:
        raise SplitSpecError(
            f"split fractions must be numbers >= 0; got {', '.join(bad)} (NaN and infinities are not fractions)"
        )
    values = fractions
    total = float(sum(values))
    if total > 1.0 + 1e-9:
        listing = ", ".join(f"{n}={v}" for n, v in zip(names, values))
        raise SplitSpecError(
            f"split fractions sum to {total:g} ({listing}); they must sum to at most 1 "
            "(a sum below 1 leaves the rest of the table unused)"
        )
    return names, tuple(float(v) for v in values)


def _counts(mapping: Any) -> tuple[tuple[str, ...], tuple[int, ...]]:
    names, values = _names_and_values(mapping, "counts")
    bad = [f"{n}={v!r}" for n, v in zip(names, values) if not _is_count(v) or v < 0 or v > _INT64_MAX]
    if bad:
        raise SplitSpecError(f"split counts must be integers >= 0 (and < 2**63); got {', '.join(bad)}")
    return names, tuple(int(v) for v in values)


def _sized(kind: str, spec: Mapping[str, Any], seed: int | None) -> SplitSpec:
    has_f, has_c = "fractions" in spec, "counts" in spec
    if has_f == has_c:
        raise SplitSpecError(f"a {kind!r} split spec needs exactly one of 'fractions' or 'counts', got {dict(spec)!r}")
    if has_f:
        names, fractions = _fractions(spec["fractions"])
        return SplitSpec(kind, names, fractions=fractions, seed=seed)
    names, counts = _counts(spec["counts"])
    return SplitSpec(kind, names, counts=counts, seed=seed)


_KEYS = {
    "random": {"kind", "fractions", "counts", "seed"},
    "sequential": {"kind", "fractions", "counts"},
    "hash": {"kind", "columns", "weights", "discard_weight"},
    "column": {"kind", "column"},
    "sql": {"kind", "predicates"},
    "tables": {"kind", "tables"},
}


def parse_split_spec(spec: Any) -> SplitSpec | None:
    """Validate ``spec`` (see the module docstring) without touching any table."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise SplitSpecError(
            f"`splits` must be a mapping such as {{'train': 0.8, 'val': 0.2}} or {{'kind': ..., ...}}, got {spec!r}"
        )
    spec = dict(spec)
    if "kind" not in spec:
        values = list(spec.values())
        if values and all(_is_count(v) for v in values):
            return _sized("random", {"counts": spec}, None)
        return _sized("random", {"fractions": spec}, None)
    kind = spec["kind"]
    if kind not in SPLIT_KINDS:
        raise SplitSpecError(f"unknown split kind {kind!r}; valid kinds are {', '.join(SPLIT_KINDS)}")
    unknown = set(spec) - _KEYS[kind]
    if unknown:
        raise SplitSpecError(
            f"split kind {kind!r} does not take {sorted(unknown)}; it takes {sorted(_KEYS[kind] - {'kind'})}"
        )
    if kind in ("random", "sequential"):
        seed = spec.get("seed")
        if seed is not None and (not _is_count(seed) or not 0 <= seed < 2**64):
            raise SplitSpecError(f"split seed must be an integer >= 0 and < 2**64 (or None), got {seed!r}")
        seed = int(seed) if seed is not None else None
        return _sized(kind, spec, seed)
    if kind == "hash":
        columns = spec.get("columns")
        if isinstance(columns, str):
            columns = [columns]
        if not columns:
            raise SplitSpecError("a 'hash' split spec needs 'columns': the columns to hash, e.g. ['id']")
        names, weights = _counts(spec.get("weights"))
        discard = spec.get("discard_weight", 0)
        if discard is None:
            discard = 0  # lancedb raises TypeError on None
        if not _is_count(discard) or discard < 0:
            raise SplitSpecError(f"discard_weight must be an integer >= 0, got {discard!r}")
        discard = int(discard)
        if sum(weights) == 0:
            raise SplitSpecError(f"hash split weights {dict(zip(names, weights))} are all zero")
        if sum(weights) + discard > _INT64_MAX:  # lancedb sums them in 64 bits: past that, splits come out wrong
            raise SplitSpecError(
                f"hash split weights {dict(zip(names, weights))} and discard_weight {discard} add up to "
                f"{sum(weights) + discard}; they must add up to less than 2**63"
            )
        return SplitSpec(kind, names, columns=tuple(columns), weights=weights, discard_weight=discard)
    if kind == "column":
        column = spec.get("column")
        if not isinstance(column, str) or not column:
            raise SplitSpecError("a 'column' split spec needs 'column': the column whose values name the split")
        return SplitSpec(kind, (), column=column)
    if kind == "sql":
        names, predicates = _names_and_values(spec.get("predicates"), "predicates")
        bad = [n for n, p in zip(names, predicates) if not isinstance(p, str) or not p.strip()]
        if bad:
            raise SplitSpecError(f"SQL split predicates for {bad} must be non-empty strings")
        for name, predicate in zip(names, predicates):
            early = early_end(predicate)  # a ';', ',' or ')' that ends it: knowable without a table
            if early is not None:
                raise SplitSpecError(cut_short(_predicate_subject(name, predicate), predicate, *early))
        return SplitSpec(kind, names, predicates=tuple(predicates))
    names, tables = _names_and_values(spec.get("tables"), "tables")
    return SplitSpec(kind, names, tables=tuple(str(t) for t in tables))


def _predicate_subject(name: str, predicate: str) -> str:
    return f"predicate {predicate!r} of split {name!r}"


def _and(filter: str | None, predicate: str) -> str:
    # Newlines end a trailing ``--`` comment of either part before the parenthesis that closes it.
    return predicate if filter is None else f"(\n{filter}\n) AND (\n{predicate}\n)"


def _ensure_builder_memory() -> None:
    os.environ.setdefault(_BUILDER_MEMORY_ENV, _BUILDER_MEMORY_DEFAULT)


def _group_by_split(perm: Any, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    row_ids = perm["row_id"].to_numpy()
    split_ids = perm["split_id"].to_numpy()
    order = np.argsort(split_ids, kind="stable")
    bounds = np.searchsorted(split_ids[order], np.arange(len(names) + 1))
    return {
        name: np.sort(row_ids[order[bounds[i] : bounds[i + 1]]]).astype(np.uint64, copy=False)
        for i, name in enumerate(names)
    }


def build_splits(
    source: TableSource, table: Any, spec: SplitSpec | None, *, filter: str | None, seed: int
) -> dict[str, SplitRows]:
    """Divide the filtered table into splits; each process gets identical results for a seed.

    ``table`` is ``source`` opened at its pinned version.
    """
    if spec is not None and spec.kind == "tables":
        return _per_table_splits(source, spec, filter=filter)
    num_rows = check_filter(table, filter)
    where = f" after filter {filter!r}" if filter else ""
    if num_rows == 0:
        raise SplitSpecError(f"table {table.name!r} (version {table.version}) has no rows{where}: every split is empty")
    if spec is not None:
        _check_sizes(spec, num_rows, f"table {table.name!r} has {num_rows} rows{where}")
    if spec is None:
        return {WHOLE_TABLE: SplitRows(WHOLE_TABLE, source, whole_table_row_ids(table, filter))}
    if spec.kind == "column":
        return _column_splits(source, table, spec, filter=filter)
    if spec.kind == "sql":
        return _sql_splits(source, table, spec, filter=filter)
    builder = permutation_builder(table)
    if filter is not None:
        builder = builder.filter(filter)
    names = list(spec.names)
    if spec.kind == "random":
        builder = builder.split_random(
            ratios=list(spec.fractions) if spec.fractions else None,
            counts=list(spec.counts) if spec.counts else None,
            seed=spec.seed if spec.seed is not None else seed,
            split_names=names,
        )
    elif spec.kind == "sequential":
        builder = builder.split_sequential(
            ratios=list(spec.fractions) if spec.fractions else None,
            counts=list(spec.counts) if spec.counts else None,
            split_names=names,
        )
    elif spec.kind == "hash":
        missing = [c for c in spec.columns or () if c not in table.schema.names]
        if missing:
            raise LanceSourceError(
                f"hash split columns {missing} are not in table {table.name!r}; its columns: {table.schema.names}"
            )
        builder = builder.split_hash(
            list(spec.columns or ()), list(spec.weights or ()), discard_weight=spec.discard_weight, split_names=names
        )
    _ensure_builder_memory()
    try:
        perm = builder.execute().to_arrow()
    except Exception as err:  # lancedb raises ValueError or RuntimeError with DataFusion's message
        hint = ""
        if "memory" in str(err).lower():
            hint = (
                f" (the builder ran out of its memory budget: raise {_BUILDER_MEMORY_ENV}, "
                f"now {os.environ.get(_BUILDER_MEMORY_ENV)} bytes)"
            )
        raise SplitSpecError(
            f"lancedb could not build {spec.kind} splits {names} of table {table.name!r}{hint}: {err}"
        ) from err
    return {name: SplitRows(name, source, ids) for name, ids in _group_by_split(perm, spec.names).items()}


def _check_sizes(spec: SplitSpec, num_rows: int, context: str) -> None:
    """Refuse a split that would come out empty, or counts the table cannot fill, naming the split."""
    if spec.counts is not None:
        empty = [n for n, c in zip(spec.names, spec.counts) if c == 0]
        if empty:
            raise SplitSpecError(f"split(s) {empty} have a count of 0 and would be empty; drop them from `splits`")
        if sum(spec.counts) > num_rows:
            raise SplitSpecError(
                f"split counts {dict(zip(spec.names, spec.counts))} add up to {sum(spec.counts)} rows, but {context}"
            )
    if spec.fractions is not None:
        empty = [f"{n}={f:g}" for n, f in zip(spec.names, spec.fractions) if int(f * num_rows) == 0]
        if empty:
            raise SplitSpecError(
                f"split(s) {', '.join(empty)} would be empty: {context}; raise the fraction or drop the split"
            )


def whole_table_row_ids(table: Any, filter: str | None) -> np.ndarray:
    """Row addresses of every row that ``filter`` keeps, in table order.

    Built by lancedb's permutation builder, which reads only what the filter needs (a scan
    with ``select([])`` would read every column).
    """
    builder = permutation_builder(table)
    if filter is not None:
        builder = builder.filter(filter)
    _ensure_builder_memory()
    ids = builder.execute().to_arrow()["row_id"].to_numpy()
    return np.sort(ids).astype(np.uint64, copy=False)


def _column_splits(source: TableSource, table: Any, spec: SplitSpec, *, filter: str | None) -> dict[str, SplitRows]:
    column = spec.column
    if column not in table.schema.names:
        raise LanceSourceError(
            f"split column {column!r} is not in table {table.name!r}; its columns: {table.schema.names}"
        )
    scanned = scan_with_row_ids(table, [column], where=filter)
    values = scanned[column]
    if values.null_count:
        raise SplitSpecError(
            f"split column {column!r} of table {table.name!r} has {values.null_count} null value(s): "
            f'every row needs a split name (filter them out, e.g. filter="{column} IS NOT NULL")'
        )
    keys = np.asarray([str(v) for v in values.to_pylist()], dtype=object)
    row_ids = scanned["_rowid"].to_numpy()
    names = sorted(set(keys.tolist()))
    return {n: SplitRows(n, source, np.sort(row_ids[keys == n]).astype(np.uint64, copy=False)) for n in names}


def _sql_splits(source: TableSource, table: Any, spec: SplitSpec, *, filter: str | None) -> dict[str, SplitRows]:
    out: dict[str, SplitRows] = {}
    for name, predicate in zip(spec.names, spec.predicates or ()):
        problem = refusal(table, predicate, _predicate_subject(name, predicate))
        if problem is not None:  # lancedb would run only part of it (or none): say which part
            raise SplitSpecError(problem)
        try:
            ids = whole_table_row_ids(table, _and(filter, predicate))
        except Exception as err:
            raise SplitSpecError(
                f"SQL predicate {predicate!r} of split {name!r} is not valid on table {table.name!r}: {err}"
            ) from err
        for other, rows in out.items():
            both = np.intersect1d(rows.row_ids, ids, assume_unique=True)
            if len(both):
                raise SplitSpecError(
                    f"SQL splits {other!r} and {name!r} overlap in {len(both)} row(s) of table "
                    f"{table.name!r}: make the predicates mutually exclusive"
                )
        out[name] = SplitRows(name, source, ids.astype(np.uint64, copy=False))
    return out


def _per_table_splits(source: TableSource, spec: SplitSpec, *, filter: str | None) -> dict[str, SplitRows]:
    from .source import open_table

    out: dict[str, SplitRows] = {}
    for name, table_name in zip(spec.names, spec.tables or ()):
        table = open_table(
            source.uri, table_name, storage_options=source.storage_options, connect_kwargs=source.connect_kwargs
        )
        split_source = TableSource(
            source.uri, table_name, table.version, source.storage_options, source.connect_kwargs
        ).stamped(table)
        check_filter(table, filter)
        out[name] = SplitRows(name, split_source, whole_table_row_ids(table, filter))
    return out
