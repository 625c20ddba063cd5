"""``LancePredictionWriter``: ``predict_step`` outputs become new columns of the table read.

Three steps, one owner each:

1. **Rows.** Each rank maps its ``batch_idx``-th predict batch back to the rows it was read
   from with the same pure arithmetic its sampler used (:func:`~.sharding.rank_batch_bounds`
   on the datamodule's predict sampler: table order, every row once, no padding), then
   positions in the split to row addresses (``_rowid`` of the pinned version). Lightning's
   own ``batch_indices`` are not used: our loader hands out whole batches, which Lightning
   cannot see into, and it keeps every index of the epoch in memory.
2. **Staging.** As it goes, each rank appends ``(_rowid, outputs)`` of every batch to its own
   Arrow IPC file in a staging directory every rank can reach (``<database>/.lance-lightning-staging``
   for a local table): nothing is held in memory beyond one batch. A finished rank renames its
   file into place and writes a marker with its row count.
3. **Commit.** After a barrier in ``on_predict_end``, rank 0 streams the pinned version of the
   table in scan order, joins each chunk with the staged rows (read a batch at a time, found by address)
   and writes it back **in one call**, which makes the new columns appear at exactly one new
   table version. Rows the run did not predict (a ``filter``, a ``predict`` split,
   ``limit_predict_batches``) get nulls. The outcome is broadcast, so every rank returns or
   raises alike, and the staging directory is removed.

Why the commit rewrites the table: lancedb 0.40 has no call that adds a column *with values*
and keeps the other columns' files: ``Table.merge`` needs pylance, branch cherry-picks are an
Enterprise feature, ``add_columns`` takes SQL expressions or all-null columns only, and
``merge_insert`` on a key needs a second commit for the new column, builds its hash join of the
whole source in memory (a 1M x 128 float32 source exceeded lance's 300 MB pool) and rewrites
every row anyway unless the key has a scalar index. So the table is rewritten with one
``overwrite`` of the pinned version plus the new columns (row values, order and count kept),
fed as a stream. Its consequences, all checked: indexes are dropped by an overwrite (refused
unless ``drop_indexes=True``); row addresses change (like after a compaction); and an
overwrite does not conflict with a concurrent commit, so the commit is refused when the table
moved on since the pinned version, and undone (``restore``) when a commit slipped in while it
ran. lancedb's public ``add`` would also null out or refuse vectors holding NaN or null in
*other* columns (its "bad vectors" check), so the stream goes to the table's native ``add``.

``LancePredictionWriter(table="preds")`` writes a new table instead (``create_table``, one
commit): key columns (``source_rowid``, the row address in the version read, plus ``id`` when
the table has one) and the outputs, for the predicted rows only.

A run killed before the commit leaves the table as it was; its staging files are removed by
the next run writing the same target. A SIGKILL during the commit leaves the table as it was
too, but its half-written data files stay in the table directory: no version refers to them, and
lance's cleanup (``optimize`` / ``cleanup_old_versions``) deletes them once they are 7 days old, or
at once with ``delete_unverified=True``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import warnings
from array import array as int_array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from .sharding import rank_batch_bounds, take_padded
from .source import TableSource, connect, is_local_uri, list_table_names, version_time

__all__ = ["LancePredictionWriter", "PredictionWriteError", "TableMovedError", "prediction_arrays"]

ROWID = "_rowid"
KEY_ROWID = "source_rowid"
"""The key column of a separate predictions table: the row's address in the version read
(lance reserves the name ``_rowid``)."""
COMMIT_CHUNK_ROWS = 16_384
"""Rows of the table read, joined and written at a time by the commit."""
STAGING_DIRNAME = ".lance-lightning-staging"
BF16_METADATA = {b"lance_lightning.torch_dtype": b"bfloat16"}
_RESERVED = {ROWID, "_rowaddr", "_rowoffset", "_distance", "_score", "_relevance_score"}


class PredictionWriteError(RuntimeError):
    """The predictions cannot be written as asked; the table is left as it was."""


class TableMovedError(PredictionWriteError):
    """The table has a newer version than the one read: writing would lose its changes."""


# -- outputs -> Arrow ------------------------------------------------------------------------


def prediction_arrays(prediction: Any, column: str | None) -> dict[str, tuple[pa.Array, dict[bytes, bytes] | None]]:
    """``predict_step``'s output as ``{column name: (Arrow array, field metadata)}``.

    A tensor ``[B]`` is a scalar column, ``[B, D]`` a ``fixed_size_list<T>[D]``, ``[B, d1, d2,
    ...]`` a ``fixed_shape_tensor``; dtypes are kept (float16 included), except bfloat16, which
    Arrow lacks: it is stored as float32 (every bfloat16 value exactly) and the field says
    ``lance_lightning.torch_dtype=bfloat16``. A dict ``{name: tensor}`` gives one column per
    key, named ``name`` (or ``<column>_<name>`` when ``column`` is given).
    """
    if isinstance(prediction, Mapping):
        if not prediction:
            raise PredictionWriteError("predict_step returned an empty dict: nothing to write")
        items = {(f"{column}_{key}" if column else str(key)): value for key, value in prediction.items()}
    elif column is None:
        raise PredictionWriteError(
            f"predict_step returned a {type(prediction).__name__}, not a dict: name its column, "
            "LancePredictionWriter(column='...')"
        )
    else:
        items = {column: prediction}
    return {name: _to_arrow(name, value) for name, value in items.items()}


def _to_arrow(name: str, value: Any) -> tuple[pa.Array, dict[bytes, bytes] | None]:
    metadata = None
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.dtype == torch.bfloat16:
            tensor, metadata = tensor.float(), BF16_METADATA
        if tensor.is_complex():
            raise PredictionWriteError(f"output {name!r} is complex ({tensor.dtype}): Arrow has no complex type")
        array = tensor.cpu().contiguous().numpy()
    elif isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
    else:
        raise PredictionWriteError(
            f"output {name!r} is a {type(value).__name__}; the writer takes tensors (or NumPy arrays), one row a row"
        )
    if array.ndim == 0:
        raise PredictionWriteError(f"output {name!r} is a scalar; it needs one value per row of the batch ([B, ...])")
    if array.ndim == 1:
        return pa.array(array), metadata
    if array.ndim == 2:
        return pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), array.shape[1]), metadata
    return pa.FixedShapeTensorArray.from_numpy_ndarray(array), metadata


# -- staging: one Arrow IPC file per rank ------------------------------------------------------


def _marker(directory: Path, rank: int) -> Path:
    return directory / f"rank-{rank:05d}.json"


def _rank_file(directory: Path, rank: int) -> Path:
    return directory / f"rank-{rank:05d}.arrow"


def _ranges(directory: Path, rank: int) -> Path:
    return directory / f"rank-{rank:05d}.ranges.npy"


class _RankStage:
    """This rank's staging file: one record batch (``_rowid`` + outputs) per predict batch."""

    def __init__(self, directory: Path, rank: int) -> None:
        self.directory, self.rank = directory, rank
        self.path = _rank_file(directory, rank)
        self.partial = self.path.with_suffix(".arrow.partial")
        self.schema: pa.Schema | None = None
        self._sink: Any = None
        self._writer: Any = None
        self.rows = 0
        self.ranges = int_array("Q")  # first and last address of each staged batch: 16 bytes a batch

    def write(self, addresses: np.ndarray, columns: dict[str, tuple[pa.Array, dict[bytes, bytes] | None]]) -> None:
        if self.schema is None:
            fields = [pa.field(ROWID, pa.uint64(), nullable=False)]
            fields += [pa.field(name, values.type, metadata=meta) for name, (values, meta) in columns.items()]
            self.schema = pa.schema(fields)
            self._sink = pa.OSFile(str(self.partial), "wb")
            self._writer = pa.ipc.new_file(self._sink, self.schema)
        else:
            names = self.schema.names[1:]
            if list(columns) != names:
                raise PredictionWriteError(f"predict_step returned outputs {list(columns)}, earlier batches {names}")
            for name, (values, _) in columns.items():
                want = self.schema.field(name).type
                if values.type != want:
                    raise PredictionWriteError(
                        f"output {name!r} is {values.type} in this batch, {want} in earlier ones: a column has one type"
                    )
        arrays = [pa.array(addresses, pa.uint64()), *(array for array, _ in columns.values())]
        self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
        self.rows += len(addresses)
        self.ranges.extend((int(addresses[0]), int(addresses[-1])))

    def finish(self, batches: int) -> None:
        """Close the file, move it into place, and say how many rows it holds."""
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None
            os.replace(self.partial, self.path)
        np.save(_ranges(self.directory, self.rank), np.frombuffer(self.ranges, dtype=np.uint64).reshape(-1, 2))
        _marker(self.directory, self.rank).write_text(json.dumps({"rows": self.rows, "batches": batches}))

    def abort(self) -> None:
        """Remove this rank's files (and the directory, once no rank has files left there)."""
        try:
            if self._writer is not None:
                self._writer.close()
                self._sink.close()
        except Exception:  # noqa: BLE001 - best effort: the file is removed below
            pass
        self._writer = self._sink = None
        for path in (self.partial, self.path, _ranges(self.directory, self.rank), _marker(self.directory, self.rank)):
            path.unlink(missing_ok=True)
        _remove_staging(self.directory, only_if_empty=True)


def _remove_staging(directory: Path, *, only_if_empty: bool = False) -> None:
    """Remove a run's staging directory, then its parent if no other run has one there."""
    if only_if_empty:
        try:
            directory.rmdir()
        except OSError:
            return
    else:
        shutil.rmtree(directory, ignore_errors=True)
    with contextlib.suppress(OSError):
        directory.parent.rmdir()


class _Staged:
    """Every rank's staged rows, found by row address.

    Each record batch holds sorted addresses; batches of all ranks are disjoint ranges (every row
    was predicted once), indexed by their first and last address: one entry a batch.
    """

    def __init__(self, directory: Path, world_size: int) -> None:
        self.readers: list[Any] = []
        ranges: list[np.ndarray] = []  # per rank: (first address, last address, reader, batch) a batch
        self.num_rows = 0
        self._cached: tuple[int, pa.RecordBatch] | None = None
        self.schema: pa.Schema | None = None
        for rank in range(world_size):
            marker = _marker(directory, rank)
            if not marker.exists():
                raise PredictionWriteError(f"rank {rank} left no staging marker in {directory}: it did not finish")
            rows = json.loads(marker.read_text())["rows"]
            if rows == 0:
                continue
            # read a batch at a time (not memory-mapped: mapped pages would count in the resident
            # set, 512 MB for 1M rows of [128] float32)
            reader = pa.ipc.open_file(pa.OSFile(str(_rank_file(directory, rank))))
            if self.schema is None:
                self.schema = reader.schema
            elif not reader.schema.equals(self.schema, check_metadata=True):
                raise PredictionWriteError(
                    f"rank {rank} staged outputs {reader.schema} but rank 0 {self.schema}: every rank must return "
                    "the same outputs"
                )
            index = len(self.readers)
            self.readers.append(reader)
            bounds = np.load(_ranges(directory, rank))
            if len(bounds) != reader.num_record_batches:
                raise PredictionWriteError(f"rank {rank}'s staging file and index disagree: {directory}")
            batch = np.arange(len(bounds), dtype=np.uint64)
            ranges.append(np.column_stack([bounds, np.full_like(batch, index), batch]))
            self.num_rows += rows
        table = np.concatenate(ranges) if ranges else np.empty((0, 4), dtype=np.uint64)
        table = table[np.argsort(table[:, 0], kind="stable")]
        self.first, self.last = table[:, 0], table[:, 1]
        self.where = table[:, 2:].astype(np.int64)
        overlap = np.flatnonzero(self.first[1:] <= self.last[:-1])
        if len(overlap):
            raise PredictionWriteError(
                f"row address {int(self.first[overlap[0] + 1])} was predicted twice (staged batches overlap): "
                "the rows of a predict epoch must be read once each"
            )

    @property
    def output_fields(self) -> list[pa.Field]:
        return list(self.schema)[1:] if self.schema is not None else []

    def _batch(self, entry: int) -> pa.RecordBatch:
        """Staged batch ``entry`` (the last one read is kept: a chunk of the table often ends mid-batch)."""
        if self._cached is not None and self._cached[0] == entry:
            return self._cached[1]
        reader, i = self.where[entry]
        batch = self.readers[reader].get_batch(int(i))
        self._cached = (entry, batch)
        return batch

    def in_order(self) -> Iterator[pa.RecordBatch]:
        """The staged batches in address order."""
        for entry in range(len(self.first)):
            yield self._batch(entry)

    def gather(self, addresses: np.ndarray) -> tuple[pa.Table | None, np.ndarray]:
        """``(rows, index)``: the staged rows at ``addresses`` (any order) and, for each address,
        its row in ``rows`` or -1 when it was not predicted."""
        addresses = np.asarray(addresses, dtype=np.uint64)
        index = np.full(len(addresses), -1, dtype=np.int64)
        if not len(self.first) or not len(addresses):
            return None, index
        entry = np.searchsorted(self.first, addresses, side="right") - 1
        valid = entry >= 0
        valid &= addresses <= self.last[np.where(valid, entry, 0)]
        wanted = np.flatnonzero(valid)
        if not len(wanted):
            return None, index
        order = np.argsort(entry[wanted], kind="stable")
        wanted, entries = wanted[order], entry[wanted][order]
        cuts = np.flatnonzero(np.diff(entries)) + 1
        pieces, found = [], 0
        for lo, hi in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(wanted)].tolist()):
            batch = self._batch(int(entries[lo]))
            ids = batch.column(0).to_numpy()
            rows = wanted[lo:hi]
            pos = np.minimum(np.searchsorted(ids, addresses[rows]), len(ids) - 1)
            hit = ids[pos] == addresses[rows]
            count = int(hit.sum())
            if count:
                taken = pos[hit]
                contiguous = bool(np.all(np.diff(taken) == 1))  # a run of the batch: sliced, not copied
                pieces.append(batch.slice(int(taken[0]), count) if contiguous else batch.take(pa.array(taken)))
                index[rows[hit]] = np.arange(found, found + count)
                found += count
        if not pieces:
            return None, index
        return pa.Table.from_batches(pieces), index


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
    this write or change other columns. The native ``add`` behind it writes the stream as is.
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
    version = _native_overwrite(latest, pa.RecordBatchReader.from_batches(out_schema, chunks()))
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


def commit_table(source: TableSource, staged: _Staged, name: str, keys: Sequence[str], *, overwrite: bool) -> dict:
    """Write the staged outputs with their key columns as a new table ``name`` (one commit)."""
    pinned = source.open()
    fields = staged.output_fields
    extra = [k for k in keys if k != KEY_ROWID]
    key_fields = [pa.field(KEY_ROWID, pa.uint64(), nullable=False)] if KEY_ROWID in keys else []
    key_fields += [pinned.schema.field(k) for k in extra]
    metadata = {
        b"lance_lightning.source": json.dumps(
            {"uri": source.uri, "table": source.name, "version": source.version, "version_time": source.version_time}
        ).encode()
    }
    schema = pa.schema([*key_fields, *fields], metadata=metadata)

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


# -- the callback -------------------------------------------------------------------------------


@dataclass
class _Run:
    """One ``trainer.predict`` call's state on this rank."""

    target: _Target
    rows: Any  # the predict split's row addresses (a RowSet), position -> _rowid
    order: Any  # the sampler's epoch order (table order)
    num_rows: int
    bounds: np.ndarray  # (batches, 2): this rank's [start, stop) in the order, per batch_idx
    directory: Path
    stage: _RankStage
    written: np.ndarray  # one flag a batch: written once
    checked: bool = False


class LancePredictionWriter(BasePredictionWriter):
    """Writes ``predict_step``'s outputs into the table the datamodule read, one row beside its row.

    Use with :class:`~lance_lightning.LanceDataModule`: ``trainer.predict(model, datamodule=dm,
    return_predictions=False)``. The predict stage reads the ``predict`` split, or the whole
    filtered table, in table order; every row's output lands beside that row, exactly once,
    whatever the number of ranks. See the module docstring for how, and for what a commit costs.

    Args:
        column: the column of a tensor output; with a dict output ``{name: tensor}``, a prefix
            (columns ``<column>_<name>``) or None (columns ``<name>``).
        table: None: add the columns to the table read. A name: write a new table in the same
            database instead, with ``key`` columns and the outputs of the predicted rows.
        key: the key columns of a new ``table``: source column names, and ``"_rowid"`` for the
            row address in the version read (written as ``source_rowid``). Default:
            ``_rowid``, plus ``id`` when the table has one.
        overwrite: replace existing columns of those names (rows not predicted get nulls), or an
            existing ``table``. Without it an existing one is refused, naming it.
        drop_indexes: allow the commit to drop the table's indexes (it rewrites the table;
            rebuild them afterwards). Without it a table with indexes is refused before predicting.
        staging_dir: a directory every rank can reach, for the staging files. Default:
            ``<database>/.lance-lightning-staging`` for a local table; required for a table in
            object storage under more than one rank.
    """

    def __init__(
        self,
        column: str | None = None,
        *,
        table: str | None = None,
        key: str | Sequence[str] | None = None,
        overwrite: bool = False,
        drop_indexes: bool = False,
        staging_dir: str | None = None,
    ) -> None:
        super().__init__("batch")
        for what, value in (("column", column), ("table", table), ("staging_dir", staging_dir)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"LancePredictionWriter {what} must be a non-empty str or None, got {value!r}")
        if key is not None and table is None:
            raise ValueError("LancePredictionWriter key= names the key columns of a new table: it needs table=")
        if isinstance(key, str):
            key = [key]
        if key is not None and (not key or not all(isinstance(k, str) and k for k in key)):
            raise ValueError(f"LancePredictionWriter key must name one or more columns, got {key!r}")
        self.column, self.table = column, table
        self.key = list(key) if key is not None else None
        self.overwrite, self.drop_indexes = bool(overwrite), bool(drop_indexes)
        self.staging_dir = staging_dir
        self.result: dict[str, Any] | None = None
        self._run: _Run | None = None

    # -- start ------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # Our loader hands out whole batches (batch_size=None): Lightning cannot tell their
        # indices and says so once; the writer finds each batch's rows itself.
        warnings.filterwarnings("ignore", message="Couldn't infer the batch indices fetched from your dataloader")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.result = None
        dm = trainer.datamodule
        sampler = getattr(dm, "samplers", {}).get("predict") if dm is not None else None
        if sampler is None or not hasattr(dm, "split_for_stage"):
            raise PredictionWriteError(
                "LancePredictionWriter writes into the table a LanceDataModule reads: pass one, "
                "trainer.predict(model, datamodule=LanceDataModule(...))"
            )
        if sampler.even or sampler.shuffle_mode != "none" or sampler.start_row:
            raise PredictionWriteError("the predict sampler must read every row once in table order (even=False)")
        if (sampler.rank, sampler.num_replicas) != (trainer.global_rank, trainer.world_size):
            raise PredictionWriteError(
                f"the predict sampler is sharded for rank {sampler.rank} of {sampler.num_replicas}, the Trainer runs "
                f"rank {trainer.global_rank} of {trainer.world_size}"
            )
        split = dm._split_rows(dm.split_for_stage("predict"))  # the rows the predict loader reads
        target = self._target(split.source)
        if trainer.predict_loop.return_predictions:
            rank_zero_warn(
                "LancePredictionWriter: trainer.predict(..., return_predictions=True) also keeps every prediction in "
                "memory; pass return_predictions=False"
            )
        directory = self._staging_directory(target, trainer.world_size)
        if trainer.is_global_zero:
            if directory.exists():
                size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
                rank_zero_info(f"removing staging files of an interrupted run ({size:,} bytes): {directory}")
                shutil.rmtree(directory)
            directory.mkdir(parents=True)
        trainer.strategy.barrier("lance_prediction_writer_start")
        bounds = np.asarray(rank_batch_bounds(sampler.plan(), rank=sampler.rank), dtype=np.int64).reshape(-1, 2)
        if len(bounds) and bounds[-1, 1] > sampler.num_rows:
            raise PredictionWriteError("the predict epoch pads rows; the writer needs every row once")
        self._run = _Run(
            target=target,
            rows=split.rows,
            order=sampler.epoch_order(),
            num_rows=sampler.num_rows,
            bounds=bounds,
            directory=directory,
            stage=_RankStage(directory, trainer.global_rank),
            written=np.zeros(len(bounds), dtype=bool),
        )

    def _target(self, source: TableSource) -> _Target:
        if source.version is None:
            raise PredictionWriteError(f"table {source.name!r} was read without a pinned version")
        latest = source.pinned(None).open()
        moved = _table_moved(source, latest)
        if self.table is None:
            if moved:
                raise TableMovedError(
                    f"table {source.name!r} has moved on since the version this run reads ({moved}): the columns "
                    "would be written onto an old version and undo the changes since. Read the latest version "
                    "(LanceDataModule(version=None)) or write to a table of its own (table=...)"
                )
            _check_indexes(latest, drop_indexes=self.drop_indexes)
            return _Target(source, None)  # the column names are checked at the first batch (a dict names them)
        if self.table == source.name:
            raise PredictionWriteError(f"table={self.table!r} is the table read; use column= to add columns to it")
        db = connect(source.uri, storage_options=source.storage_options, **dict(source.connect_kwargs or {}))
        if self.table in list_table_names(db) and not self.overwrite:
            raise PredictionWriteError(
                f"table {self.table!r} already exists in {source.uri!r}: nothing was written. Pick another name, or "
                "pass overwrite=True to replace it"
            )
        schema = source.open().schema
        keys = self.key if self.key is not None else [ROWID, *(["id"] if "id" in schema.names else [])]
        keys = [KEY_ROWID if k in (ROWID, KEY_ROWID) else k for k in keys]
        unknown = [k for k in keys if k != KEY_ROWID and k not in schema.names]
        if unknown:
            raise PredictionWriteError(
                f"key column(s) {unknown} are not in table {source.name!r}; its columns: {schema.names}, or '_rowid'"
            )
        return _Target(source, self.table, list(dict.fromkeys(keys)))

    def _staging_directory(self, target: _Target, world_size: int) -> Path:
        source = target.source
        if self.staging_dir is not None:
            base = Path(self.staging_dir)
        elif is_local_uri(source.uri):
            base = Path(source.uri.removeprefix("file://")) / STAGING_DIRNAME
        elif world_size == 1:
            base = Path(tempfile.gettempdir()) / "lance-lightning-staging"
        else:
            raise PredictionWriteError(
                f"table {source.name!r} is not in a local directory ({source.uri}): give the writer a staging_dir "
                "that every rank can reach (a shared file system)"
            )
        what = f"table-{target.table}" if target.table else f"columns-{self.column or 'dict'}"
        return (base / re.sub(r"[^A-Za-z0-9_.-]", "_", f"{source.name}.{what}")).absolute()

    # -- each batch ---------------------------------------------------------------------------

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        run = self._run
        if run is None:
            raise PredictionWriteError("write_on_batch_end before on_predict_start")
        if dataloader_idx:
            raise PredictionWriteError("LancePredictionWriter writes one predict dataloader (the datamodule's)")
        if batch_idx >= len(run.bounds) or run.written[batch_idx]:
            raise PredictionWriteError(f"predict batch {batch_idx} is not a new batch of this rank's epoch")
        start, stop = (int(v) for v in run.bounds[batch_idx])
        columns = prediction_arrays(prediction, self.column)
        for name, (values, _) in columns.items():
            if len(values) != stop - start:
                raise PredictionWriteError(
                    f"output {name!r} of batch {batch_idx} has {len(values)} rows; the batch has {stop - start}: "
                    "predict_step must return one value per row"
                )
        if not run.checked:
            run.checked = True
            if run.target.table is None:
                schema = run.target.source.open().schema
                _check_new_columns(run.target.source.name, schema, list(columns), overwrite=self.overwrite)
            else:
                clash = sorted(set(columns) & set(run.target.keys))
                if clash:
                    raise PredictionWriteError(f"output column(s) {clash} are also key columns of table {self.table!r}")
        addresses = run.rows.select(take_padded(run.order, start, stop, run.num_rows))
        run.stage.write(addresses, columns)
        run.written[batch_idx] = True

    # -- end: one commit ------------------------------------------------------------------------

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = self._run
        if run is None:
            return
        self._run = None
        run.stage.finish(int(run.written.sum()))
        trainer.strategy.barrier("lance_prediction_writer_staged")
        outcome: dict[str, Any]
        failure: BaseException | None = None
        if trainer.is_global_zero:
            try:
                outcome = {"ok": self._commit(run, trainer.world_size)}
            except Exception as err:  # every rank raises it, below
                failure = err
                outcome = {"error": f"{type(err).__name__}: {err}"}
            finally:
                _remove_staging(run.directory)
        else:
            outcome = {}
        outcome = trainer.strategy.broadcast(outcome, src=0)
        if failure is not None:
            raise failure
        if "error" in outcome:
            raise PredictionWriteError(f"rank 0 could not write the predictions: {outcome['error']}")
        self.result = outcome["ok"]
        written = self.result
        rank_zero_info(
            f"LancePredictionWriter: {written['rows']:,} rows of {', '.join(written['columns'])} written to table "
            f"{written['table']!r}, version {written['version']}"
        )

    def _commit(self, run: _Run, world_size: int) -> dict[str, Any]:
        staged = _Staged(run.directory, world_size)
        if staged.schema is None:
            raise PredictionWriteError("no rows were predicted: nothing to write")
        target = run.target
        if target.table is None:
            result = commit_columns(target.source, staged, overwrite=self.overwrite, drop_indexes=self.drop_indexes)
            unpredicted = result["of"] - result["rows"]
            if unpredicted:
                rank_zero_info(f"{unpredicted:,} rows of table {target.source.name!r} were not predicted: nulls")
            return result
        return commit_table(target.source, staged, target.table, target.keys, overwrite=self.overwrite)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._run is not None:
            self._run.stage.abort()
            self._run = None

    def state_dict(self) -> dict[str, Any]:
        return {}
