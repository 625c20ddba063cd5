"""Batches of a mixture: mixture positions read from each source's own reader, and each row's
``source`` added.

A batch's rows come grouped by source (:meth:`MixtureBatchDataset.layout`): each source's run is
one gather from its stage straight into the batch (into a worker's reused slot, or shared memory,
so the hand-over copies nothing). Sources read from their tables are read one take a source and
scattered into the batch. The transform runs on the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info
from torch.utils.data._utils.collate import default_convert

from ..batches import BatchGroup, split_group
from ..dataset import BatchReader, Transform, resolve_transform
from ..slots import gather_into_slot, lend_into_slot
from ..stage.reader import shared_empty

Allocate = Callable[[Any, tuple[int, ...]], "np.ndarray | None"]

SOURCE_KEY = "source"
"""The batch key of each row's source (its index in ``mix``), an ``int64`` tensor."""


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

    def slot_layout(self) -> tuple[int, int] | None:
        """(bytes a row of the fixed-width columns, columns) of a batch in a worker's slot; None
        when a source is read from its table (its batches are not gathered into slots)."""
        layouts = [r.slot_layout() for r in self.readers]
        if any(layout is None for layout in layouts):
            return None
        return max(b for b, _ in layouts), max(c for _, c in layouts) + 1

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
        """The source (index) of each mixture position."""
        return np.searchsorted(self.bases[1:], positions, side="right")

    def layout(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each batch's positions as its rows come: grouped by source, in ``mix`` order (each
        source's rows in the epoch's order). One gather a source then fills a contiguous run of the
        batch, straight where it belongs (no second copy to put rows back in the epoch's order)."""
        return [b[np.argsort(self.sources_of(b), kind="stable")] for b in batches]

    def read(
        self, positions: np.ndarray, sizes: Sequence[int] | None = None, allocate: Allocate | None = None
    ) -> dict[str, Any]:
        """The rows at mixture ``positions`` (in that order) as one batch dict, with ``source``.

        ``sizes``: the batches ``positions`` holds (each grouped by source, :meth:`layout`), so that
        a source's run never crosses a batch; ``allocate``: where fixed-width columns go (a worker's
        slot, :mod:`..slots`), which then come back as the arrays it gave."""
        sources = self.sources_of(positions)
        total = len(positions)
        cuts = np.cumsum([0, *(sizes or [total])])
        runs = np.flatnonzero(np.diff(sources)) + 1
        edges = np.unique(np.concatenate([cuts, runs]))
        segments = [(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]
        if all(getattr(r, "staged", None) is not None for r in self.readers):
            out = self._gather_runs(positions, sources, segments, allocate)
        else:
            out = self._read_and_merge(positions, sources)
        src = _empty(torch.int64, (total,), shared=get_worker_info() is not None)
        src.numpy()[:] = self.indices[sources]
        out[SOURCE_KEY] = src
        return out

    def _gather_runs(
        self, positions: np.ndarray, sources: np.ndarray, segments: list[tuple[int, int]], allocate: Allocate | None
    ) -> dict[str, Any]:
        """Each run of one source gathered from its stage straight into its rows of the batch."""
        total = len(positions)
        shared = get_worker_info() is not None
        buffers: list[tuple[Any, np.ndarray]] = []  # (what the batch holds, its array), a fixed-width column each
        pieces: dict[str, list[Any]] = {}
        flat: dict[str, int] = {}
        for lo, hi in segments:
            source = int(sources[lo])
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
        batches = self.layout(list(index) if group else [np.asarray(index, dtype=np.int64)])
        positions = np.concatenate(batches)
        sizes = [len(b) for b in batches]
        if self.slots is not None and self.transform is None and (worker := get_worker_info()) is not None:

            def gather(allocate: Allocate) -> dict[str, Any]:
                return self.read(positions, sizes, allocate)

            handed = gather_into_slot(self.slots, worker.id, gather, sizes if group else None)
            if handed is not None:
                return handed
        rows = self.read(positions, sizes)
        if group:
            return split_group(rows, sizes, self._finish)
        out = self._finish(rows)
        if self.slots is not None and self.transform is not None and (worker := get_worker_info()) is not None:
            # the transform's tensors in a reused slot, converted as the DataLoader's collate would
            return lend_into_slot(self.slots, worker.id, default_convert(out)) or out
        return out
