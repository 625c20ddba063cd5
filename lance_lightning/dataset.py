"""Row addresses → one Arrow take → a dict of tensors, inside whichever process reads.

:class:`LanceBatchDataset` is a map-style dataset whose *index is a whole batch*: the
sampler hands it an array of row addresses and it makes one ``take`` for all of them. Use it
with ``DataLoader(dataset, sampler=LanceBatchSampler(...), batch_size=None)``.

It pickles as a few strings (table URI, name, version, columns, transform), so a worker
process opens its own handle to the table: no permutation table is copied into workers and
nothing of lancedb's runtime crosses a ``fork``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from torch.utils.data import Dataset

from .convert import NullPolicy, batch_to_tensors
from .source import TableSource, is_memory_uri

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
    ``values`` already are (the sampler hands batches over sorted), so no reorder is needed."""
    if len(values) > 1 and not np.all(values[1:] > values[:-1]):
        return np.unique(values, return_inverse=True)
    return values, None


class TableChangedError(RuntimeError):
    """Rows the split refers to are gone from the pinned table version."""


class LanceBatchDataset(Dataset):
    """Reads batches of rows by row address from one pinned table version.

    ``dataset[row_ids]`` returns ``transform(batch_to_tensors(record_batch))`` with rows in
    the order of ``row_ids`` (repeats allowed). ``len(dataset)`` is the split's row count.
    """

    def __init__(
        self,
        source: TableSource,
        columns: Sequence[str],
        *,
        num_rows: int,
        transform: Transform | str | None = None,
        nulls: NullPolicy = "raise",
        table: Any = None,
    ) -> None:
        self.source = source
        self.columns = list(columns)
        self.num_rows = num_rows
        self.transform = resolve_transform(transform)
        self.nulls = nulls
        self._table = table
        self._pid = os.getpid() if table is not None else None

    def __len__(self) -> int:
        return self.num_rows

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

    def table(self) -> Any:
        """This process's handle to the pinned table, opened on first use after a fork or pickle."""
        if self._table is None or self._pid != os.getpid():
            self._table = self.source.open()
            self._pid = os.getpid()
        return self._table

    def read_arrow(self, row_ids: Sequence[int] | np.ndarray) -> pa.Table:
        """One take for the whole batch, rows in the requested order."""
        unique, inverse = unique_sorted(np.asarray(row_ids, dtype=np.uint64))
        result = self.table().take_row_ids(unique.tolist()).select(self.columns).to_arrow()
        if result.num_rows != len(unique):
            raise TableChangedError(
                f"asked table {self.source.name!r} (version {self.source.version}) for {len(unique)} rows "
                f"and got {result.num_rows}: rows were deleted from the version this run pinned"
            )
        if inverse is not None:
            result = result.take(pa.array(inverse))
        return result

    def __getitem__(self, row_ids: Sequence[int] | np.ndarray) -> Any:
        batch = batch_to_tensors(self.read_arrow(row_ids), nulls=self.nulls)
        return self.transform(batch) if self.transform is not None else batch
