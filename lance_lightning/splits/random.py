"""``{"kind": "random", "fractions" | "counts": {...}, "seed": 7}``: seeded random splits.

Also the shorthand ``{"train": 0.8, "val": 0.2}`` (fractions) or ``{"train": 800, "val": 200}``
(counts). ``seed`` defaults to the datamodule's seed. Appending rows reshuffles every row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..source import TableSource
from .base import SizedSplit, SplitRows, SplitSpecError, is_count


@dataclass(frozen=True)
class RandomSplit(SizedSplit):
    kind: ClassVar[str] = "random"
    takes: ClassVar[frozenset[str]] = frozenset({"fractions", "counts", "seed"})
    survives_appends: ClassVar[bool] = False

    seed: int | None = None

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> RandomSplit:
        seed = spec.get("seed")
        if seed is not None and (not is_count(seed) or not 0 <= seed < 2**64):
            raise SplitSpecError(f"split seed must be an integer >= 0 and < 2**64 (or None), got {seed!r}")
        return cls(**cls.parse_sizes(cls.kind, spec), seed=int(seed) if seed is not None else None)

    def build(self, source: TableSource, table: Any, *, filter: str | None, seed: int) -> dict[str, SplitRows]:
        return self.sized_build(
            source,
            table,
            filter=filter,
            split=lambda builder: builder.split_random(
                **self.sizes(), seed=self.seed if self.seed is not None else seed, split_names=list(self.names)
            ),
        )
