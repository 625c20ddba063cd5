"""In-memory mode: a split's selected columns read once into shared memory; batches are gathers.

When the selected columns of a split fit a memory budget, reading them once and gathering
every batch from memory beats any read from the table (a gather of 1,024 rows runs at
millions of rows a second). The tensors live in shared memory, so DataLoader workers map the
same pages instead of each holding a copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .convert import batch_to_tensors
from .dataset import BatchGroup, LanceBatchDataset, gather_shared, split_group

if TYPE_CHECKING:
    from .timing import LoaderTiming

DEFAULT_MEMORY_BUDGET = 4 * 1024**3
_CHUNK_ROWS = 65_536


class MemoryBudgetError(ValueError):
    """The split's selected columns do not fit the in-memory budget, or are not all tensors."""


class InMemoryBatchDataset(Dataset):
    """The rows of one split as shared-memory tensors; ``dataset[positions]`` gathers a batch.

    Same contract as :class:`~.dataset.LanceBatchDataset`, except that the index is positions
    in the split, always: a batch is one ``index_select`` per column, then the transform.
    """

    timing: LoaderTiming | None = None  # as LanceBatchDataset.timing

    def __init__(
        self,
        num_rows: int,
        columns: dict[str, torch.Tensor],
        *,
        transform: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self.num_rows = num_rows
        self.columns = {name: tensor.share_memory_() for name, tensor in columns.items()}
        self.transform = transform

    def __len__(self) -> int:
        return self.num_rows

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.columns.values())

    def _finish(self, batch: dict[str, torch.Tensor]) -> Any:
        if self.transform is None:
            return batch
        return self.transform(batch) if self.timing is None else self.timing.transform(self.transform, batch)

    def __getitem__(self, positions: np.ndarray | BatchGroup) -> Any:
        return self._getitem(positions) if self.timing is None else self.timing.load(self._getitem, positions)

    def _getitem(self, positions: np.ndarray | BatchGroup) -> Any:
        if isinstance(positions, BatchGroup):
            # One gather for the group; the batches are views of it, so a worker hands the main
            # process one shared-memory block per column instead of one per batch.
            if not len(positions):
                return BatchGroup()
            index = torch.from_numpy(np.concatenate(positions).astype(np.int64, copy=False))
            gathered = {name: gather_shared(tensor, index) for name, tensor in self.columns.items()}
            return split_group(gathered, [len(b) for b in positions], self._finish)
        index = torch.from_numpy(np.asarray(positions, dtype=np.int64))
        return self._finish({name: tensor.index_select(0, index) for name, tensor in self.columns.items()})


def load_in_memory(reader: LanceBatchDataset, *, num_rows: int, split: str, budget_bytes: int) -> InMemoryBatchDataset:
    """Read the split's selected columns once (in table order, in range scans) into memory.

    ``reader`` maps the split's positions to its rows (``reader.rows``). Raises
    :class:`MemoryBudgetError` before reading the whole split when the first chunk shows it
    will not fit ``budget_bytes``, or when a column is not a tensor (strings, bytes,
    variable-length lists have no gather; leave them out of ``columns``).
    """
    columns: dict[str, torch.Tensor] = {}
    for start in range(0, num_rows, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, num_rows)
        chunk = batch_to_tensors(reader.read_arrow(reader.offsets(np.arange(start, stop))), nulls=reader.nulls)
        if start == 0:
            _check_fits(chunk, rows=num_rows, split=split, budget_bytes=budget_bytes)
            # Allocated once, in shared memory, and filled chunk by chunk: no second copy.
            columns = {
                name: torch.empty((num_rows, *value.shape[1:]), dtype=value.dtype).share_memory_()
                for name, value in chunk.items()
            }
        for name, value in chunk.items():
            columns[name][start : start + len(value)] = value
    return InMemoryBatchDataset(num_rows, columns, transform=reader.transform)


def _check_fits(chunk: dict[str, Any], *, rows: int, split: str, budget_bytes: int) -> None:
    not_tensors = {name: type(v).__name__ for name, v in chunk.items() if not isinstance(v, torch.Tensor)}
    if not_tensors:
        raise MemoryBudgetError(
            f"in_memory=True holds tensor columns only; in split {split!r} the column(s) {sorted(not_tensors)} "
            "convert to Python lists. Leave them out of `columns` or turn in_memory off."
        )
    sample_rows = max(len(next(iter(chunk.values()))), 1) if chunk else 1
    per_row = sum(v.numel() * v.element_size() for v in chunk.values()) / sample_rows
    needed = int(per_row * rows)
    if needed > budget_bytes:
        raise MemoryBudgetError(
            f"split {split!r} needs about {needed / 2**20:,.0f} MiB in memory ({rows:,} rows x {per_row:,.0f} B of "
            f"columns {sorted(chunk)}), over memory_budget_bytes={budget_bytes:,} ({budget_bytes / 2**20:,.0f} MiB). "
            "Raise memory_budget_bytes, select fewer columns, or turn in_memory off to read from the table."
        )
