"""``{"kind": "hash", "columns": ["id"], "weights": {"train": 8, "val": 1}, "discard_weight": 0}``.

A row's split follows from a hash of its ``columns``: it keeps its split when rows are appended
or deleted. ``discard_weight`` sets aside a share of rows in no split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..source import LanceSourceError, TableSource
from .base import (
    INT64_MAX,
    SplitRows,
    SplitSpec,
    SplitSpecError,
    filtered_rows,
    is_count,
    parse_counts,
    permutation_splits,
)


@dataclass(frozen=True)
class HashSplit(SplitSpec):
    kind: ClassVar[str] = "hash"
    takes: ClassVar[frozenset[str]] = frozenset({"columns", "weights", "discard_weight"})
    survives_appends: ClassVar[bool] = True

    names: tuple[str, ...]
    columns: tuple[str, ...]
    weights: tuple[int, ...]
    discard_weight: int = 0

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> HashSplit:
        columns = spec.get("columns")
        if isinstance(columns, str):
            columns = [columns]
        if not columns:
            raise SplitSpecError("a 'hash' split spec needs 'columns': the columns to hash, e.g. ['id']")
        names, weights = parse_counts(spec.get("weights"))
        discard = spec.get("discard_weight", 0)
        if discard is None:
            discard = 0  # lancedb raises TypeError on None
        if not is_count(discard) or discard < 0:
            raise SplitSpecError(f"discard_weight must be an integer >= 0, got {discard!r}")
        discard = int(discard)
        if sum(weights) == 0:
            raise SplitSpecError(f"hash split weights {dict(zip(names, weights))} are all zero")
        if sum(weights) + discard > INT64_MAX:  # lancedb sums them in 64 bits: past that, splits come out wrong
            raise SplitSpecError(
                f"hash split weights {dict(zip(names, weights))} and discard_weight {discard} add up to "
                f"{sum(weights) + discard}; they must add up to less than 2**63"
            )
        return cls(names, tuple(columns), weights, discard)

    def build(self, source: TableSource, table: Any, *, filter: str | None, seed: int) -> dict[str, SplitRows]:
        filtered_rows(table, filter)
        missing = [c for c in self.columns if c not in table.schema.names]
        if missing:
            raise LanceSourceError(
                f"hash split columns {missing} are not in table {table.name!r}; its columns: {table.schema.names}"
            )
        return permutation_splits(
            source,
            table,
            self,
            filter=filter,
            split=lambda builder: builder.split_hash(
                list(self.columns), list(self.weights), discard_weight=self.discard_weight, split_names=list(self.names)
            ),
        )
