"""``{"kind": "tables", "tables": {"train": "train_table", "val": "val_table"}}``: one table per split.

The tables live in the same database as the datamodule's table; each is pinned at its own
version and the filter applies to each. The datamodule's own table is not read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..source import TableSource, check_filter, open_other_table
from .base import SplitRows, SplitSpec, names_and_values, whole_table_row_ids


@dataclass(frozen=True)
class TablesSplit(SplitSpec):
    kind: ClassVar[str] = "tables"
    takes: ClassVar[frozenset[str]] = frozenset({"tables"})
    survives_appends: ClassVar[bool] = True

    names: tuple[str, ...]
    tables: tuple[str, ...]

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> TablesSplit:
        names, tables = names_and_values(spec.get("tables"), "tables")
        return cls(names, tuple(str(t) for t in tables))

    def build(self, source: TableSource, table: Any, *, filter: str | None, seed: int) -> dict[str, SplitRows]:
        return {
            name: table_split(name, source, table_name, filter) for name, table_name in zip(self.names, self.tables)
        }


def table_split(
    name: str, source: TableSource, table_name: str, filter: str | None, pin: Mapping[str, Any] | None = None
) -> SplitRows:
    """Split ``name``: the rows of table ``table_name`` (in ``source``'s database) that ``filter``
    keeps, at ``pin``'s version (a checkpoint's) or its latest."""
    split_table, split_source = open_other_table(source, source.uri, table_name, pin)
    check_filter(split_table, filter)
    return SplitRows(name, split_source, whole_table_row_ids(split_table, filter))
