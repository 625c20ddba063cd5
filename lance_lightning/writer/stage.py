"""Staging of ``LancePredictionWriter``'s outputs: predict outputs as Arrow, one IPC file per rank.

Each rank appends ``(_rowid, outputs)`` of every batch to its own Arrow IPC file; a finished rank
renames it into place and writes a marker with its row count. :class:`_Staged` reads every rank's
files back at the commit, a batch at a time, found by row address.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from array import array as int_array
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

ROWID = "_rowid"
KEY_ROWID = "source_rowid"
"""The key column of a separate predictions table: the row's ``_rowid`` in the version read, its
address or, on a table with stable row ids, its stable id (lance reserves the name ``_rowid``)."""
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
        if len(items) != len(prediction):
            raise PredictionWriteError(
                f"predict_step returned keys {list(prediction)}: two of them make the same column name"
            )
    elif column is None:
        raise PredictionWriteError(
            f"predict_step returned a {type(prediction).__name__}, not a dict: name its column, "
            "LancePredictionWriter(column='...')"
        )
    else:
        items = {column: prediction}
    return {name: _to_arrow(name, value) for name, value in items.items()}


def _to_arrow(name: str, value: Any) -> tuple[pa.Array, dict[bytes, bytes] | None]:
    """One output as an Arrow array that owns its memory.

    The copy matters: the writers encode batches on a thread after the step has returned, so a
    model that hands back a view of a buffer it reuses (or a later callback that edits the output
    in place) would otherwise change rows already handed over. Copying 0.5 MB costs ~25 us; the
    buffers are then wrapped as they are (``pa.array`` of a NumPy float array costs ~0.6 ms).
    """
    metadata = None
    if isinstance(value, torch.Tensor):
        tensor, owned = value.detach(), False
        if tensor.dtype == torch.bfloat16:
            tensor, metadata, owned = tensor.float(), BF16_METADATA, True
        if tensor.is_complex():
            raise PredictionWriteError(f"output {name!r} is complex ({tensor.dtype}): Arrow has no complex type")
        # a device tensor's .cpu() and the bfloat16 conversion are already new copies; any other
        # CPU tensor (maybe a view of a reused buffer) is copied here
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        elif not owned:
            tensor = tensor.clone()
        array = tensor.contiguous().numpy()
    elif isinstance(value, np.ndarray):
        array = np.array(value, copy=True, order="C")
    else:
        raise PredictionWriteError(
            f"output {name!r} is a {type(value).__name__}; the writer takes tensors (or NumPy arrays), one row a row"
        )
    if array.ndim == 0:
        raise PredictionWriteError(f"output {name!r} is a scalar; it needs one value per row of the batch ([B, ...])")
    if array.ndim == 1:
        return _flat(array), metadata
    if array.ndim == 2:
        return pa.FixedSizeListArray.from_arrays(_flat(array.reshape(-1)), array.shape[1]), metadata
    return pa.FixedShapeTensorArray.from_numpy_ndarray(array), metadata


def _flat(array: np.ndarray) -> pa.Array:
    """A 1-D NumPy array as Arrow, sharing its buffer where the layouts agree (numbers, not bools)."""
    if array.dtype.kind in "iuf" and array.dtype.isnative:
        return pa.Array.from_buffers(pa.from_numpy_dtype(array.dtype), len(array), [None, pa.py_buffer(array)])
    return pa.array(array)


# -- staging: one Arrow IPC file per rank ------------------------------------------------------


def _marker(directory: Path, rank: int) -> Path:
    return directory / f"rank-{rank:05d}.json"


def _rank_file(directory: Path, rank: int) -> Path:
    return directory / f"rank-{rank:05d}.arrow"


def _ranges(directory: Path, rank: int) -> Path:
    return directory / f"rank-{rank:05d}.ranges.npy"


def check_same_outputs(schema: pa.Schema, names: list[str], columns: dict[str, tuple[pa.Array, Any]]) -> None:
    """A batch's outputs must be the earlier batches' ones (``names`` of ``schema``), type for type."""
    if list(columns) != names:
        raise PredictionWriteError(f"predict_step returned outputs {list(columns)}, earlier batches {names}")
    for name, (values, _) in columns.items():
        want = schema.field(name).type
        if values.type != want:
            raise PredictionWriteError(
                f"output {name!r} is {values.type} in this batch, {want} in earlier ones: a column has one type"
            )


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
            check_same_outputs(self.schema, self.schema.names[1:], columns)
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


def rank_record(directory: Path, rank: int, path: Path, what: str) -> str:
    """The text of a file rank ``rank`` left in the staging directory, or a clear error: it did not
    finish, or the directory is not one that every rank reaches."""
    if not path.exists():
        raise PredictionWriteError(
            f"rank {rank} left no {what} in {directory}: it did not finish, or that directory is not shared between "
            "the ranks (pass the writer a staging_dir on a file system every node reaches)"
        )
    return path.read_text()


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
            rows = json.loads(rank_record(directory, rank, _marker(directory, rank), "staging marker"))["rows"]
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

    def in_range(self, low: int, high: int) -> Iterator[pa.RecordBatch]:
        """The staged rows with addresses in ``[low, high)``, in address order (a batch that
        straddles a bound is sliced)."""
        first = int(np.searchsorted(self.last, np.uint64(low), side="left"))
        stop = int(np.searchsorted(self.first, np.uint64(high), side="left"))
        for entry in range(first, stop):
            batch = self._batch(entry)
            if int(self.first[entry]) < low or int(self.last[entry]) >= high:
                addresses = batch.column(0).to_numpy()
                lo, hi = np.searchsorted(addresses, np.array([low, high], dtype=np.uint64))
                batch = batch.slice(int(lo), int(hi - lo))
            yield batch

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
