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
            # The split's own table: a `tables` split's rows are another table's row addresses, and a
            # filter over the datamodule's table would pick that table's addresses (silently other rows).
            resolved = _cut_split(splits[name], spec.filter, own=source, table=table, filter=filter, name=spec.name)
            where = f"split {name!r} of table {splits[name].source.name!r}"
        else:
            resolved, version = _table_rows(spec, spec.table, source=source, wanted=wanted, versions=versions)
            where = f"table {spec.table!r} (version {version})"
        if len(resolved) == 0:
            raise SplitSpecError(
                f"mix source {spec.name!r} has no rows: {where}{' where ' + spec.filter if spec.filter else ''} is "
                "empty. Every source must give rows: fix its filter, or leave the source out of mix"
            )
        out.append(resolved)
    return out


def _table_rows(
    spec: SourceSpec,
    name: str,
    *,
    source: TableSource,
    wanted: Mapping[str, Any],
    versions: Mapping[str, Mapping[str, Any]] | None,
) -> tuple[SplitRows, int]:
    """The rows of table ``name`` (in the source's database, at the checkpoint's version where
    ``versions`` has one) that the source's filter keeps, and the version read; its columns checked."""
    uri = spec.uri if spec.uri is not None else source.uri
    other, other_source = open_other_table(source, uri, name, (versions or {}).get(spec.name))
    check_source_columns(spec, name, other.schema, wanted)
    check_filter(other, spec.filter)
    return SplitRows(spec.name, other_source, whole_table_row_ids(other, spec.filter)), other.version


def _cut_split(
    split: SplitRows, cut: str | None, *, own: TableSource, table: Any, filter: str | None, name: str
) -> SplitRows:
    """Split ``split``'s rows that the source's filter ``cut`` keeps, named ``name``."""
    if cut is None:
        return SplitRows(name, split.source, split.row_ids)
    opened = table if split.source == own else split.source.open()
    check_filter(opened, cut)
    kept = whole_table_row_ids(opened, _both(filter, cut))
    return SplitRows(name, split.source, np.intersect1d(split.row_ids, kept, assume_unique=True))


def resolve_eval_sources(
    sources: Sequence[SourceSpec],
    stage: str,
    *,
    source: TableSource,
    table: Any,
    splits: Mapping[str, SplitRows],
    train_split: str | None,
    stage_split: str | None,
    columns: Sequence[str],
    filter: str | None,
    versions: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[SplitRows] | None:
    """Each source's ``stage`` (``"val"`` or ``"test"``) rows, in ``sources``' order, each named
    after its source; None when the stage reads nothing (it has no split and no source names its rows).

    A source's rows: the table named by its ``<stage>_table`` (in its database), or the split named
    by its ``<stage>_split``, else, for a source of the train stage's split, the split ``stage``
    reads (``stage_split``); cut by the source's ``filter``. A source of another table, or of
    another split, has no implied evaluation rows: it must name them (refused otherwise, naming it).
    ``versions``: by source name, the version to read a ``<stage>_table`` at (a checkpoint's)."""
    split_key, table_key = f"{stage}_split", f"{stage}_table"
    if stage_split is None and not any(getattr(spec, split_key) or getattr(spec, table_key) for spec in sources):
        return None
    wanted = {name: table.schema.field(name).type for name in columns}
    out = []
    for spec in sources:
        named_table, named_split = getattr(spec, table_key), getattr(spec, split_key)
        if named_table is not None:
            rows, version = _table_rows(spec, named_table, source=source, wanted=wanted, versions=versions)
            where = f"{table_key}={named_table!r} (version {version})"
        else:
            if named_split is None:
                trains_on = spec.split or train_split
                if spec.table is not None or trains_on != train_split or stage_split is None:
                    reads = f"table {spec.table!r}" if spec.table is not None else f"split {trains_on!r}"
                    why = (
                        f"table {source.name!r} has no {stage} split"
                        if stage_split is None and spec.table is None and trains_on == train_split
                        else f"it trains on {reads}, not on the train stage's split {train_split!r}, so its {stage} "
                        f"split's rows are not its own"
                    )
                    raise MixSpecError(
                        f"eval_by_source: mix source {spec.name!r} has no {stage} rows: {why}. Say where they are: "
                        f"{table_key}=<a table in its database> or {split_key}=<a split of table {source.name!r}: "
                        f"{sorted(splits)}>"
                    )
                named_split = stage_split
            if named_split not in splits:
                raise MixSpecError(
                    f"mix source {spec.name!r}: {split_key}={named_split!r} is not a split of table {source.name!r}; "
                    f"its splits: {sorted(splits)}"
                )
            rows = _cut_split(splits[named_split], spec.filter, own=source, table=table, filter=filter, name=spec.name)
            where = f"split {named_split!r} of table {source.name!r}"
        if len(rows) == 0:
            raise SplitSpecError(
                f"eval_by_source: mix source {spec.name!r} has no {stage} rows: {where}"
                f"{' where ' + spec.filter if spec.filter else ''} is empty. Name rows that it has ({split_key} or "
                f"{table_key}), or loosen its filter"
            )
        out.append(rows)
    return out
