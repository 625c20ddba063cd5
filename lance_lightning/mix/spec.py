"""The ``mix`` setting parsed: each source of a mixture as a small frozen record. Pure.

A source is rows of the datamodule's table (its train split, another named ``split``, either cut
by an SQL ``filter``) or of another ``table`` (in the same database, or at ``uri``), with the
``proportion`` of each epoch it makes. ``mix`` is a mapping of source name to its settings (what
Hydra overrides best: ``data.mix.web.proportion=0.3``) or a list of them (each with an optional
``name``).

With ``eval_by_source`` set, validation and test read one loader per source: ``val_split`` /
``test_split`` name the split of the datamodule's table that holds a source's evaluation rows,
``val_table`` / ``test_table`` a table (in the source's database) that does; the source's
``filter`` cuts them too. These keys decide no training row: a checkpoint does not record them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

SOURCE_KEYS = (
    "name",
    "proportion",
    "table",
    "uri",
    "split",
    "filter",
    "val_split",
    "val_table",
    "test_split",
    "test_table",
)
EVAL_KEYS = ("val_split", "val_table", "test_split", "test_table")
"""The keys that say where a source's validation and test rows are (read with ``eval_by_source``)."""


class MixSpecError(ValueError):
    """A ``mix`` setting that cannot be read (the message names the source and key)."""


@dataclass(frozen=True)
class SourceSpec:
    """One source of a mixture as written in ``mix``."""

    name: str
    proportion: float
    table: str | None = None
    """Another table (None: the datamodule's own)."""
    uri: str | None = None
    """The database of ``table`` (None: the datamodule's ``uri``)."""
    split: str | None = None
    """A split of the datamodule's table (None: the train stage's split); not with ``table``."""
    filter: str | None = None
    """An SQL predicate: only the rows it keeps."""
    val_split: str | None = None
    """The split of the datamodule's table holding this source's validation rows (``eval_by_source``)."""
    val_table: str | None = None
    """A table (in this source's database) holding its validation rows (``eval_by_source``)."""
    test_split: str | None = None
    """The split of the datamodule's table holding this source's test rows (``eval_by_source``)."""
    test_table: str | None = None
    """A table (in this source's database) holding its test rows (``eval_by_source``)."""

    def identity(self) -> dict[str, Any]:
        """What a checkpoint records of this source (a resume that changes it is refused): where
        its training rows come from and its share, not where its evaluation rows are."""
        out = asdict(self)
        for key in EVAL_KEYS:
            del out[key]
        return out

    def eval_keys(self) -> dict[str, str]:
        """The evaluation keys this source sets (``val_split``... ``test_table``), by key."""
        return {key: getattr(self, key) for key in EVAL_KEYS if getattr(self, key) is not None}

    def describe(self) -> str:
        where = f"table {self.table!r}" if self.table else f"split {self.split or 'train'!r}"
        return where + (f" where {self.filter}" if self.filter else "")


def _text(source: str, key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise MixSpecError(f"mix source {source!r}: {key} must be a non-empty string or left out, got {value!r}")
    return value


def _proportion(source: str, value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise MixSpecError(
            f"mix source {source!r}: proportion must be a number > 0 (its share of each epoch; the proportions "
            f"are normalized over their sum), got {value!r}"
        )
    return float(value)


def parse_source(entry: Any, *, default_name: str) -> SourceSpec:
    """One source from its mapping; errors name the source and the key."""
    if not isinstance(entry, Mapping):
        raise MixSpecError(
            f"mix source {default_name!r} must be a mapping with keys {', '.join(SOURCE_KEYS)} (proportion "
            f"required), got {entry!r}"
        )
    unknown = sorted(str(k) for k in entry if k not in SOURCE_KEYS)
    if unknown:
        raise MixSpecError(
            f"mix source {default_name!r}: unknown key(s) {unknown}; valid keys: {', '.join(SOURCE_KEYS)}"
        )
    name = _text(default_name, "name", entry.get("name")) or default_name
    if "proportion" not in entry:
        raise MixSpecError(f"mix source {name!r} has no proportion (its share of each epoch, a number > 0)")
    spec = SourceSpec(
        name=name,
        proportion=_proportion(name, entry["proportion"]),
        table=_text(name, "table", entry.get("table")),
        uri=_text(name, "uri", entry.get("uri")),
        split=_text(name, "split", entry.get("split")),
        filter=_text(name, "filter", entry.get("filter")),
        **{key: _text(name, key, entry.get(key)) for key in EVAL_KEYS},
    )
    for stage in ("val", "test"):
        if getattr(spec, f"{stage}_split") is not None and getattr(spec, f"{stage}_table") is not None:
            raise MixSpecError(
                f"mix source {name!r}: {stage}_split and {stage}_table both say where its {stage} rows are; give one"
            )
    if spec.uri is not None and spec.table is None:
        raise MixSpecError(f"mix source {name!r}: uri names a database; name the table in it too (table=...)")
    if spec.table is not None and spec.split is not None:
        raise MixSpecError(
            f"mix source {name!r}: split names a split of the datamodule's own table, but the source reads table "
            f"{spec.table!r} (all its rows, or those its filter keeps): leave out split, or table"
        )
    return spec


def parse_mix(value: Any) -> tuple[SourceSpec, ...] | None:
    """``mix`` as source records (None: no mixture)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        entries = [(str(name), entry) for name, entry in value.items()]
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        entries = [(f"source{i}", entry) for i, entry in enumerate(value)]
    else:
        raise MixSpecError(f"mix must be a mapping of source name to its settings (or a list of them), got {value!r}")
    if not entries:
        raise MixSpecError("mix names no source: give at least one, or leave mix out (None)")
    sources = tuple(parse_source(entry, default_name=name) for name, entry in entries)
    names = [s.name for s in sources]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise MixSpecError(f"mix names source(s) {repeated} more than once; each source needs its own name")
    return sources
