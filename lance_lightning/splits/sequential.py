"""``{"kind": "sequential", "fractions" | "counts": {...}}``: consecutive runs, in table order.

Appending rows moves the boundaries of fractions, so rows change split.

Built from the one ``_rowid`` scan (8 bytes a row), not lancedb's permutation builder: the same
rows (its sizing rule is :func:`sequential_counts`, checked against the builder in the tests) at a
fraction of the memory (10M rows: the builder took the setup's resident set 790 MB up).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..reads import scan_row_ids
from ..source import TableSource
from .base import SizedSplit, SplitRows, SplitSpecError


@dataclass(frozen=True)
class SequentialSplit(SizedSplit):
    kind: ClassVar[str] = "sequential"
    takes: ClassVar[frozenset[str]] = frozenset({"fractions", "counts"})
    survives_appends: ClassVar[bool] = False

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> SequentialSplit:
        return cls(**cls.parse_sizes(cls.kind, spec))

    def build(self, source: TableSource, table: Any, *, filter: str | None, seed: int) -> dict[str, SplitRows]:
        num_rows, where = self.checked_rows(table, filter)
        ids = scan_row_ids(table, where=filter)
        if len(ids) != num_rows:
            raise SplitSpecError(
                f"table {table.name!r} (version {table.version}) counted {num_rows} rows{where} but its scan "
                f"returned {len(ids)}: was it changed while the splits were built?"
            )
        bounds = np.cumsum([0, *sequential_counts(num_rows, self.fractions, self.counts)]).tolist()
        return {
            name: SplitRows(name, source, np.sort(ids[lo:hi]))
            for name, lo, hi in zip(self.names, bounds[:-1], bounds[1:])
        }


def sequential_counts(num_rows: int, fractions: tuple[float, ...] | None, counts: tuple[int, ...] | None) -> list[int]:
    """Rows in each split, as lancedb's permutation builder sizes them (``SplitSizes::to_counts``):
    counts as given; fractions each rounded half away from zero, then rows taken off (or, when the
    fractions add up to the whole table, given) one split at a time from the first until they sum
    to at most the table. Pure: tested against the builder itself."""
    if counts is not None:
        return [int(c) for c in counts]
    assert fractions is not None
    sizes = [_round_half_away(f * num_rows) for f in fractions]
    whole = abs(num_rows - sum(fractions) * num_rows) < 0.5
    excess, i = sum(sizes) - num_rows, 0
    while excess > 0:
        if sizes[i] > 0:
            sizes[i] -= 1
            excess -= 1
        i = (i + 1) % len(sizes)
    i = 0
    while whole and excess < 0:
        sizes[i] += 1
        excess += 1
        i = (i + 1) % len(sizes)
    return sizes


def _round_half_away(x: float) -> int:
    """Rust's ``f64::round`` for ``x >= 0`` (Python's ``round`` rounds half to even)."""
    whole = math.floor(x)
    return whole + 1 if x - whole >= 0.5 else whole
