"""Writing a stage's data files: the flat ``.npy`` columns, the Arrow file, the schema, their CRC-32s."""

from __future__ import annotations

import ctypes
import errno
import io
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..reads import TableChangedError
from . import store
from .plan import ARROW_FILE, SCHEMA_FILE

_ARROW_BATCH_BYTES = 16 << 20  # Arrow-file record batches: few, large (a take resolves chunks); 64 MiB
# made a fill of 5 KiB images peak 170 MB higher (the pending batches and their concatenation)


class OverBudget(Exception):
    """The rows copied so far already pass the room the budget leaves (the estimate was low)."""


class Demote(Exception):
    """A fixed-width column holds nulls inside its values: it goes to the Arrow file instead."""

    def __init__(self, column: str) -> None:
        super().__init__(column)
        self.column = column


def _flat_values(array: pa.Array, spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """``(values (rows, *shape), validity or None)`` of one chunk of a flat column; nulls as 0."""
    n = len(array)
    valid = array.is_valid().to_numpy(zero_copy_only=False) if array.null_count else None
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    for size in spec["levels"]:  # the values behind null slots too: row i is values[i*size:(i+1)*size]
        array = array.values.slice(array.offset * size, len(array) * size)
    if array.null_count:
        if valid is None or spec["levels"]:
            raise Demote("")
        array = array.fill_null(False if pa.types.is_boolean(array.type) else 0)
    values = array.to_numpy(zero_copy_only=False)
    return values.reshape(n, *spec["shape"]), valid


def _libc_fallocate() -> Any:
    """Linux's ``fallocate(2)`` (glibc), or None. Not ``os.posix_fallocate``: where a file system
    cannot allocate, glibc emulates it by writing every block, which would double the fill."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.fallocate64
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


_FALLOCATE = _libc_fallocate()


def preallocate(fh: Any, size: int, path: Path) -> None:
    """Reserve a file's blocks before writing it front to back, so that a disk without room fails
    here, before any byte is copied, naming the file. (The writing process itself spends less:
    4.5 GB in 0.9-5.3 s instead of 2.8-7.7 s on this project's VM, but a whole fill did not get
    faster.) A file system that cannot preallocate is written as before."""
    if _FALLOCATE is None or size <= 0:
        return
    if _FALLOCATE(fh.fileno(), 0, 0, size) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(err, f"no room for the stage file ({size:,} bytes): {os.strerror(err)}", str(path))


class _NpyWriter:
    """One ``.npy`` file written front to back, its CRC-32 computed on the way."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        )
        self.fh = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.path = path
        self.size = len(header.getvalue()) + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        try:
            preallocate(self.fh, self.size, path)
        except BaseException:
            self.fh.close()
            raise
        self.crc = store.SegmentCrc()
        self.write(header.getvalue())

    def write(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        self.crc.update(view)
        self.fh.write(view)

    def close(self) -> list[str]:
        written = self.fh.tell()
        self.fh.close()
        if written < self.size:  # stopped early (an error): no preallocated tail left behind
            os.truncate(self.path, written)
        return self.crc.hexes()


class Progress:
    """``rows, MB/s`` on one line of stderr (a TTY only); nothing otherwise."""

    def __init__(self, total: int, what: str, enabled: bool) -> None:
        self.total, self.what = total, what
        self.enabled = enabled and sys.stderr.isatty()
        self.rows = self.bytes = 0
        self.start = self.last = time.monotonic()

    def update(self, rows: int, nbytes: int) -> None:
        self.rows += rows
        self.bytes += nbytes
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.2 or self.rows == self.total):
            self.last = now
            rate = self.bytes / max(now - self.start, 1e-9) / 1e6
            pct = 100 * self.rows / max(self.total, 1)
            sys.stderr.write(f"\rstaging {self.what}: {self.rows:,}/{self.total:,} rows ({pct:.0f}%), {rate:,.0f} MB/s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def write_files(
    batches: Iterator[pa.RecordBatch],
    target: Path,
    schema: pa.Schema,
    plan: dict[str, dict[str, Any]],
    n: int,
    progress: Progress,
    limit: int | None,
) -> dict[str, dict[str, Any]]:
    """Write the stage's data files into ``target``; returns their manifest (size, CRC-32)."""
    flat = {name: _NpyWriter(target / s["file"], np.dtype(s["dtype"]), (n, *s["shape"])) for name, s in plan.items()}
    validity: dict[str, np.ndarray] = {}
    others = pa.schema([f for f in schema if f.name not in plan])
    sink = pa.OSFile(str(target / ARROW_FILE), "wb") if len(others) else None
    arrow = pa.ipc.new_file(sink, others) if sink is not None else None
    pending: list[pa.RecordBatch] = []
    pending_bytes = done = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        if pending and arrow is not None:
            # one record batch (pa.concat_batches would need pyarrow >= 19; the floor is 16)
            arrow.write_table(pa.Table.from_batches(pending).combine_chunks())
        pending, pending_bytes = [], 0

    try:
        for batch in batches:
            if batch.schema != schema:
                batch = batch.cast(schema)
            rows = batch.num_rows
            for name, writer in flat.items():
                try:
                    values, valid = _flat_values(batch.column(name), plan[name])
                except Demote:
                    raise Demote(name) from None
                writer.write(np.ascontiguousarray(values))
                if valid is not None:
                    validity.setdefault(name, np.ones(n, dtype=bool))[done : done + rows] = valid
            if arrow is not None:
                part = pa.RecordBatch.from_arrays([batch.column(f.name) for f in others], schema=others)
                pending.append(part)
                pending_bytes += part.nbytes
                if pending_bytes >= _ARROW_BATCH_BYTES:
                    flush()
            done += rows
            progress.update(rows, batch.nbytes)
            if limit is not None and progress.bytes > limit:
                raise OverBudget
        flush()
    finally:
        crcs = {plan[name]["file"]: w.close() for name, w in flat.items()}
        if arrow is not None:
            try:
                arrow.close()
            finally:
                sink.close()  # also when the writer's close fails (a full disk): no file left open
    if done != n:
        raise TableChangedError(f"staged {done:,} rows of a {n:,}-row split")
    for name, valid in validity.items():
        path = target / plan[name]["file"].replace(".npy", ".valid.npy")
        np.save(path, valid)
        crcs[path.name] = store.crc32_file(path)
    (target / SCHEMA_FILE).write_bytes(schema.serialize().to_pybytes())
    for name in (ARROW_FILE, SCHEMA_FILE):
        if (target / name).exists():
            crcs[name] = store.crc32_file(target / name)
    return {rel: _entry(target / rel, crc) for rel, crc in sorted(crcs.items())}


def _entry(path: Path, crc: list[str]) -> dict[str, Any]:
    """A file's manifest entry, once it is closed: size, modification time (what readers check at
    every batch, :mod:`.reader`) and the CRC-32 of each segment (checked at setup)."""
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, store.CHECKSUM: crc}
