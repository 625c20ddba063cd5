"""``{"kind": "sequential", "fractions" | "counts": {...}}``: consecutive runs, in table order.

Appending rows moves the boundaries of fractions, so rows change split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..source import TableSource
from .base import SizedSplit, SplitRows


@dataclass(frozen=True)
class SequentialSplit(SizedSplit):
    kind: ClassVar[str] = "sequential"
    takes: ClassVar[frozenset[str]] = frozenset({"fractions", "counts"})
    survives_appends: ClassVar[bool] = False

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> SequentialSplit:
        return cls(**cls.parse_sizes(cls.kind, spec))

    def build(self, source: TableSource, table: Any, *, filter: str | None, seed: int) -> dict[str, SplitRows]:
        return self.sized_build(
            source,
            table,
            filter=filter,
            split=lambda builder: builder.split_sequential(**self.sizes(), split_names=list(self.names)),
        )
