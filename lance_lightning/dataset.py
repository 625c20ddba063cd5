"""Table offsets → few reads → a dict of tensors, inside whichever process reads.

:class:`LanceBatchDataset` is a map-style dataset whose *index is a whole batch*: the
sampler hands it the table offsets of one batch and it reads them in one call (see
:mod:`.reads`). Use it with ``DataLoader(dataset, sampler=LanceBatchSampler(...),
batch_size=None)``. An index may also be a :class:`BatchGroup` of consecutive batches (the
block and sequential modes): their rows are read together, in range scans, and the result is
a :class:`BatchGroup` of batches that :class:`~.loader.LanceDataLoader` hands out one by one.

It pickles as a few strings (table URI, name, version, columns, transform), so a worker
process opens its own handle to the table: no permutation table is copied into workers and
nothing of lancedb's runtime crosses a ``fork``.
"""

from __future__ import annotations

import importlib
import multiprocessing.context
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset, get_worker_info
from torch.utils.data._utils.collate import default_convert

from .batches import BatchGroup, split_group
from .convert import NullPolicy, batch_to_tensors
from .reads import TableChangedError, offsets_of, read_offsets, scan_row_ids
from .rowset import RowSet
from .slots import gather_into_slot, lend_into_slot
from .source import TableSource, is_memory_uri

if TYPE_CHECKING:
    from .timing import LoaderTiming

__all__ = [
    "BatchGroup",
    "LanceBatchDataset",
    "TableChangedError",
    "gather",
    "offset_map",
    "resolve_transform",
    "unique_sorted",
]

Transform = Callable[[dict[str, Any]], Any]


def resolve_transform(transform: Transform | str | None) -> Transform | None:
    """A callable, or a dotted path ``"package.module.function"`` to one (what Hydra passes)."""
    if transform is None or callable(transform):
        return transform
    if not isinstance(transform, str) or "." not in transform:
        raise ValueError(f"`transform` must be a callable or a dotted path 'module.function', got {transform!r}")
    module_name, _, attr = transform.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import transform {transform!r}: {err}") from err
    if not callable(fn):
        raise ValueError(f"transform {transform!r} is not callable")
    return fn


def unique_sorted(values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(unique, inverse)`` for a take that needs sorted, distinct keys; ``inverse`` is None when
    ``values`` already are sorted and distinct (table-order batches), so no reorder is needed."""
    if len(values) > 1 and not np.all(values[1:] > values[:-1]):
        return np.unique(values, return_inverse=True)
    return values, None


def _is_missing_file(err: BaseException) -> bool:
    text = str(err).lower()
    return "not found" in text or "no such file" in text or "does not exist" in text


def files_removed_message(source: TableSource, err: BaseException) -> str:
    """Why a read of the pinned version failed for a missing file: what happened, what to do."""
    try:
        versions = [v["version"] for v in source.pinned(None).open().list_versions()]
        now = f"versions there now: {versions}"
    except Exception as reopen:  # dropped: the table itself is gone
        now = f"the table cannot be opened now ({str(reopen)[:200]})"
    return (
        f"table {source.name!r} at {source.uri!r}: a file of version {source.version}, which this run pinned, "
        f"is gone ({now}). The table was compacted and its old versions cleaned up "
        "(optimize(cleanup_older_than=...) / cleanup_old_versions), or it was dropped, while the run read it. "
        "Keep old versions longer than a run lasts (cleanup_older_than > the run's length), or pass "
        "table_updates='next_epoch' so each epoch reads the latest version. lance said: "
        f"{str(err)[:300]}"
    )


def offset_map(
    row_ids: np.ndarray, scan_ids: np.ndarray, *, table_name: str, version: int | None
) -> RowSet | np.ndarray | int:
    """The table offsets of the split ``row_ids`` as a reader holds them: an ``int`` when they are
    one run of the table (offset = first + position), else a compact :class:`~.rowset.RowSet`
    (about 2 bits a table row), or an array if the table's scan order is not address order.

    ``scan_ids``: the table's row addresses in scan order (:func:`.reads.scan_row_ids`, scanned
    once per table and setup however many splits are mapped).
    """
    offsets = offsets_of(row_ids, scan_ids, table_name=table_name, version=version)
    if not np.all(offsets[1:] > offsets[:-1]):
        return offsets
    if len(offsets) and offsets[-1] - offsets[0] == len(offsets) - 1:
        return int(offsets[0])  # a contiguous run: nothing to look up
    return RowSet.from_sorted(offsets)


ROW_BYTES_SAMPLE = 32
"""Rows a table reader reads at setup to learn how wide its rows are (:meth:`LanceBatchDataset.row_bytes`):
few, as a row may be a video."""


def gather_shared(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor[index]``, written straight into shared memory in a DataLoader worker (handing it
    to the main process then copies nothing: in-memory mode with 2 workers went from 0.79M to
    1.20M rows/s); an ordinary gather in the main process."""
    if get_worker_info() is None:
        return tensor.index_select(0, index)
    out = torch.empty((len(index), *tensor.shape[1:]), dtype=tensor.dtype).share_memory_()
    return torch.index_select(tensor, 0, index, out=out)


def gather(value: Any, index: np.ndarray) -> Any:
    """Rows ``index`` of one converted column (tensor, list, or dict of those for structs)."""
    if isinstance(value, torch.Tensor):
        return gather_shared(value, torch.from_numpy(index))
    if isinstance(value, dict):
        return {name: gather(child, index) for name, child in value.items()}
    return [value[i] for i in index.tolist()]


class BatchReader(Dataset):
    """What every reader shares: ``reader[positions]`` is one batch (positions in the split, any
    order), ``reader[BatchGroup]`` several read together; the transform runs on each batch, and
    :class:`~lance_lightning.monitor.LoaderMonitor` may time both (``timing``)."""

    slots: Any = None
    """Set by the loader only while its workers start: the :class:`~.slots.WorkerSlots` a worker
    gathers batches into, or lends a batch through (reused shared memory instead of fresh)."""
    timing: LoaderTiming | None = None
    """Set by :class:`~lance_lightning.monitor.LoaderMonitor`: sums the time of each item and of
    the transform inside it (see :mod:`.timing`); None (default): nothing is timed."""
    transform: Transform | None = None
    num_rows: int = 0

    def __len__(self) -> int:
        return self.num_rows

    def __getstate__(self) -> dict[str, Any]:
        # the slots go to the workers being started, never into another pickle (their locks cannot)
        spawning = multiprocessing.context.get_spawning_popen() is not None
        return {**self.__dict__, "slots": self.slots if spawning else None}

    def _finish(self, batch: dict[str, Any]) -> Any:
        if self.transform is None:
            return batch
        return self.transform(batch) if self.timing is None else self.timing.transform(self.transform, batch)

    def __getitem__(self, index: Sequence[int] | np.ndarray) -> Any:
        return self._getitem(index) if self.timing is None else self.timing.load(self._getitem, index)

    def row_bytes(self) -> int:
        """About how many bytes a row of this split takes once read (0: unknown)."""
        return 0

    @property
    def reads_stage(self) -> bool:
        """True when every batch is a gather from node-local stages: its workers never open a
        table (so they may fork, :func:`.loader.worker_start_method`)."""
        return False

    def table_sources(self) -> list[TableSource]:
        """The tables this reader opens to read a batch (none for a staged reader)."""
        return []

    def damage(self) -> BaseException | None:
        """A stage this reader maps that changed under it, as the error to raise (None: none)."""
        return None

    def close(self) -> None:
        """Let go of what this process holds to read (a stage's mappings and lease)."""

    def slot_layout(self) -> tuple[int, int] | None:
        """(bytes a row of the fixed-width columns, columns) where workers gather batches into
        reused shared-memory slots (:mod:`.slots`); None where they do not."""
        return None

    def read_rows(self, positions: np.ndarray) -> dict[str, Any]:
        """The rows at ``positions`` as tensors in this process's own memory (never shared memory,
        no transform): what a reader of several readers (a mixture) assembles its batches from."""
        raise NotImplementedError

    def _getitem(self, index: Any) -> Any:
        raise NotImplementedError


class LanceBatchDataset(BatchReader):
    """Reads batches of rows of one split from one pinned table version.

    ``dataset[positions]`` (positions in the split) returns
    ``transform(batch_to_tensors(rows))`` with rows in the order of ``positions`` (repeats
    allowed); ``dataset[BatchGroup([...])]`` a :class:`BatchGroup` of such batches. ``rows``
    (given at construction: :func:`offset_map`) maps positions to table offsets; when it is
    None, positions *are* table offsets. What a reader reads never changes after construction.
    ``len(dataset)`` is the split's row count.
    """

    def __init__(
        self,
        source: TableSource,
        columns: Sequence[str],
        *,
        num_rows: int,
        rows: RowSet | np.ndarray | int | None = None,
        transform: Transform | str | None = None,
        nulls: NullPolicy = "raise",
        table: Any = None,
    ) -> None:
        self.source = source
        self.columns = list(columns)
        self.num_rows = num_rows
        self.rows = rows
        self.transform = resolve_transform(transform)
        self.nulls = nulls
        self._table = table
        self._pid = os.getpid() if table is not None else None

    @classmethod
    def of_rows(
        cls,
        source: TableSource,
        columns: Sequence[str],
        row_ids: np.ndarray,
        *,
        transform: Transform | str | None = None,
        nulls: NullPolicy = "raise",
    ) -> LanceBatchDataset:
        """A reader of the rows with addresses ``row_ids`` (sorted, e.g. a split's ``row_ids``):
        position ``i`` is the ``i``-th of them. Opens the table once to map addresses to offsets."""
        table = source.open()
        offsets = offset_map(row_ids, scan_row_ids(table), table_name=source.name, version=source.version)
        return cls(source, columns, num_rows=len(row_ids), rows=offsets, transform=transform, nulls=nulls, table=table)

    def __getstate__(self) -> dict[str, Any]:
        if is_memory_uri(self.source.uri):
            raise RuntimeError(
                f"table {self.source.name!r} lives in an in-memory database ({self.source.uri}), which "
                "DataLoader worker processes cannot reopen. Use num_workers=0, or write the table to a "
                "local directory or object store and pass that `uri`."
            )
        state = dict(self.__dict__)
        state["_table"] = None
        state["_pid"] = None
        return state

    def table_sources(self) -> list[TableSource]:
        return [self.source]

    def table(self) -> Any:
        """This process's handle to the pinned table, opened on first use after a fork or pickle."""
        if self._table is None or self._pid != os.getpid():
            self._table = self.source.open()
            self._pid = os.getpid()
        return self._table

    def offsets(self, positions: np.ndarray) -> np.ndarray:
        """Table offsets of ``positions`` in the split."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.rows is None:
            return positions
        if isinstance(self.rows, int):
            return positions + self.rows
        if isinstance(self.rows, RowSet):
            return self.rows.select(positions).astype(np.int64)
        return self.rows[positions]

    def row_bytes(self, *, sample: int = ROW_BYTES_SAMPLE) -> int:
        """Bytes a row of the selected columns takes, measured on the split's first ``sample`` rows
        (one small read): the widths of variable columns (images, text) are only known from data.
        An estimate: it bounds how many rows are read at once, never which."""
        count = min(sample, self.num_rows)
        if not count:
            return 0
        taken = self.read_arrow(self.offsets(np.arange(count)))
        return -(-taken.nbytes // count)

    def read_arrow(self, offsets: Sequence[int] | np.ndarray) -> pa.Table:
        """The rows at ``offsets``, in the requested order, in as few reads as possible."""
        unique, inverse = unique_sorted(np.asarray(offsets, dtype=np.int64))
        try:
            result = read_offsets(self.table(), unique, self.columns)
        except TableChangedError:
            raise
        except Exception as err:
            if not _is_missing_file(err):
                raise
            raise TableChangedError(files_removed_message(self.source, err)) from err
        if inverse is not None:
            result = result.take(pa.array(inverse))
        return result

    def read_rows(self, positions: np.ndarray) -> dict[str, Any]:
        return batch_to_tensors(self.read_arrow(self.offsets(positions)), nulls=self.nulls)

    def _getitem(self, index: Sequence[int] | np.ndarray) -> Any:
        if isinstance(index, BatchGroup):
            # One read for the whole group (range scans), one conversion, then a gather per batch.
            # The batches are views into one gathered tensor per column: a worker then moves one
            # shared-memory block per column to the main process, not one per batch.
            if not len(index):
                return BatchGroup()
            union, where = unique_sorted(np.concatenate(index))
            rows = batch_to_tensors(self.read_arrow(self.offsets(union)), nulls=self.nulls)
            # already in table order (shuffle="none"): the rows are the batches, nothing to gather
            gathered = rows if where is None else {name: gather(v, where) for name, v in rows.items()}
            return split_group(gathered, [len(b) for b in index], self._finish)
        return self._finish(batch_to_tensors(self.read_arrow(self.offsets(index)), nulls=self.nulls))


class StagedBatchDataset(BatchReader):
    """Reads batches of one split from its node-local stage (:mod:`.stage`): every batch is a
    gather by position from memory-mapped files, written straight into shared memory inside a
    DataLoader worker. Same contract as :class:`LanceBatchDataset` (positions in the split, in
    any order; a :class:`BatchGroup` gathered at once and handed over as one block per column).

    It pickles as the stage's path and a few settings: each worker maps the same files (one copy
    in the page cache for every rank and worker of a node) and holds a lease on the stage, so
    nothing evicts it while it is read.
    """

    def __init__(self, rows: Any, *, transform: Transform | str | None = None, nulls: NullPolicy = "raise") -> None:
        self.staged = rows  # a lance_lightning.stage.StagedRows: pickles as its path (a memory:// table is fine)
        self.num_rows = len(rows)
        self.transform = resolve_transform(transform)
        self.nulls = nulls
        self.slots: Any = None
        """Set by the loader for workers: the :class:`~.slots.WorkerSlots` their batches are gathered
        into (no transform), or a transform's output is copied into (reused shared memory instead of
        fresh)."""

    def row_bytes(self) -> int:
        return -(-self.staged.nbytes // max(1, self.num_rows))

    @property
    def reads_stage(self) -> bool:
        return True

    def damage(self) -> BaseException | None:
        return self.staged.damage()

    def close(self) -> None:
        """Drop this process's mappings of the stage and its leases (reopened on next use)."""
        from .stage import release_stage

        release_stage(self.staged.path)
        self.staged.close()

    def read_rows(self, positions: np.ndarray) -> dict[str, Any]:
        return self.staged.take_into_tensors(positions, nulls=self.nulls, out_shared=False)

    def slot_layout(self) -> tuple[int, int] | None:
        return self.staged.flat_row_bytes(), len(self.staged.schema)

    def _getitem(self, index: Sequence[int] | np.ndarray) -> Any:
        group = isinstance(index, BatchGroup)
        if group and not len(index):
            return BatchGroup()
        positions = np.concatenate(index) if group else np.asarray(index, dtype=np.int64)
        sizes = [len(b) for b in index] if group else None
        if self.slots is not None and self.transform is None and (worker := get_worker_info()) is not None:

            def gather(allocate: Any) -> dict[str, Any]:
                return self.staged.take_into_tensors(positions, nulls=self.nulls, allocate=allocate)

            handed = gather_into_slot(self.slots, worker.id, gather, sizes)
            if handed is not None:
                return handed
        # one batch with a transform and output slots: its output is what goes to the training process
        # (lent from a slot), so the rows stay in this process's memory, not in fresh shared memory (a
        # /dev/shm file a column a batch); None: shared inside a worker
        lent = self.transform is not None and sizes is None and self.slots is not None
        rows = self.staged.take_into_tensors(positions, nulls=self.nulls, out_shared=False if lent else None)
        if sizes is not None:
            return split_group(rows, sizes, self._finish)
        out = self._finish(rows)
        if self.slots is not None and self.transform is not None and (worker := get_worker_info()) is not None:
            # the transform's tensors in a reused slot, converted as the DataLoader's collate would
            return lend_into_slot(self.slots, worker.id, default_convert(out)) or out
        return out
