"""Reading a stage: every process memory-maps its files (one copy in the page cache for the whole
node) and gathers rows by split position, with numpy for flat columns and Arrow for the others."""

from __future__ import annotations

import contextlib
import io
import mmap
import os
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..convert import WIDENED, NullPolicy, batch_to_tensors, column_to_tensor, torch_dtype_to_numpy
from . import store
from .plan import ARROW_FILE, SCHEMA_FILE
from .store import StageError

Allocate = Callable[[np.dtype, tuple[int, ...]], "np.ndarray | None"]
"""Where a gathered column may go: an array of that dtype and shape, or None (a new tensor then)."""
_WIDEN = {np.dtype(str(arrow)): torch_dtype_to_numpy(dt) for arrow, dt in WIDENED.items()}
""":data:`..convert.WIDENED` by NumPy dtype: torch has no uint16/32/64, they widen (uint64 wraps),
the same way whether a batch is read from the table or from a stage."""


def _map(path: Path, prefault: bool) -> tuple[mmap.mmap, io.FileIO, os.stat_result]:
    """The file mapped read-only, the open file it was mapped from (kept: :meth:`StagedRows._check`
    asks its descriptor; it closes when dropped), and its ``fstat``."""
    flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if prefault else 0)
    fh = io.FileIO(path, "r")
    try:
        st = os.fstat(fh.fileno())
        mm = mmap.mmap(fh.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
    except BaseException:
        fh.close()
        raise
    if prefault and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_WILLNEED)
    return mm, fh, st


def _npy(mm: mmap.mmap) -> np.ndarray:
    """The array of a ``.npy`` file mapped at ``mm`` (a read-only view, no copy)."""
    fh = io.BytesIO(memoryview(mm)[:4096].tobytes())
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(fh)
    if fortran:
        raise ValueError("a Fortran-ordered array is not a stage file")
    count = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(mm, dtype=dtype, count=count, offset=fh.tell()).reshape(shape)


def _to_arrow(field: pa.Field, values: np.ndarray, valid: np.ndarray | None) -> pa.Array:
    """Flat column values (and validity) back into the field's Arrow type: zero-copy for numbers."""
    t = field.type
    ext = t if isinstance(t, pa.FixedShapeTensorType) else None
    if ext is not None:
        t = ext.storage_type
    levels = []
    while pa.types.is_fixed_size_list(t):
        levels.append(t)
        t = t.value_type
    mask = None if valid is None or valid.all() else pa.array(~valid)
    flat = values.reshape(-1)
    if not levels:
        arr = pa.array(flat, type=t, mask=None if mask is None else ~valid)
    else:
        arr = pa.array(flat, type=t)
        for i, level in enumerate(reversed(levels)):
            arr = pa.FixedSizeListArray.from_arrays(arr, type=level, mask=mask if i == len(levels) - 1 else None)
    return pa.ExtensionArray.from_storage(ext, arr) if ext is not None else arr


class _ByteColumn:
    """A binary or string column of the stage's Arrow file with no null: each record batch's value
    offsets (a view of the mapped file) and values (a memoryview of it), read without Arrow."""

    def __init__(self, offsets: list[np.ndarray], data: list[memoryview], text: bool) -> None:
        self.offsets, self.data, self.text = offsets, data, text

    def values(self, batch: int, offsets: np.ndarray, rows: np.ndarray) -> list[Any]:
        """Rows ``rows`` (in range) of record batch ``batch`` (whose ``offsets`` are given), as Python objects."""
        data = self.data[batch]
        starts, ends = offsets[rows].tolist(), offsets[rows + 1].tolist()
        if self.text:
            return [str(data[a:e], "utf-8") for a, e in zip(starts, ends)]
        return [bytes(data[a:e]) for a, e in zip(starts, ends)]


def _byte_column(field: pa.Field, batches: list[pa.RecordBatch]) -> _ByteColumn | None:
    """``field``'s column as a :class:`_ByteColumn` where it is plain ``binary``/``string`` (or
    their ``large_`` kinds) and no record batch holds a null; None otherwise (read through Arrow)."""
    t = field.type
    text = pa.types.is_string(t) or pa.types.is_large_string(t)
    if not (text or pa.types.is_binary(t) or pa.types.is_large_binary(t)) or not batches:
        return None
    width = np.int64 if pa.types.is_large_string(t) or pa.types.is_large_binary(t) else np.int32
    offsets, data = [], []
    for batch in batches:
        array = batch.column(field.name)
        if array.null_count:
            return None
        _, offset_buffer, data_buffer = array.buffers()
        offsets.append(np.frombuffer(offset_buffer, dtype=width)[array.offset : array.offset + len(array) + 1])
        data.append(memoryview(data_buffer) if data_buffer is not None else memoryview(b""))
    return _ByteColumn(offsets, data, text)


class StagedRows:
    """The rows of one stage, addressed by split position (row ``i`` = the split's ``i``-th smallest
    row address). Pickles as its path; each process maps the files and takes a lease on first use
    (:class:`~.store.Lease`: eviction skips the stage while any process holds it)."""

    def __init__(self, path: str | os.PathLike[str], *, prefault: bool = False) -> None:
        self.path = Path(path)
        self.prefault = prefault
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "prefault": self.prefault}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], prefault=state["prefault"])

    def _damaged(self, problem: str, meta: dict[str, Any] | None = None) -> StageError:
        what = ""
        if meta is not None:
            what = f" (split {meta.get('split')!r} of table {meta.get('table')!r}, version {meta.get('version')})"
        if not self.path.is_dir():
            return StageError(
                f"stage {str(self.path)!r} is gone: removed (evicted by another job to make room, cleared, or "
                "deleted) while this job did not hold it. The next setup stages the split again."
            )
        return StageError(
            f"stage {str(self.path)!r}{what} is damaged: {problem}. No row of it is served. "
            "The next setup rebuilds it; or delete that directory."
        )

    def _check(self) -> None:
        """What every read promises: the bytes of each mapped file are still the ones the fill
        wrote, by its size and modification time, asked of the descriptor it was mapped from (one
        ``fstat`` a file, ~0.9 us here), before and after each gather. A write in place, a
        truncation or an extension changes these; bytes changed without touching the modification
        time do not (the CRC-32 at setup finds those). A file deleted or replaced by another after
        setup changes nothing this process reads (the mapped file lives on until it is unmapped),
        so it is not an error here: the next setup rebuilds the stage."""
        for fd, rel, want in self._stamps:
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns) != want:
                problem = store.changed_since_fill(rel, self.meta["files"][rel], st)
                raise self._damaged(problem or f"file {rel} changed after setup", self.meta)

    def damage(self) -> StageError | None:
        """What is wrong with the stage's files now, by name, size and modification time against
        its manifest, as the error a read would raise; None when they are the fill's. For a process
        that does not read the stage itself: the loader asks when a worker reading it died (a file
        truncated under a worker's gather kills it with SIGBUS before any check can run)."""
        return self._checked_manifest()[1]

    def _checked_manifest(self) -> tuple[dict[str, Any] | None, StageError | None]:
        """The manifest, and what is wrong with the files against it (None: nothing)."""
        meta, problem = store.read_manifest(self.path)
        if meta is None:
            return None, self._damaged(problem or "no manifest")
        try:
            problem = store.check_sizes(self.path, meta)
        except OSError as err:
            problem = f"a file cannot be read: {err}"
        return meta, None if problem is None else self._damaged(problem, meta)

    def _open(self) -> None:
        if self._pid == os.getpid():
            return
        meta, damage = self._checked_manifest()
        if damage is not None:
            raise damage
        self._lease = store.Lease(self.path)
        self.meta = meta
        try:
            self.schema = pa.ipc.read_schema(pa.py_buffer((self.path / SCHEMA_FILE).read_bytes()))
            self._maps: list[mmap.mmap] = []
            self._close_files()  # a forked worker's copies of its parent's descriptors too
            self._flat: dict[str, tuple[dict[str, Any], np.ndarray, np.ndarray | None]] = {}
            for name, spec in meta["flat"].items():
                values = self._npy(spec["file"])
                valid_file = spec["file"].replace(".npy", ".valid.npy")
                valid = self._npy(valid_file) if valid_file in meta["files"] else None
                self._flat[name] = (spec, values, valid)
            if ARROW_FILE in meta["files"]:
                mm = self._map(ARROW_FILE)
                reader = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(mm)))
                self._batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
                self._arrow = pa.Table.from_batches(self._batches, schema=reader.schema)
                self._starts = np.cumsum([0] + [b.num_rows for b in self._batches])[:-1]
                self._bytes = {f.name: v for f in reader.schema if (v := _byte_column(f, self._batches)) is not None}
            else:
                self._arrow = None
                self._bytes = {}
        except (OSError, ValueError, KeyError, pa.ArrowInvalid) as err:
            self._lease.release()
            self._close_files()
            raise self._damaged(f"{type(err).__name__}: {err}", meta) from err
        self.num_rows_ = int(meta["rows"])
        self._pid = os.getpid()
        try:
            self._check()
        except StageError:
            self.close()
            raise

    def _map(self, rel: str) -> mmap.mmap:
        """Map file ``rel``, remembering what :meth:`_check` compares: its descriptor, and the size
        and modification time the fill recorded (older manifests: those found now)."""
        mm, fh, st = _map(self.path / rel, self.prefault)
        self._maps.append(mm)
        self._files.append(fh)
        want = self.meta["files"][rel]
        mtime = want.get("mtime_ns", st.st_mtime_ns)
        self._stamps.append((fh.fileno(), rel, (int(want["bytes"]), int(mtime))))
        return mm

    def _npy(self, rel: str) -> np.ndarray:
        return _npy(self._map(rel))

    def close(self) -> None:
        """Drop the mappings and the lease (the object opens again on next use)."""
        if self._pid == os.getpid():
            self._lease.release()
        self._close_files()
        self._flat, self._arrow, self._bytes, self._maps, self._pid = {}, None, {}, [], None

    def _close_files(self) -> None:
        for fh in getattr(self, "_files", ()):
            with contextlib.suppress(OSError):
                fh.close()
        self._files: list[io.FileIO] = []
        self._stamps: list[tuple[int, str, tuple[int, int]]] = []

    @property
    def num_rows(self) -> int:
        self._open()
        return self.num_rows_

    def __len__(self) -> int:
        return self.num_rows

    def flat_row_bytes(self, columns: Collection[str] | None = None) -> int:
        """Bytes a row of the flat (fixed-width) columns takes once gathered (widened dtypes);
        ``columns``: of those only (None: all)."""
        self._open()
        return sum(
            np.dtype(_WIDEN.get(values.dtype, values.dtype)).itemsize * int(np.prod(values.shape[1:], dtype=np.int64))
            for name, (_, values, _) in self._flat.items()
            if columns is None or name in columns
        )

    def flat_columns(self, nulls: NullPolicy = "raise") -> list[tuple[str, np.dtype, tuple[int, ...]]] | None:
        """``(name, dtype, row shape)`` of each column as :meth:`take_into_tensors` gathers it, in
        schema order, where every column is a flat one with no null recorded and no ``_valid``
        mask to add (``nulls="mask"`` adds one for a nullable column); None otherwise. Such a stage
        can be read with :meth:`take_flat_into`."""
        self._open()
        columns = []
        for field in self.schema:
            if field.name not in self._flat:
                return None
            _, values, valid = self._flat[field.name]
            if valid is not None or (nulls == "mask" and field.nullable):
                return None
            columns.append((field.name, np.dtype(_WIDEN.get(values.dtype, values.dtype)), tuple(values.shape[1:])))
        return columns

    def take_flat_into(self, positions: np.ndarray, outs: list[np.ndarray], *, in_range: bool = False) -> None:
        """Rows ``positions`` (``int64``) of each column written into ``outs`` (one array a column,
        in :meth:`flat_columns` order, of its dtype and ``len(positions)`` rows): the values
        :meth:`take_into_tensors` gives, with the same checks, for a stage of :meth:`flat_columns`,
        without its dict and tensors (a mixture gathers a few runs of each batch this way).
        ``in_range``: the caller has checked that every position lies in ``[0, rows)``."""
        self._open()
        self._check()
        pos = positions if in_range else self._positions(positions)
        for field, out in zip(self.schema, outs):
            values = self._flat[field.name][1]
            if out.dtype == values.dtype:
                values.take(pos, axis=0, out=out, mode="clip")  # as _take_into, without its call
            else:
                out[...] = values.take(pos, axis=0)
        self._check()

    @property
    def nbytes(self) -> int:
        self._open()
        return int(self.meta["bytes"])

    def _flat_values(self) -> list[np.ndarray]:
        """The mapped values of each column, in :meth:`flat_columns` order (opened in this process)."""
        self._open()
        return [self._flat[field.name][1] for field in self.schema]

    def _positions(self, positions: Any) -> np.ndarray:
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if len(pos) and (pos.min() < 0 or pos.max() >= self.num_rows_):
            raise IndexError(f"positions must be in [0, {self.num_rows_}) for stage {str(self.path)!r}")
        return pos

    def take(self, positions: Any) -> pa.Table:
        """The rows at ``positions`` (split positions; any order, repeats allowed), as Arrow."""
        self._open()
        self._check()
        pos = self._positions(positions)
        taken = self._take_arrow(pos) if self._arrow is not None else None
        columns = []
        for field in self.schema:
            if field.name in self._flat:
                _, values, valid = self._flat[field.name]
                columns.append(_to_arrow(field, np.take(values, pos, axis=0), None if valid is None else valid[pos]))
            else:
                columns.append(taken.column(field.name))
        self._check()  # the bytes just copied are the fill's
        return pa.Table.from_arrays(columns, schema=self.schema)

    def _take_arrow(self, pos: np.ndarray) -> pa.Table:
        """Rows ``pos`` of the Arrow file, taken batch by batch: a take on the whole chunked table
        concatenates every chunk first (a copy of the file a call: 3.4k rows/s at 1M rows)."""
        if len(self._batches) <= 1:
            return self._arrow.take(pa.array(pos))
        which = np.searchsorted(self._starts, pos, side="right") - 1
        order = np.argsort(which, kind="stable")
        sorted_which, sorted_pos = which[order], pos[order]
        bounds = np.flatnonzero(np.diff(sorted_which)) + 1
        pieces = [
            self._batches[int(sorted_which[lo])].take(pa.array(sorted_pos[lo:hi] - self._starts[sorted_which[lo]]))
            for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(pos)])
            if hi > lo
        ]
        if not pieces:
            return self._arrow.slice(0, 0)
        gathered = pa.Table.from_batches(pieces, schema=self._arrow.schema).combine_chunks()
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return gathered.take(pa.array(inverse))

    def _take_bytes(self, name: str, pos: np.ndarray) -> list[Any]:
        """Rows ``pos`` of binary (string) column ``name`` as ``bytes`` (``str``), what converting
        :meth:`_take_arrow`'s column gives, copied once, straight from the mapped file: the Arrow way
        copies each value three times more (a take a record batch, their concatenation, the take
        into order) before the copy into Python objects, 8-10 us of a worker's CPU a 5 KB JPEG."""
        column = self._bytes[name]
        if len(column.offsets) == 1:
            return column.values(0, column.offsets[0], pos)
        which = np.searchsorted(self._starts, pos, side="right") - 1
        order = np.argsort(which, kind="stable")
        sorted_which, sorted_pos = which[order], pos[order]
        bounds = np.flatnonzero(np.diff(sorted_which)) + 1
        values: list[Any] = []
        for lo, hi in zip(np.r_[0, bounds].tolist(), np.r_[bounds, len(pos)].tolist()):
            if hi > lo:
                b = int(sorted_which[lo])
                values.extend(column.values(b, column.offsets[b], sorted_pos[lo:hi] - self._starts[b]))
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return [values[i] for i in inverse.tolist()]

    def slice(self, lo: int, hi: int) -> pa.Table:
        """Rows ``lo:hi``, zero-copy (views of the mapped files: checked now, not when read later)."""
        self._open()
        self._check()
        lo, hi = max(0, lo), min(hi, self.num_rows_)
        hi = max(lo, hi)
        columns = []
        for field in self.schema:
            if field.name in self._flat:
                _, values, valid = self._flat[field.name]
                columns.append(_to_arrow(field, values[lo:hi], None if valid is None else valid[lo:hi]))
            else:
                columns.append(self._arrow.column(field.name).slice(lo, hi - lo))
        return pa.Table.from_arrays(columns, schema=self.schema)

    def take_into_tensors(
        self,
        positions: Any,
        *,
        nulls: NullPolicy = "raise",
        out_shared: bool | None = None,
        allocate: Allocate | None = None,
        columns: Collection[str] | None = None,
    ) -> dict[str, Any]:
        """``convert.batch_to_tensors(self.take(positions), nulls=nulls)``, exactly, with flat columns
        gathered by numpy straight into their tensors (no Arrow, no torch threads). ``out_shared``
        (default: inside a DataLoader worker) writes them into shared memory, so handing the batch to
        the main process copies nothing. ``allocate(dtype, shape)``, where given, places the flat
        columns instead (a worker's batch slot, :mod:`..slots`): those come back as the NumPy arrays
        it gave, the rest as tensors. ``columns``: only these of the stage's columns (and their
        masks), in the stage's order; None: all of them."""
        import torch

        self._open()
        self._check()  # before touching the mappings: a truncated file would fault (SIGBUS)
        pos = self._positions(positions)
        if out_shared is None:
            from torch.utils.data import get_worker_info

            out_shared = get_worker_info() is not None
        fields = [f for f in self.schema if columns is None or f.name in columns]
        # binary and string columns with no null, where no mask is added: sliced straight out of the mapped file
        direct = {f.name for f in fields if f.name in self._bytes and (nulls != "mask" or not f.nullable)}
        others = [f.name for f in fields if f.name not in self._flat and f.name not in direct]
        converted = {}
        if others:
            taken = self._take_arrow(pos)
            converted = batch_to_tensors(taken.select(others), nulls=nulls)
        out: dict[str, Any] = {}
        for field in fields:
            name = field.name
            if name in direct:
                out[name] = self._take_bytes(name, pos)
                continue
            if name not in self._flat:
                for key, mask in converted.items():  # its masks, a struct's children's too, in convert's order
                    if key == f"{name}_valid" or (key.startswith(f"{name}.") and key.endswith("_valid")):
                        out[key] = mask
                out[name] = converted[name]
                continue
            spec, values, valid = self._flat[name]
            v = None if valid is None else valid[pos]
            if v is not None and not v.all():
                if spec["levels"] or nulls != "mask":  # convert's own rules (and errors) for these
                    out[name] = column_to_tensor(
                        field, _to_arrow(field, np.take(values, pos, axis=0), v), nulls=nulls, out=out
                    )
                    continue
                out[f"{name}_valid"] = torch.from_numpy(v)
            elif nulls == "mask" and field.nullable:  # as convert: the same keys whether or not rows hold a null
                out[f"{name}_valid"] = torch.ones(len(pos), dtype=torch.bool)
            out[name] = _gather(values, pos, out_shared, allocate)
        self._check()  # and after: the bytes just gathered are the fill's
        return out


def take_flat_runs(
    stages: Sequence[StagedRows], runs: Iterable[tuple[int, np.ndarray, int, int]], outs: list[np.ndarray]
) -> None:
    """Rows of several stages written into one batch's columns: each run ``(stage, positions, lo,
    hi)`` gathers ``positions`` (in range, ``int64``) of ``stages[stage]`` into rows ``lo:hi`` of
    each of ``outs`` (one array a column, in :meth:`~StagedRows.flat_columns` order, the same in
    every stage). The values and checks of :meth:`~StagedRows.take_flat_into` a run, with each
    stage's files checked once before its first gather and once after its last (as one stage's
    read of a whole batch, or of a hand-over group, is), not once a run: a mixture of 3 sources
    read in groups of 16 batches made 192 ``fstat`` calls a group (48 runs x 2 files x 2), where
    one split made 4; now 12."""
    runs = list(runs)
    used = list(dict.fromkeys(stage for stage, _, _, _ in runs))
    values = {}
    for stage in used:
        values[stage] = stages[stage]._flat_values()
        stages[stage]._check()  # before touching the mappings: a truncated file would fault (SIGBUS)
    for stage, pos, lo, hi in runs:
        for column, out in zip(values[stage], outs):
            target = out[lo:hi]
            if target.dtype == column.dtype:
                column.take(pos, axis=0, out=target, mode="clip")  # as _take_into, without its call
            else:
                target[...] = column.take(pos, axis=0)
    for stage in used:
        stages[stage]._check()  # and after: the bytes just gathered are the fill's


def shared_empty(dtype: Any, shape: tuple[int, ...]) -> Any:
    """An uninitialized tensor in shared memory, its storage allocated shared directly (as torch's
    default_collate does in workers): handing it from a worker to the training process copies
    nothing, and it costs one allocation, where ``torch.empty(...).share_memory_()`` costs two and a copy."""
    import torch

    count = int(np.prod(shape, dtype=np.int64))
    like = torch.empty(0, dtype=dtype)
    storage = like._typed_storage()._new_shared(max(1, count))
    return like.new(storage)[:count].view(shape)


def _gather(values: np.ndarray, pos: np.ndarray, shared: bool, allocate: Allocate | None = None) -> Any:
    import torch

    target = _WIDEN.get(values.dtype, values.dtype)
    shape = (len(pos), *values.shape[1:])
    placed = allocate(target, shape) if allocate is not None else None
    if placed is not None:
        return _take_into(values, pos, placed)
    if shared and len(pos):
        # shared storage allocated directly (as torch's default_collate does in workers): 16.5 ms for
        # 16k rows of 512 B here, against 25.6 ms for new_empty(...).share_memory_()
        tensor = shared_empty(torch.from_numpy(np.empty(0, dtype=target)).dtype, shape)
        _take_into(values, pos, tensor.numpy())
        return tensor
    gathered = np.take(values, pos, axis=0)
    return torch.from_numpy(gathered if target == values.dtype else gathered.astype(target))


def _take_into(values: np.ndarray, pos: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Rows ``pos`` of ``values`` written into ``out`` (widened where its dtype is wider).

    ``pos`` must be in range (:meth:`StagedRows._positions` checks them): ``mode="clip"`` because
    with ``out`` and the default ``mode="raise"`` NumPy gathers into a buffer of its own and then
    copies it into ``out`` (224 us against 90 us for 4,096 rows of 512 B here)."""
    if out.dtype == values.dtype:
        np.take(values, pos, axis=0, out=out, mode="clip")
    else:
        out[...] = np.take(values, pos, axis=0)
    return out
