"""Batches of a mixture: mixture positions read from each source's own reader, and each row's
``source`` added.

A batch's rows come grouped by source (:meth:`MixtureBatchDataset.layout`): each source's run is
one gather from its stage straight into the batch (into a worker's reused slot, or shared memory,
so the hand-over copies nothing); the ``source`` column goes in the slot too. Sources read from
their tables are read one take a source and scattered into the batch. The transform runs on the
whole batch.

Where every source's columns are flat (fixed-width, no nulls recorded), a batch's columns are made
once and every run is gathered into them with :func:`~..stage.reader.take_flat_runs`: the
general path's per-run dicts, tensors and bounds checks cost about as much as the gathers at
batch 1024 (the mixture read 0.45x one split's rows/s at 0 workers; issue 31). Each source's stage
is checked once a read (a batch, or a worker's hand-over group of 16), not once a run: a group's 48
runs made 192 ``fstat`` calls where one split's read makes 4.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info
from torch.utils.data._utils.collate import default_convert

from ..batches import BatchGroup, split_group
from ..convert import numpy_dtype_to_torch
from ..dataset import BatchReader, Transform, resolve_transform
from ..slots import gather_into_slot, lend_into_slot
from ..stage.reader import shared_empty, take_flat_runs

Allocate = Callable[[Any, tuple[int, ...]], "np.ndarray | None"]

SOURCE_KEY = "source"
"""The batch key of each row's source (its index in ``mix``), an ``int64`` tensor."""
_SOURCE_BYTES = 8
"""Bytes a row of :data:`SOURCE_KEY` takes in a worker's slot."""
_COMPARED = 8
"""Up to this many sources, a position's source is found by comparing it with each source's first
position (NumPy vector compares into a ``uint8``, ~1 us a source for a batch of 1024 here, against
~9 us for ``searchsorted``), which also lets the grouping sort by radix."""


def _empty(dtype: torch.dtype, shape: tuple[int, ...], *, shared: bool) -> torch.Tensor:
    """An uninitialized tensor; in shared memory inside a DataLoader worker (handing it over then
    copies nothing)."""
    return shared_empty(dtype, shape) if shared else torch.empty(shape, dtype=dtype)


def _concat(values: list[Any], *, where: str) -> Any:
    """One column of a batch from its runs' values, in order."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(values) if len(values) > 1 else first
    if isinstance(first, dict):
        return {name: _concat([v[name] for v in values], where=f"{where}.{name}") for name in first}
    return [item for value in values for item in value]


def _merge(parts: list[tuple[np.ndarray, Any]], total: int, *, where: str) -> Any:
    """One column of a batch from each source's ``(rows of the batch, value)``."""
    first = parts[0][1]
    if isinstance(first, torch.Tensor):
        shapes = {tuple(v.shape[1:]) for _, v in parts}
        dtypes = {v.dtype for _, v in parts}
        if len(shapes) > 1 or len(dtypes) > 1:
            raise RuntimeError(
                f"mixture column {where!r}: the sources give rows of different shapes {sorted(shapes)} or types "
                f"{sorted(map(str, dtypes))}; a batch stacks rows of every source (make the column the same type in "
                "every source)"
            )
        out = _empty(first.dtype, (total, *first.shape[1:]), shared=get_worker_info() is not None)
        try:  # NumPy's scatter: one thread, no torch intra-op pool fighting the loader for cores
            target = out.numpy()
            for rows, value in parts:
                target[rows] = value.numpy()
        except TypeError:  # a dtype NumPy has not (bfloat16)
            for rows, value in parts:
                out.index_copy_(0, torch.from_numpy(rows), value)
        return out
    if isinstance(first, dict):
        return {name: _merge([(rows, v[name]) for rows, v in parts], total, where=f"{where}.{name}") for name in first}
    merged: list[Any] = [None] * total
    for rows, value in parts:
        for i, item in zip(rows.tolist(), value):
            merged[i] = item
    return merged


class MixtureBatchDataset(BatchReader):
    """Reads batches of mixture positions: position ``p`` is row ``p - bases[s]`` of source ``s``
    (``bases``: each source's first position). ``readers``: each source's reader, with no
    transform (the transform runs here, on the merged batch). ``indices``: the ``source`` each
    reader's rows carry (default: its position in ``readers``); one source's evaluation loader
    reads one reader whose rows carry that source's index in ``mix``."""

    def __init__(
        self,
        readers: Sequence[BatchReader],
        names: Sequence[str],
        *,
        transform: Transform | str | None = None,
        indices: Sequence[int] | None = None,
    ) -> None:
        assert len(readers) == len(names) >= 1
        assert all(r.transform is None for r in readers), "the sources' readers read raw rows"
        assert indices is None or len(indices) == len(readers)
        self.readers = list(readers)
        self.names = list(names)
        self.indices = np.arange(len(readers), dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
        self.bases = np.concatenate([[0], np.cumsum([len(r) for r in readers])]).astype(np.int64)
        self.num_rows = int(self.bases[-1])
        self.transform = resolve_transform(transform)
        self.slots: Any = None
        """Set by the loader for workers with no transform (:class:`~..slots.WorkerSlots`)."""
        self._columns: Any = None
        """:meth:`_flat_columns` once known (False: not flat); None until then."""

    def slot_layout(self) -> tuple[int, int] | None:
        """(bytes a row of the fixed-width columns, columns) of a batch in a worker's slot; None
        when a source is read from its table (its batches are not gathered into slots)."""
        layouts = [r.slot_layout() for r in self.readers]
        if any(layout is None for layout in layouts):
            return None
        return max(b for b, _ in layouts) + _SOURCE_BYTES, max(c for _, c in layouts) + 1

    @property
    def reads_stage(self) -> bool:
        return all(r.reads_stage for r in self.readers)

    def table_sources(self) -> list[Any]:
        return [s for r in self.readers for s in r.table_sources()]

    def damage(self) -> BaseException | None:
        for reader in self.readers:
            found = reader.damage()
            if found is not None:
                return found
        return None

    def close(self) -> None:
        for reader in self.readers:
            reader.close()

    def row_bytes(self) -> int:
        return max(r.row_bytes() for r in self.readers)

    def sources_of(self, positions: np.ndarray) -> np.ndarray:
        """The source (index) of each mixture position: ``uint8`` where there are few sources
        (:data:`_COMPARED`), each position compared with each source's first one."""
        if len(self.readers) > _COMPARED:
            return np.searchsorted(self.bases[1:], positions, side="right")
        bases = self.bases[1:-1]
        if not len(bases):
            return np.zeros(len(positions), dtype=np.uint8)
        sources = (positions >= bases[0]).view(np.uint8)
        for base in bases[1:]:
            sources = sources + (positions >= base).view(np.uint8)
        return sources

    def layout(self, batches: Sequence[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """The batches' positions as their rows come, and the runs ``(lo, hi, source)`` of one
        source each that they make, in order. Each batch's rows come grouped by source, in ``mix``
        order (each source's rows in the epoch's order): one gather a source then fills a
        contiguous run of the batch, straight where it belongs (no second copy to put rows back in
        the epoch's order).

        The batches of a group are laid out at once: each row keyed by (its batch, its source), one
        stable sort (radix, on keys of 16 bits) for all of them, the same rows in the same order
        as one sort a batch; a group of 16 batches cost 16 rounds of NumPy calls before."""
        if len(batches) == 1:
            return self._layout_one(np.asarray(batches[0], dtype=np.int64))
        if not len(batches):
            return np.empty(0, dtype=np.int64), []
        sizes = [len(batch) for batch in batches]
        positions = np.concatenate([np.asarray(batch, dtype=np.int64) for batch in batches])
        width = len(self.readers)
        kind = np.uint16 if len(batches) * width <= np.iinfo(np.uint16).max else np.int64
        keys = np.repeat(np.arange(0, len(batches) * width, width, dtype=kind), sizes) + self.sources_of(positions)
        counts = np.bincount(keys, minlength=len(batches) * width)
        if len(positions) and (keys[1:] < keys[:-1]).any():  # rows of several sources in a batch
            positions = positions[np.argsort(keys, kind="stable")]
        present = np.flatnonzero(counts)
        ends = np.cumsum(counts[present])
        runs = list(zip((ends - counts[present]).tolist(), ends.tolist(), (present % width).tolist()))
        return positions, runs

    def _layout_one(self, batch: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """:meth:`layout` of one batch (fewer NumPy calls than a group's)."""
        sources = self.sources_of(batch)
        counts = np.bincount(sources, minlength=len(self.readers)).tolist()
        if len(batch) not in counts:  # rows of several sources (radix sort where sources are uint8)
            batch = batch[np.argsort(sources, kind="stable")]
        runs: list[tuple[int, int, int]] = []
        lo = 0
        for source, count in enumerate(counts):
            if count:
                runs.append((lo, lo + count, source))
                lo += count
        return batch, runs

    def read(
        self, positions: np.ndarray, sizes: Sequence[int] | None = None, allocate: Allocate | None = None
    ) -> dict[str, Any]:
        """The rows at mixture ``positions`` (in that order) as one batch dict, with ``source``.

        ``sizes``: the batches ``positions`` holds (each grouped by source, :meth:`layout`), so that
        a source's run never crosses a batch; ``allocate``: where fixed-width columns go (a worker's
        slot, :mod:`..slots`), which then come back as the arrays it gave."""
        positions = np.asarray(positions, dtype=np.int64)
        sources = self.sources_of(positions)
        cuts = np.cumsum([0, *(sizes or [len(positions)])])
        changes = np.flatnonzero(sources[1:] != sources[:-1]) + 1
        edges = np.unique(np.concatenate([cuts, changes])).tolist()
        runs = [(lo, hi, int(sources[lo])) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]
        return self._read(positions, runs, allocate)

    def _read(
        self, positions: np.ndarray, runs: list[tuple[int, int, int]], allocate: Allocate | None
    ) -> dict[str, Any]:
        """:meth:`read` of positions grouped into ``runs`` of one source each (:meth:`layout`)."""
        total = len(positions)
        columns = self._flat_columns() if runs else None
        if columns is not None:
            out = self._gather_flat(positions, runs, columns, allocate)
            sources = None
        else:
            sources = np.empty(total, dtype=np.int64)
            for lo, hi, source in runs:
                sources[lo:hi] = source
            if all(getattr(r, "staged", None) is not None for r in self.readers):
                out = self._gather_runs(positions, sources, runs, allocate)
            else:
                out = self._read_and_merge(positions, sources)
        placed = allocate(np.dtype(np.int64), (total,)) if allocate is not None else None
        if placed is not None:
            src = placed
        elif get_worker_info() is not None:
            src = _empty(torch.int64, (total,), shared=True)
            placed = src.numpy()
        else:
            placed = np.empty(total, dtype=np.int64)
            src = torch.from_numpy(placed)
        if sources is None:  # the `source` a batch carries: the source's index in `mix` (self.indices)
            for lo, hi, source in runs:
                placed[lo:hi] = self.indices[source]
        else:
            placed[:] = self.indices[sources]
        out[SOURCE_KEY] = src
        return out

    def _flat_columns(self) -> list[tuple[str, np.dtype, tuple[int, ...]]] | None:
        """The columns of a batch where every source is a stage whose columns are all flat, the
        same in each (:meth:`~..stage.reader.StagedRows.flat_columns`); None otherwise."""
        if self._columns is None:
            found: Any = False
            if all(getattr(r, "staged", None) is not None for r in self.readers):
                layouts = [r.staged.flat_columns(r.nulls) for r in self.readers]
                if layouts[0] is not None and all(layout == layouts[0] for layout in layouts):
                    found = layouts[0]
            self._columns = found
        return self._columns or None

    def _gather_flat(
        self,
        positions: np.ndarray,
        runs: list[tuple[int, int, int]],
        columns: list[tuple[str, np.dtype, tuple[int, ...]]],
        allocate: Allocate | None,
    ) -> dict[str, Any]:
        """:meth:`_gather_runs` where every column is flat (:meth:`_flat_columns`): a column's
        array made once, then each run gathered into its rows, with no per-run dicts or tensors."""
        total = len(positions)
        shared = get_worker_info() is not None
        out: dict[str, Any] = {}
        arrays: list[np.ndarray] = []
        for name, dtype, shape in columns:
            whole = (total, *shape)
            placed = allocate(dtype, whole) if allocate is not None else None
            if placed is None:
                tensor = _empty(numpy_dtype_to_torch(dtype), whole, shared=shared)
                out[name], placed = tensor, tensor.numpy()
            else:
                out[name] = placed
            arrays.append(placed)
        if positions.min() < 0 or positions.max() >= self.num_rows:
            raise IndexError(f"mixture positions must be in [0, {self.num_rows}) (the sources' rows together)")
        bases = self.bases.tolist()
        # a position in [0, num_rows) is one of its source's rows (sources_of); each source's stage is
        # checked once this read (a batch, or a worker's hand-over group), not once a run
        take_flat_runs(
            [reader.staged for reader in self.readers],
            [(source, positions[lo:hi] - bases[source], lo, hi) for lo, hi, source in runs],
            arrays,
        )
        return out

    def _gather_runs(
        self, positions: np.ndarray, sources: np.ndarray, runs: list[tuple[int, int, int]], allocate: Allocate | None
    ) -> dict[str, Any]:
        """Each run of one source gathered from its stage straight into its rows of the batch."""
        total = len(positions)
        shared = get_worker_info() is not None
        buffers: list[tuple[Any, np.ndarray]] = []  # (what the batch holds, its array), a fixed-width column each
        pieces: dict[str, list[Any]] = {}
        flat: dict[str, int] = {}
        for lo, hi, source in runs:
            reader = self.readers[source]
            given: list[np.ndarray] = []

            def into(dtype: Any, shape: tuple[int, ...], lo: int = lo, hi: int = hi, given: list = given) -> np.ndarray:
                i = len(given)
                if i == len(buffers):
                    whole = (total, *shape[1:])
                    placed = allocate(dtype, whole) if allocate is not None else None
                    if placed is not None:
                        buffers.append((placed, placed))
                    else:
                        tensor = _empty(torch.from_numpy(np.empty(0, dtype=dtype)).dtype, whole, shared=shared)
                        buffers.append((tensor, tensor.numpy()))
                view = buffers[i][1][lo:hi]
                given.append(view)
                return view

            rows = reader.staged.take_into_tensors(
                positions[lo:hi] - self.bases[source], nulls=reader.nulls, allocate=into
            )
            ids = [id(v) for v in given]
            for name, value in rows.items():
                if id(value) in ids:
                    flat[name] = ids.index(id(value))
                else:
                    pieces.setdefault(name, []).append(value)
        out: dict[str, Any] = {}
        for name in [*flat, *pieces]:
            if name in flat:
                out[name] = buffers[flat[name]][0]
            else:
                out[name] = _concat(pieces[name], where=name)
        return out

    def _read_and_merge(self, positions: np.ndarray, sources: np.ndarray) -> dict[str, Any]:
        """Each source's rows read at once (a table reader's take), then put in the batch's order."""
        parts: dict[str, list[tuple[np.ndarray, Any]]] = {}
        keys: list[tuple[str, ...]] = []
        for source in range(len(self.readers)):
            rows = np.flatnonzero(sources == source)
            if not len(rows):
                continue
            batch = self.readers[source].read_rows(positions[rows] - self.bases[source])
            keys.append(tuple(batch))
            for name, value in batch.items():
                parts.setdefault(name, []).append((rows, value))
        if len(set(keys)) > 1:
            raise RuntimeError(
                f"mixture sources give batches with different keys {sorted(set(keys))}: with nulls='mask', a column "
                "with nulls in one source and none in another does this; select the same nullable columns in each"
            )
        return {name: _merge(value, len(positions), where=name) for name, value in parts.items()}

    def _getitem(self, index: Any) -> Any:
        group = isinstance(index, BatchGroup)
        if group and not len(index):
            return BatchGroup()
        positions, runs = self.layout(index if group else [index])
        sizes = [len(b) for b in index] if group else [len(positions)]
        if self.slots is not None and self.transform is None and (worker := get_worker_info()) is not None:

            def gather(allocate: Allocate) -> dict[str, Any]:
                return self._read(positions, runs, allocate)

            handed = gather_into_slot(self.slots, worker.id, gather, sizes if group else None)
            if handed is not None:
                return handed
        rows = self._read(positions, runs, None)
        if group:
            return split_group(rows, sizes, self._finish)
        out = self._finish(rows)
        if self.slots is not None and self.transform is not None and (worker := get_worker_info()) is not None:
            # the transform's tensors in a reused slot, converted as the DataLoader's collate would
            return lend_into_slot(self.slots, worker.id, default_convert(out)) or out
        return out
