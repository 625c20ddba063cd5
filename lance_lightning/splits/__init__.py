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

One module a kind (:mod:`.random`, :mod:`.hash`, ...), each a frozen :class:`SplitSpec`
subclass; :data:`KINDS` below is the registry, and every list of kinds comes from it.
Random, hash and sequential splits are built by lancedb's ``permutation_builder``; the others
by one ``_rowid`` scan (:func:`~lance_lightning.reads.scan_with_row_ids`) a split or table.
Each split ends as one sorted ``uint64`` array of row addresses, which is all later steps need.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..source import TableSource
from .base import (
    BUILDER_MEMORY_ENV,
    WHOLE_TABLE,
    SplitRows,
    SplitSpec,
    SplitSpecError,
    filtered_rows,
    is_count,
    whole_table_row_ids,
)
from .column import ColumnSplit
from .hash import HashSplit
from .random import RandomSplit
from .sequential import SequentialSplit
from .sql import SqlSplit
from .tables import TablesSplit

KINDS: dict[str, type[SplitSpec]] = {
    cls.kind: cls for cls in (RandomSplit, HashSplit, SequentialSplit, ColumnSplit, SqlSplit, TablesSplit)
}
"""The registry: split kind name → its spec class. A new kind is a module and an entry here."""
SPLIT_KINDS = tuple(KINDS)


def kinds_stable_under_appends() -> tuple[str, ...]:
    """The kinds whose rows keep their split when rows are appended (``survives_appends``)."""
    return tuple(name for name, cls in KINDS.items() if cls.survives_appends)


def parse_split_spec(spec: Any) -> SplitSpec | None:
    """Validate ``spec`` (see the module docstring) without touching any table."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise SplitSpecError(
            f"`splits` must be a mapping such as {{'train': 0.8, 'val': 0.2}} or {{'kind': ..., ...}}, got {spec!r}"
        )
    spec = dict(spec)
    if "kind" not in spec:  # the shorthand: random, by counts when every value is an integer
        values = list(spec.values())
        sizes = "counts" if values and all(is_count(v) for v in values) else "fractions"
        return RandomSplit.parse({sizes: spec})
    kind = spec["kind"]
    try:
        cls = KINDS.get(kind)
    except TypeError:  # unhashable
        cls = None
    if cls is None:
        raise SplitSpecError(f"unknown split kind {kind!r}; valid kinds are {', '.join(KINDS)}")
    unknown = set(spec) - cls.takes - {"kind"}
    if unknown:
        raise SplitSpecError(f"split kind {kind!r} does not take {sorted(unknown)}; it takes {sorted(cls.takes)}")
    return cls.parse(spec)


def build_splits(
    source: TableSource, table: Any, spec: SplitSpec | None, *, filter: str | None, seed: int
) -> dict[str, SplitRows]:
    """Divide the filtered table into splits; each process gets identical results for a seed.

    ``table`` is ``source`` opened at its pinned version.
    """
    if spec is None:
        filtered_rows(table, filter)
        return {WHOLE_TABLE: SplitRows(WHOLE_TABLE, source, whole_table_row_ids(table, filter))}
    return spec.build(source, table, filter=filter, seed=seed)


__all__ = [
    "BUILDER_MEMORY_ENV",
    "KINDS",
    "SPLIT_KINDS",
    "WHOLE_TABLE",
    "ColumnSplit",
    "HashSplit",
    "RandomSplit",
    "SequentialSplit",
    "SplitRows",
    "SplitSpec",
    "SplitSpecError",
    "SqlSplit",
    "TablesSplit",
    "build_splits",
    "kinds_stable_under_appends",
    "parse_split_spec",
    "whole_table_row_ids",
]
