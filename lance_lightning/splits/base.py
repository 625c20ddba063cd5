"""What every split kind shares: the spec base class, the result type, parsing, the builder.

A kind is a frozen dataclass subclassing :class:`SplitSpec` with its own fields only, which
says its ``kind`` name, the keys it ``takes``, whether its row assignment ``survives_appends``,
how to ``parse`` a user mapping and how to ``build`` the splits of a pinned table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from lancedb.permutation import permutation_builder

from ..reads import scan_row_ids
from ..rowset import RowSet
from ..source import TableSource, check_filter

WHOLE_TABLE = "all"
"""The one split of a ``None`` spec: the whole filtered table."""
# lancedb's builder spills its sort to disk once it passes this many bytes of memory; its
# own default fails ("Not enough memory to continue external sort") near 4M rows.
BUILDER_MEMORY_ENV = "LANCEDB_PERM_BUILDER_MEMORY_LIMIT"
BUILDER_MEMORY_DEFAULT = str(4 * 1024**3)
INT64_MAX = 2**63 - 1
_READ_BATCH = 1 << 20

# The checkpoint identity of a split spec: the fields of the one SplitSpec dataclass that held
# every kind until the kinds became classes. Checkpoints store this dict (every key, None where a
# kind has no such field), so identity() fills it the same way for old checkpoints to match.
LEGACY_IDENTITY: dict[str, Any] = {
    "kind": None,
    "names": (),
    "fractions": None,
    "counts": None,
    "seed": None,
    "columns": None,
    "weights": None,
    "discard_weight": 0,
    "column": None,
    "predicates": None,
    "tables": None,
}


class SplitSpecError(ValueError):
    """The split spec is malformed, or a split it names is unknown or empty."""


class SplitRows:
    """One split: the table it reads and its row addresses, sorted ascending (table order).

    Held as a :class:`~lance_lightning.rowset.RowSet` (about 2 bits a spanned table row, not
    8 bytes a row); :attr:`row_ids` unpacks the addresses for one-off uses at setup.
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


class SplitSpec:
    """A validated split spec of one kind. Subclasses are frozen dataclasses holding their own fields.

    Class attributes a kind sets: ``kind`` (its name in ``{"kind": ...}``), ``takes`` (the keys
    it accepts beside ``kind``) and ``survives_appends`` (True when appending rows to the table
    never moves an existing row to another split, so ``table_updates='next_epoch'`` is safe).
    """

    kind: ClassVar[str]
    takes: ClassVar[frozenset[str]]
    survives_appends: ClassVar[bool]
    names: tuple[str, ...]

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> SplitSpec:
        """The spec of this kind described by ``spec`` (its keys already checked against ``takes``)."""
        raise NotImplementedError

    def build(self, source: TableSource, table: Any, *, filter: str | None, seed: int) -> dict[str, SplitRows]:
        """Divide ``table`` (``source`` opened at its pinned version), filtered, into splits."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) that decides which row lands in which split.

        Checkpoints store it and a resume must match it: every key of :data:`LEGACY_IDENTITY`
        (defaults where this kind has no such field), then this kind's own fields.
        """
        out = dict(LEGACY_IDENTITY, kind=self.kind, names=self.names)
        out.update((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))  # type: ignore[arg-type]
        return _plain(out)

    def fingerprint(self, *, filter: str | None, seed: int) -> str:
        """A short stable hash of everything that decides which row lands in which split."""
        payload = json.dumps({"spec": self.identity(), "filter": filter, "seed": seed}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -- parsing -----------------------------------------------------------------------------------


def names_and_values(mapping: Any, what: str) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """The split names (as str) and values of a non-empty mapping; ``what`` names it in errors."""
    if not isinstance(mapping, Mapping) or not mapping:
        raise SplitSpecError(f"split {what} must be a non-empty mapping of split name to value, got {mapping!r}")
    names = tuple(str(k) for k in mapping)
    return names, tuple(mapping.values())


def is_count(value: Any) -> bool:
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


def parse_fractions(mapping: Any) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Split names and fractions (finite floats >= 0 summing to at most 1)."""
    names, values = names_and_values(mapping, "fractions")
    fractions = tuple(_fraction(v) for v in values)
    bad = [f"{n}={v!r}" for n, v, f in zip(names, values, fractions) if f is None]
    if bad:
        raise SplitSpecError(
            f"split fractions must be numbers >= 0; got {', '.join(bad)} (NaN and infinities are not fractions)"
        )
    total = float(sum(fractions))  # type: ignore[arg-type]
    if total > 1.0 + 1e-9:
        listing = ", ".join(f"{n}={v}" for n, v in zip(names, fractions))
        raise SplitSpecError(
            f"split fractions sum to {total:g} ({listing}); they must sum to at most 1 "
            "(a sum below 1 leaves the rest of the table unused)"
        )
    return names, tuple(float(v) for v in fractions)  # type: ignore[arg-type]


def parse_counts(mapping: Any) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Split names and row counts (integers >= 0 and < 2**63)."""
    names, values = names_and_values(mapping, "counts")
    bad = [f"{n}={v!r}" for n, v in zip(names, values) if not is_count(v) or v < 0 or v > INT64_MAX]
    if bad:
        raise SplitSpecError(f"split counts must be integers >= 0 (and < 2**63); got {', '.join(bad)}")
    return names, tuple(int(v) for v in values)


# -- building ----------------------------------------------------------------------------------


def filtered_rows(table: Any, filter: str | None) -> tuple[int, str]:
    """Rows of ``table`` that ``filter`` keeps (refusing none), and ``" after filter ..."`` for messages."""
    num_rows = check_filter(table, filter)
    where = f" after filter {filter!r}" if filter else ""
    if num_rows == 0:
        raise SplitSpecError(f"table {table.name!r} (version {table.version}) has no rows{where}: every split is empty")
    return num_rows, where


def whole_table_row_ids(table: Any, filter: str | None) -> np.ndarray:
    """Row addresses (sorted ``uint64``) of every row that ``filter`` keeps: one ``_rowid`` scan that
    reads only the columns the filter needs (17x faster than lancedb's permutation builder at 2M rows)."""
    return np.sort(scan_row_ids(table, where=filter))


def ensure_builder_memory() -> None:
    """Give lancedb's permutation builder room to sort (see :data:`BUILDER_MEMORY_ENV`)."""
    os.environ.setdefault(BUILDER_MEMORY_ENV, BUILDER_MEMORY_DEFAULT)


def permutation_splits(
    source: TableSource,
    table: Any,
    spec: SplitSpec,
    *,
    filter: str | None,
    split: Callable[[Any], Any],
) -> dict[str, SplitRows]:
    """Splits made by lancedb's permutation builder: ``split(builder)`` adds the kind's ``split_*`` call.

    The builder's result is read in 1M-row batches (its ``to_arrow()`` reads 1,024 at a time),
    each batch's row addresses dealt to their splits as it comes, and the builder's table dropped
    before each split's addresses are sorted: at 10M rows the anonymous peak above the process's
    base fell from +744 MB (all of it read, then one argsort) to +405 MB, the builder's own.
    """
    builder = permutation_builder(table)
    if filter is not None:
        builder = builder.filter(filter)
    builder = split(builder)
    ensure_builder_memory()
    parts: list[list[np.ndarray]] = [[] for _ in spec.names]
    try:
        perm = builder.execute()
        for batch in perm.search().select(["row_id", "split_id"]).limit(None).to_batches(_READ_BATCH):
            row_ids = batch.column("row_id").to_numpy()
            split_ids = batch.column("split_id").to_numpy()
            for i, part in enumerate(parts):
                part.append(row_ids[split_ids == i])
        del perm, builder  # the builder's in-memory table: gone before the sorts below
    except Exception as err:  # lancedb raises ValueError or RuntimeError with DataFusion's message
        hint = ""
        if "memory" in str(err).lower():
            hint = (
                f" (the builder ran out of its memory budget: raise {BUILDER_MEMORY_ENV}, "
                f"now {os.environ.get(BUILDER_MEMORY_ENV)} bytes)"
            )
        raise SplitSpecError(
            f"lancedb could not build {spec.kind} splits {list(spec.names)} of table {table.name!r}{hint}: {err}"
        ) from err
    splits = {}
    for name, part in zip(spec.names, parts):
        row_ids = np.concatenate(part) if part else np.empty(0, np.uint64)
        part.clear()
        row_ids.sort()
        splits[name] = SplitRows(name, source, row_ids.astype(np.uint64, copy=False))
    return splits


@dataclass(frozen=True)
class SizedSplit(SplitSpec):
    """A kind sized by ``fractions`` or ``counts`` (exactly one): random and sequential."""

    names: tuple[str, ...]
    fractions: tuple[float, ...] | None = None
    counts: tuple[int, ...] | None = None

    @staticmethod
    def parse_sizes(kind: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        """``names`` and ``fractions`` or ``counts`` of ``spec``, as keyword arguments."""
        has_f, has_c = "fractions" in spec, "counts" in spec
        if has_f == has_c:
            raise SplitSpecError(
                f"a {kind!r} split spec needs exactly one of 'fractions' or 'counts', got {dict(spec)!r}"
            )
        if has_f:
            names, fractions = parse_fractions(spec["fractions"])
            return {"names": names, "fractions": fractions}
        names, counts = parse_counts(spec["counts"])
        return {"names": names, "counts": counts}

    def check_sizes(self, num_rows: int, context: str) -> None:
        """Refuse a split that would come out empty, or counts the table cannot fill, naming the split."""
        if self.counts is not None:
            empty = [n for n, c in zip(self.names, self.counts) if c == 0]
            if empty:
                raise SplitSpecError(f"split(s) {empty} have a count of 0 and would be empty; drop them from `splits`")
            if sum(self.counts) > num_rows:
                raise SplitSpecError(
                    f"split counts {dict(zip(self.names, self.counts))} add up to {sum(self.counts)} rows, "
                    f"but {context}"
                )
        if self.fractions is not None:
            empty = [f"{n}={f:g}" for n, f in zip(self.names, self.fractions) if int(f * num_rows) == 0]
            if empty:
                raise SplitSpecError(
                    f"split(s) {', '.join(empty)} would be empty: {context}; raise the fraction or drop the split"
                )

    def checked_rows(self, table: Any, filter: str | None) -> tuple[int, str]:
        """``filtered_rows(table, filter)``, once the sizes are checked against that many rows."""
        num_rows, where = filtered_rows(table, filter)
        self.check_sizes(num_rows, f"table {table.name!r} has {num_rows} rows{where}")
        return num_rows, where

    def sized_build(
        self, source: TableSource, table: Any, *, filter: str | None, split: Callable[[Any], Any]
    ) -> dict[str, SplitRows]:
        """Check the sizes against the filtered table, then build with ``split(builder)``."""
        self.checked_rows(table, filter)
        return permutation_splits(source, table, self, filter=filter, split=split)

    def sizes(self) -> dict[str, Any]:
        """``ratios`` and ``counts`` as lancedb's ``split_random`` / ``split_sequential`` take them."""
        return {
            "ratios": list(self.fractions) if self.fractions else None,
            "counts": list(self.counts) if self.counts else None,
        }
