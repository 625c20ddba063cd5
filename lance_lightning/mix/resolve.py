"""Each source of a mixture as rows of a pinned table version: resolved once, at setup.

A source of the datamodule's own table is a split's rows (cut by its ``filter``); a source of
another table is that table pinned at its version (stamped, so a recreation is caught like the
main table's), all its rows or those its ``filter`` keeps. Every source must hold the columns
read, with the same Arrow types: a batch stacks rows of every source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ..source import TableSource, check_filter, open_other_table
from ..splits import SplitRows, SplitSpecError
from ..splits.base import whole_table_row_ids
from .spec import MixSpecError, SourceSpec


def _both(first: str | None, second: str) -> str:
    return second if first is None else f"({first}) AND ({second})"


def check_source_columns(
    spec: SourceSpec, table_name: str, schema: pa.Schema, wanted: Mapping[str, pa.DataType]
) -> None:
    """Refuse a source without one of the columns read, or with another type for it."""
    missing = [name for name in wanted if schema.get_field_index(name) < 0]
    if missing:
        raise MixSpecError(
            f"mix source {spec.name!r} (table {table_name!r}) has no column(s) {missing} that the batches hold; its "
            f"columns: {schema.names}. Select only columns every source has (columns=...)"
        )
    differ = [
        f"{name!r}: {schema.field(name).type} here, {kind} in the first source"
        for name, kind in wanted.items()
        if schema.field(name).type != kind
    ]
    if differ:
        raise MixSpecError(
            f"mix source {spec.name!r} (table {table_name!r}) holds column(s) of another type than the first source: "
            f"{'; '.join(differ)}. A batch stacks rows of every source: cast the column in the table (or leave it "
            "out of columns)"
        )


def resolve_sources(
    sources: Sequence[SourceSpec],
    *,
    source: TableSource,
    table: Any,
    splits: Mapping[str, SplitRows],
    train_split: str,
    columns: Sequence[str],
    filter: str | None,
    versions: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[SplitRows]:
    """The rows of each source (in ``sources``' order), each a :class:`~.splits.SplitRows`
    named after the source. ``source``/``table``: the datamodule's pinned table; ``splits``: its
    splits; ``train_split``: the split a source without ``split`` or ``table`` reads; ``filter``:
    the datamodule's filter (its splits are already cut by it); ``versions``: by source name, the
    ``version`` (and its commit ``time``) to read another table at (a checkpoint's), else its latest."""
    wanted = {name: table.schema.field(name).type for name in columns}
    out = []
    for spec in sources:
        if spec.table is None:
            name = spec.split or train_split
            if name not in splits:
                raise MixSpecError(
                    f"mix source {spec.name!r} reads split {name!r}, which table {source.name!r} does not have; its "
                    f"splits: {sorted(splits)}"
                )
            rows = splits[name].row_ids
            if spec.filter is not None:
                check_filter(table, spec.filter)
                rows = np.intersect1d(rows, whole_table_row_ids(table, _both(filter, spec.filter)), assume_unique=True)
            resolved = SplitRows(spec.name, splits[name].source, rows)
            where = f"split {name!r} of table {source.name!r}"
        else:
            uri = spec.uri if spec.uri is not None else source.uri
            other, other_source = open_other_table(source, uri, spec.table, (versions or {}).get(spec.name))
            check_source_columns(spec, spec.table, other.schema, wanted)
            check_filter(other, spec.filter)
            resolved = SplitRows(spec.name, other_source, whole_table_row_ids(other, spec.filter))
            where = f"table {spec.table!r} (version {other.version})"
        if len(resolved) == 0:
            raise SplitSpecError(
                f"mix source {spec.name!r} has no rows: {where}{' where ' + spec.filter if spec.filter else ''} is "
                "empty. Every source must give rows: fix its filter, or leave the source out of mix"
            )
        out.append(resolved)
    return out
