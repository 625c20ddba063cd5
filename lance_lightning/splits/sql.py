"""``{"kind": "sql", "predicates": {"train": "year < 2020", "val": "year = 2020"}}``.

One SQL predicate per split (ANDed with the filter); a row matching two predicates is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..filters import cut_short, early_end, refusal
from ..source import TableSource
from .base import SplitRows, SplitSpec, SplitSpecError, filtered_rows, names_and_values, whole_table_row_ids


def _subject(name: str, predicate: str) -> str:
    return f"predicate {predicate!r} of split {name!r}"


def _and(filter: str | None, predicate: str) -> str:
    # Newlines end a trailing ``--`` comment of either part before the parenthesis that closes it.
    return predicate if filter is None else f"(\n{filter}\n) AND (\n{predicate}\n)"


@dataclass(frozen=True)
class SqlSplit(SplitSpec):
    kind: ClassVar[str] = "sql"
    takes: ClassVar[frozenset[str]] = frozenset({"predicates"})
    survives_appends: ClassVar[bool] = True

    names: tuple[str, ...]
    predicates: tuple[str, ...]

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> SqlSplit:
        names, predicates = names_and_values(spec.get("predicates"), "predicates")
        bad = [n for n, p in zip(names, predicates) if not isinstance(p, str) or not p.strip()]
        if bad:
            raise SplitSpecError(f"SQL split predicates for {bad} must be non-empty strings")
        for name, predicate in zip(names, predicates):
            early = early_end(predicate)  # a ';', ',' or ')' that ends it: knowable without a table
            if early is not None:
                raise SplitSpecError(cut_short(_subject(name, predicate), predicate, *early))
        return cls(names, tuple(predicates))

    def build(self, source: TableSource, table: Any, *, filter: str | None, seed: int) -> dict[str, SplitRows]:
        filtered_rows(table, filter)
        out: dict[str, SplitRows] = {}
        for name, predicate in zip(self.names, self.predicates):
            problem = refusal(table, predicate, _subject(name, predicate))
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
            out[name] = SplitRows(name, source, ids)
        return out
