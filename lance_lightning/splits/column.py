"""``{"kind": "column", "column": "split"}``: each row's value in ``column`` names its split.

Every distinct value is a split; rows keep their split when rows are appended.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..reads import scan_with_row_ids
from ..source import LanceSourceError, TableSource
from .base import SplitRows, SplitSpec, SplitSpecError, filtered_rows


@dataclass(frozen=True)
class ColumnSplit(SplitSpec):
    kind: ClassVar[str] = "column"
    takes: ClassVar[frozenset[str]] = frozenset({"column"})
    survives_appends: ClassVar[bool] = True
    names: ClassVar[tuple[str, ...]] = ()  # known only once the table is read

    column: str

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> ColumnSplit:
        column = spec.get("column")
        if not isinstance(column, str) or not column:
            raise SplitSpecError("a 'column' split spec needs 'column': the column whose values name the split")
        return cls(column)

    def build(self, source: TableSource, table: Any, *, filter: str | None, seed: int) -> dict[str, SplitRows]:
        filtered_rows(table, filter)
        column = self.column
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
