"""Batches of a mixture: mixture positions read from each source's own reader, rows put back in
the batch's order, and each row's ``source`` added.

A batch's rows of one source are one read of that source's reader (a gather from its stage, or a
take from its table); the sources' parts are then scattered into one tensor a column (in shared
memory inside a DataLoader worker, so the hand-over copies nothing), and the transform runs on
the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from ..batches import BatchGroup, split_group
from ..dataset import BatchReader, Transform, resolve_transform

SOURCE_KEY = "source"
"""The batch key of each row's source (its index in ``mix``), an ``int64`` tensor."""


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
        out = torch.empty((total, *first.shape[1:]), dtype=first.dtype)
        if get_worker_info() is not None:
            out.share_memory_()
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
    transform (the transform runs here, on the merged batch)."""

    def __init__(
        self,
        readers: Sequence[BatchReader],
        names: Sequence[str],
        *,
        transform: Transform | str | None = None,
    ) -> None:
        assert len(readers) == len(names) >= 1
        assert all(r.transform is None for r in readers), "the sources' readers read raw rows"
        self.readers = list(readers)
        self.names = list(names)
        self.bases = np.concatenate([[0], np.cumsum([len(r) for r in readers])]).astype(np.int64)
        self.num_rows = int(self.bases[-1])
        self.transform = resolve_transform(transform)

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

    def read(self, positions: np.ndarray) -> dict[str, Any]:
        """The rows at mixture ``positions`` (in that order) as one batch dict, with ``source``."""
        sources = self.sources_of(positions)
        parts: dict[str, list[tuple[np.ndarray, Any]]] = {}
        keys: list[tuple[str, ...]] = []
        for source in range(len(self.readers)):
            rows = np.flatnonzero(sources == source)
            if not len(rows):
                continue
            batch = self.readers[source]._getitem(positions[rows] - self.bases[source])
            keys.append(tuple(batch))
            for name, value in batch.items():
                parts.setdefault(name, []).append((rows, value))
        if len(set(keys)) > 1:
            raise RuntimeError(
                f"mixture sources give batches with different keys {sorted(set(keys))}: with nulls='mask', a column "
                "with nulls in one source and none in another does this; select the same nullable columns in each"
            )
        out = {name: _merge(value, len(positions), where=name) for name, value in parts.items()}
        src = torch.from_numpy(sources.astype(np.int64))
        out[SOURCE_KEY] = src.share_memory_() if get_worker_info() is not None else src
        return out

    def _getitem(self, index: Any) -> Any:
        if isinstance(index, BatchGroup):
            if not len(index):
                return BatchGroup()
            rows = self.read(np.concatenate(index))
            return split_group(rows, [len(b) for b in index], self._finish)
        return self._finish(self.read(np.asarray(index, dtype=np.int64)))
