"""A reader that adds each row's neighbours to its batch: gathers only, no vector query.

:class:`NeighborBatchDataset` wraps the split's reader (built without the transform): for a batch
of split positions it looks up their neighbour positions in the mapped lists (``[B, k]``), reads
those ``B x k`` rows' columns with one gather from the neighbour-columns reader (the same reader
when the columns are the batch's), and adds::

    batch["neighbors"] = {"ids": int64 [B, k] split positions (-1: none),
                          "mask": bool [B, k] (False: padding; its columns hold the row itself),
                          <column>: [B, k, ...] for each neighbour column}

before the transform runs. It pickles as its parts (each worker maps the lists file itself) and
composes with any reader that follows the :class:`~lance_lightning.dataset.BatchReader` contract.

In a DataLoader worker with no transform, where every part reads a stage, a batch (from a stage, a
group of batches) is gathered straight into a reused shared-memory slot: its rows, its neighbours'
rows already ``[B, k, ...]``, their ids and mask, and the training process gets views of the slot
(:func:`~..slots.gather_lent`): one gather, no copy on either side.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info
from torch.utils.data._utils.collate import default_convert

from ..batches import BatchGroup, _rows
from ..dataset import BatchReader, resolve_transform
from ..slots import gather_lent, lend_into_slot
from ..stage import store
from ..stage.reader import Allocate, _map, _npy, _take_into
from ..stage.store import StageError
from .mine import LISTS_FILE

NEIGHBORS_KEY = "neighbors"


class NeighborLists:
    """The mined lists of one split (``int32 [rows, k]``), memory-mapped on first use in each
    process, which then holds a lease on their directory (nothing evicts them while read).
    Pickles as its path.

    Like a stage's files (:meth:`~..stage.reader.StagedRows._check`), the lists file is checked
    before and after each gather by the size and modification time its mining recorded, asked of
    the descriptor it was mapped from: bytes written into it after setup would otherwise reach
    the batches through the mapping as other rows' neighbours."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._ids: np.ndarray | None = None
        self._lease: Any = None
        self._pid: int | None = None
        self._file: io.FileIO | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    def _damaged(self, problem: str) -> StageError:
        return StageError(
            f"neighbour lists at {str(self.path)!r} are damaged: {problem}. No batch with them is served. "
            "The next setup mines them again; or delete that directory."
        )

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None or self._pid != os.getpid():
            self._drop_file()  # a forked worker's copy of its parent's descriptor too
            self._lease = store.Lease(self.path)
            meta, problem = store.read_manifest(self.path)
            problem = problem if meta is None else store.check_sizes(self.path, meta)
            if problem is not None:
                raise self._damaged(problem)
            mapped, self._file, st = _map(self.path / LISTS_FILE, prefault=False)
            self._want = meta["files"][LISTS_FILE]
            self._stamp = (int(self._want["bytes"]), int(self._want.get("mtime_ns", st.st_mtime_ns)))
            self._ids = _npy(mapped)  # a plain array over the mapping (np.memmap's indexing costs ~10 us more)
            self._pid = os.getpid()
            self.check()
        return self._ids

    def check(self) -> None:
        """Raise :class:`~..stage.StageError` if the lists file was written, truncated or extended
        since its mining (one ``fstat``, ~1 us)."""
        if self._file is None or self._pid != os.getpid():
            return
        st = os.fstat(self._file.fileno())
        if (st.st_size, st.st_mtime_ns) != self._stamp:
            raise self._damaged(store.changed_since_fill(LISTS_FILE, self._want, st) or "changed after setup")

    def damage(self) -> StageError | None:
        """What is wrong with the lists' files now against their manifest (None: nothing); asked by
        the loader when a worker died (a file truncated under a gather kills it with SIGBUS)."""
        meta, problem = store.read_manifest(self.path)
        if meta is not None:
            try:
                problem = store.check_sizes(self.path, meta)
            except OSError as err:
                problem = f"a file cannot be read: {err}"
        return None if problem is None else self._damaged(problem)

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def close(self) -> None:
        self._ids = None
        self._drop_file()
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def _drop_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def _fold(value: Any, rows: int, k: int) -> Any:
    """A gathered column of ``rows * k`` rows as ``[rows, k, ...]`` (lists as lists of ``k``)."""
    if isinstance(value, torch.Tensor):
        return value.view(rows, k, *value.shape[1:])
    if isinstance(value, dict):
        return {name: _fold(child, rows, k) for name, child in value.items()}
    return [list(value[i * k : (i + 1) * k]) for i in range(rows)]


class NeighborBatchDataset(BatchReader):
    """``inner``'s batches with ``batch["neighbors"]`` added (see the module); ``inner`` and
    ``columns_reader`` are read with no transform (this reader applies ``transform`` last)."""

    def __init__(
        self,
        inner: Any,
        lists: NeighborLists,
        *,
        columns_reader: Any = None,
        columns: Sequence[str] | None = None,
        transform: Any = None,
    ) -> None:
        self.inner = inner
        self.lists = lists
        self.columns_reader = columns_reader  # None: the neighbours' columns are read by inner
        self.columns = list(columns) if columns is not None else None  # None: every column the reader gives
        self.transform = resolve_transform(transform)
        self.num_rows = len(inner)
        self.slots: Any = None
        """Set by the loader for workers. With no transform and every part read from a stage: the
        slots a batch's rows, its ``B x k`` neighbour rows, ids and mask are gathered straight into
        (:func:`~..slots.gather_into_slot`, as the staged reader does). Otherwise (a transform): the
        slots its output is lent through (:func:`~..slots.lend_into_slot`)."""

    @property
    def lends_output(self) -> bool:
        """True where its batches go through output slots (a transform's, or a part not read
        from a stage), False where they are gathered straight into slots sized by :meth:`slot_layout`."""
        return self.transform is not None or not self._gathers()

    def _gathers(self) -> bool:
        """Every part reads a stage: a batch and its neighbours are gathered into a slot."""
        return all(getattr(r, "staged", None) is not None for r in self._parts())

    def slot_layout(self) -> tuple[int, int] | None:
        """(bytes, columns) of a row in a slot: its own fixed-width columns, and its ``k``
        neighbours' with their id (8 bytes) and mask (1)."""
        layout = self.inner.slot_layout()
        if layout is None or not self._gathers():
            return layout
        row_bytes, columns = layout
        reader = self.columns_reader or self.inner
        staged = reader.staged
        wanted = self.columns if self.columns is not None else [f.name for f in staged.schema]
        k = self.lists.k
        return row_bytes + k * (staged.flat_row_bytes(wanted) + 9), columns + len(wanted) + 2

    def _parts(self) -> list[Any]:
        return [r for r in (self.inner, self.columns_reader) if r is not None]

    @property
    def reads_stage(self) -> bool:
        """Its workers may fork (:func:`~lance_lightning.loader.worker_start_method`): every part reads a stage."""
        return all(r.reads_stage for r in self._parts())

    def table_sources(self) -> list[Any]:
        return [s for r in self._parts() for s in r.table_sources()]

    def damage(self) -> BaseException | None:
        found = next((found for r in self._parts() if (found := r.damage()) is not None), None)
        return found if found is not None else self.lists.damage()

    @property
    def staged(self) -> Any:
        """The inner reader's stage (what :func:`~lance_lightning.stage.hold_again` holds again)."""
        return getattr(self.inner, "staged", None)

    def row_bytes(self) -> int:
        reader = self.columns_reader or self.inner
        return self.inner.row_bytes() + self.lists.k * (reader.row_bytes() + 9)

    def close(self) -> None:
        """Drop this process's mappings and leases (reopened on next use)."""
        inner = self.unwrap()
        if hasattr(inner, "close"):
            inner.close()

    def unwrap(self) -> Any:
        """The inner reader, with what only this wrapper holds let go of (the lists' mapping and lease,
        the neighbour-columns reader's): an epoch that mines its lists again wraps the inner anew."""
        from ..stage import release_stage

        if self.columns_reader is not None and hasattr(self.columns_reader, "close"):
            self.columns_reader.close()
        release_stage(self.lists.path)
        self.lists.close()
        return self.inner

    def neighbors(self, positions: np.ndarray, allocate: Allocate | None = None) -> dict[str, Any]:
        """``batch["neighbors"]`` of the rows at ``positions``: one gather of their ``B x k`` neighbours.

        ``allocate`` (every part staged; a worker's slot): where the fixed-width neighbour columns,
        ids and mask go, as ``[B, k, ...]`` arrays it gave (the gather writes them in place)."""
        positions = np.asarray(positions, dtype=np.int64)
        lists = self.lists.ids  # int32 [rows, k], -1: padding
        self.lists.check()
        rows, k = len(positions), lists.shape[1]
        if rows and (positions.min() < 0 or positions.max() >= len(lists)):  # the gather below clips, never raises
            raise IndexError(
                f"positions must be in [0, {len(lists)}) for the neighbour lists {str(self.lists.path)!r}, got "
                f"{int(positions.min())}..{int(positions.max())}"
            )
        found = allocate(np.int64, (rows, k)) if allocate is not None else None
        mask = allocate(np.bool_, (rows, k)) if allocate is not None else None
        placed = found is not None and mask is not None
        found = _take_into(lists, positions, found) if placed else lists.take(positions, axis=0).astype(np.int64)
        mask = np.greater_equal(found, 0, out=mask if placed else None)
        flat = np.where(mask, found, positions[:, None]).reshape(-1)  # padding reads the row itself, masked out
        reader = self.columns_reader or self.inner
        if not rows:
            gathered = {}
        elif allocate is not None:  # straight into the slot, already [B, k, ...]
            folded: dict[int, np.ndarray] = {}

            def into(dtype: Any, shape: tuple[int, ...]) -> np.ndarray | None:
                placed = allocate(dtype, (rows, k, *shape[1:]))
                if placed is None:
                    return None
                view = placed.reshape(shape)
                folded[id(view)] = placed
                return view

            gathered = reader.staged.take_into_tensors(flat, nulls=reader.nulls, allocate=into, columns=self.columns)
            gathered = {name: folded.get(id(value), value) for name, value in gathered.items()}
        elif getattr(reader, "staged", None) is not None:  # only the columns wanted
            # into this worker's own memory where the batch is then copied into a slot whole (lending)
            shared = False if self._lending() else None
            take = reader.staged.take_into_tensors
            gathered = take(flat, nulls=reader.nulls, out_shared=shared, columns=self.columns)
        elif self._lending():
            gathered = reader.read_rows(flat)
        else:
            gathered = reader[flat]
        if self.columns is not None:
            gathered = {name: value for name, value in gathered.items() if name in self.columns}
        out = {
            name: value if isinstance(value, np.ndarray) else _fold(value, rows, k) for name, value in gathered.items()
        }
        self.lists.check()  # after the gather too: a write during it is not served
        out["ids"] = found if placed else torch.from_numpy(found)  # in the slot: as the slot's array
        out["mask"] = mask if placed else torch.from_numpy(mask)
        return out

    def _read(self, positions: np.ndarray, allocate: Allocate) -> dict[str, Any]:
        """The batch at ``positions`` and its neighbours, fixed-width columns placed by ``allocate``."""
        batch = self.inner.staged.take_into_tensors(positions, nulls=self.inner.nulls, allocate=allocate)
        batch[NEIGHBORS_KEY] = self.neighbors(positions, allocate)
        return batch

    def _getitem(self, index: Any) -> Any:
        group = isinstance(index, BatchGroup)
        if group and not len(index):
            return BatchGroup()
        positions = np.concatenate(index) if group else np.asarray(index, dtype=np.int64)
        if self.transform is None and self.slots is not None and self._gathers():
            worker = get_worker_info()
            if worker is not None:
                sizes = [len(b) for b in index] if group else None
                handed = gather_lent(self.slots, worker.id, lambda place: self._read(positions, place), sizes)
                if handed is not None:
                    return handed
        if group:
            batches = self.inner[index]
            around = self.neighbors(positions)
            bounds = np.cumsum([0, *(len(b) for b in index)]).tolist()
            return BatchGroup(
                self._finish({**batch, NEIGHBORS_KEY: _rows(around, lo, hi)})
                for batch, lo, hi in zip(batches, bounds[:-1], bounds[1:])
            )
        lending = self._lending()
        batch = self.inner.read_rows(positions) if lending else self.inner[index]
        batch[NEIGHBORS_KEY] = self.neighbors(positions)
        out = self._finish(batch)
        if lending:  # one copy into a reused slot instead of fresh shared memory for k + 1 times the rows
            return lend_into_slot(self.slots, get_worker_info().id, default_convert(out)) or out
        return out

    def _lending(self) -> bool:
        """A worker lends its output through a slot (a transform's; see :attr:`lends_output`)."""
        return self.slots is not None and self.lends_output and get_worker_info() is not None
