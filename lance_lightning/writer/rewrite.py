"""The commits that need lancedb only: the table rewritten with the new columns, or a new table.

``commit_columns`` streams the pinned version of the table in scan order, joins each chunk with
the staged rows and writes it back with one ``overwrite``: the new columns appear at exactly one
new version, but every column is rewritten, row addresses change and indexes are dropped (refused
unless ``drop_indexes=True``). It is the fallback of :mod:`.fragments` (pylance absent,
an existing column replaced, stable row ids). ``commit_table`` writes a new keyed table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ..source import TableSource, connect, version_time
from .stage import (
    _RESERVED,
    COMMIT_CHUNK_ROWS,
    KEY_ROWID,
    ROWID,
    PredictionWriteError,
    TableMovedError,
    _Staged,
)

# -- commits ----------------------------------------------------------------------------------


def _take(rows: pa.Table | None, index: np.ndarray, fields: list[pa.Field]) -> list[pa.Array]:
    """The output columns for one chunk: row ``index[i]`` of ``rows``, null where it is -1."""
    if rows is None:
        return [pa.nulls(len(index), f.type) for f in fields]
    if rows.num_rows == len(index) and index[0] == 0 and np.all(np.diff(index) == 1):
        return [rows.column(f.name).combine_chunks() for f in fields]  # every row, in order: no take
    indices = pa.array(index, mask=index < 0)
    taken = rows.take(indices)
    return [taken.column(f.name).combine_chunks() for f in fields]


def _native_overwrite(table: Any, reader: pa.RecordBatchReader) -> int:
    """Overwrite ``table`` with ``reader`` as given; returns the new version.

    ``Table.add(mode="overwrite")`` would first run lancedb's "bad vectors" check on every
    fixed_size_list of >= 10 floats: it refuses (or with ``on_bad_vectors="null"`` nulls out) a
    vector holding NaN or null in *any* column, the table's own included, which would refuse
    this write or change other columns. The native ``add`` behind it changes no value, but lance
    itself still refuses a NaN in a vector column (:func:`commit_columns` says so, naming the table).
    """
    from lancedb.background_loop import LOOP
    from lancedb.scannable import to_scannable

    inner = getattr(getattr(table, "_table", None), "_inner", None)
    if inner is None or not hasattr(inner, "add"):
        raise PredictionWriteError(
            f"this lancedb ({type(table).__name__}) has no native add to overwrite table {table.name!r} with"
        )

    async def add() -> Any:
        return await inner.add(to_scannable(reader), "overwrite")

    return int(LOOP.run(add()).version)


@dataclass
class _Target:
    """Where and how the run writes; resolved once per run from the datamodule and the options."""

    source: TableSource  # the table read, pinned
    table: str | None  # a separate table to write, or None: new columns of the source
    keys: list[str] = field(default_factory=list)  # separate table: source columns kept as keys


def _table_moved(source: TableSource, latest: Any) -> str | None:
    """Why ``latest`` (the table now) is not the version the run read, or None."""
    if latest.version != source.version:
        return f"it is at version {latest.version} now, the run read version {source.version}"
    stamp = version_time(latest)
    if source.version_time is not None and stamp is not None and stamp != source.version_time:
        return (
            f"its version {latest.version} was committed at {stamp}, the one read at {source.version_time} "
            "(dropped and recreated)"
        )
    return None


def commit_columns(
    source: TableSource, staged: _Staged, *, overwrite: bool = False, drop_indexes: bool = False
) -> dict[str, Any]:
    """Write the staged outputs as columns of ``source``'s table: one overwrite, one new version."""
    latest = source.pinned(None).open()
    moved = _table_moved(source, latest)
    if moved:
        raise TableMovedError(
            f"table {source.name!r} changed while predicting ({moved}). Writing the predictions would undo those "
            "changes, so nothing was written: run predict again on the table as it is now."
        )
    fields = staged.output_fields
    names = [f.name for f in fields]
    _check_new_columns(source.name, latest.schema, names, overwrite=overwrite)
    _check_indexes(latest, drop_indexes=drop_indexes)
    pinned = source.open()
    schema = pinned.schema
    new = {f.name: f for f in fields}
    out_fields = [new.pop(f.name) if f.name in new else f for f in schema]
    out_schema = pa.schema([*out_fields, *new.values()], metadata=schema.metadata)
    table_columns = schema.names
    placed = 0

    def chunks() -> Iterator[pa.RecordBatch]:
        nonlocal placed
        scan = pinned.search().select([*table_columns, ROWID]).to_batches(COMMIT_CHUNK_ROWS)
        for chunk in scan:
            rows, index = staged.gather(chunk.column(ROWID).to_numpy())
            placed += int((index >= 0).sum())
            outputs = dict(zip(names, _take(rows, index, fields)))
            arrays = [outputs[name] if name in outputs else chunk.column(name) for name in out_schema.names]
            yield pa.RecordBatch.from_arrays(arrays, schema=out_schema)
        if placed != staged.num_rows:  # raising here aborts the write: no version is committed
            raise PredictionWriteError(
                f"{staged.num_rows - placed} of {staged.num_rows} predicted rows are not in version {source.version} "
                f"of table {source.name!r}"
            )

    rows_before = pinned.count_rows()
    try:
        version = _native_overwrite(latest, pa.RecordBatchReader.from_batches(out_schema, chunks()))
    except PredictionWriteError:
        raise
    except Exception as err:  # lance's own refusal, e.g. a NaN in one of the table's vector columns
        raise PredictionWriteError(
            f"lance could not rewrite table {source.name!r} with column(s) {names}: {err}. The table is unchanged "
            f"(version {source.version}). A rewrite writes every column again and lance checks them as it does; "
            "write to a table of its own (table=...) instead, or (with pylance) add the outputs under new column "
            "names, which writes only the new columns"
        ) from err
    if version != source.version + 1:
        # Another commit landed between the check above and ours, and an overwrite does not
        # conflict with it: put the table back as that commit left it, and say so.
        latest.restore(version - 1)
        raise TableMovedError(
            f"table {source.name!r} got another commit (version {version - 1}) while the predictions were written "
            f"(version {version}); restored version {version - 1} as version {latest.version}, so neither is lost. "
            "Run predict again."
        )
    rows_after = latest.count_rows()
    if rows_after != rows_before:  # cannot happen: every row of the pinned version was streamed once
        latest.restore(source.version)
        raise PredictionWriteError(f"wrote {rows_after} rows for {rows_before}; restored version {source.version}")
    return {"table": source.name, "version": version, "columns": names, "rows": staged.num_rows, "of": rows_before}


def new_table_schema(source: TableSource, schema: pa.Schema, keys: Sequence[str], fields: list[pa.Field]) -> pa.Schema:
    """A predictions table's schema: the key columns (as in ``schema``, the table read), the outputs,
    and where the rows came from (table, version) in its metadata."""
    key_fields = [pa.field(KEY_ROWID, pa.uint64(), nullable=False)] if KEY_ROWID in keys else []
    key_fields += [schema.field(k) for k in keys if k != KEY_ROWID]
    metadata = {
        b"lance_lightning.source": json.dumps(
            {"uri": source.uri, "table": source.name, "version": source.version, "version_time": source.version_time}
        ).encode()
    }
    return pa.schema([*key_fields, *fields], metadata=metadata)


def commit_table(source: TableSource, staged: _Staged, name: str, keys: Sequence[str], *, overwrite: bool) -> dict:
    """Write the staged outputs with their key columns as a new table ``name`` (one commit)."""
    pinned = source.open()
    fields = staged.output_fields
    extra = [k for k in keys if k != KEY_ROWID]
    schema = new_table_schema(source, pinned.schema, keys, fields)

    def rows_in_order() -> Iterator[pa.RecordBatch]:
        if not extra:  # the staged addresses are the whole key: no read of the table
            for batch in staged.in_order():
                yield pa.RecordBatch.from_arrays(batch.columns, schema=schema)
            return
        placed = 0
        for chunk in pinned.search().select([*extra, ROWID]).to_batches(COMMIT_CHUNK_ROWS):
            rows, index = staged.gather(chunk.column(ROWID).to_numpy())
            hit = np.flatnonzero(index >= 0)
            if not len(hit):
                continue
            placed += len(hit)
            picked = pa.array(hit)
            keys_part = {KEY_ROWID: chunk.column(ROWID).take(picked)} | {k: chunk.column(k).take(picked) for k in extra}
            outputs = dict(zip([f.name for f in fields], _take(rows, index[hit], fields)))
            yield pa.RecordBatch.from_arrays([(keys_part | outputs)[f.name] for f in schema], schema=schema)
        if placed != staged.num_rows:
            raise PredictionWriteError(f"{staged.num_rows - placed} predicted rows are not in table {source.name!r}")

    db = connect(source.uri, storage_options=source.storage_options, **dict(source.connect_kwargs or {}))
    reader = pa.RecordBatchReader.from_batches(schema, rows_in_order())
    written = db.create_table(name, reader, mode="overwrite" if overwrite else "create")
    return {"table": name, "version": written.version, "columns": [f.name for f in fields], "rows": staged.num_rows}


def _check_new_columns(table_name: str, schema: pa.Schema, names: Sequence[str], *, overwrite: bool) -> None:
    reserved = sorted(set(names) & _RESERVED)
    if reserved:
        raise PredictionWriteError(f"output column name(s) {reserved} are reserved by lance/lancedb; pick another")
    existing = [n for n in names if n in schema.names]
    if existing and not overwrite:
        raise PredictionWriteError(
            f"table {table_name!r} already has column(s) {existing}: nothing was written. Pick another column name, "
            "or pass overwrite=True to replace them"
        )


def _check_indexes(table: Any, *, drop_indexes: bool) -> None:
    indexes = table.list_indices()
    if indexes and not drop_indexes:
        shown = ", ".join(f"{i.name} ({i.index_type} on {', '.join(i.columns)})" for i in indexes)
        raise PredictionWriteError(
            f"table {table.name!r} has indexes: {shown}. Writing columns rewrites the table in one commit, which drops "
            "them (lancedb 0.40 cannot add a column with values otherwise). Pass drop_indexes=True and rebuild them "
            "afterwards, or write the predictions to a table of their own: LancePredictionWriter(table=...)"
        )
