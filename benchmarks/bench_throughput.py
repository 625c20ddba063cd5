"""Throughput and memory of the ways to read a LanceDB table into torch batches.

Run by hand (see benchmarks/README.md)::

    python benchmarks/bench_throughput.py --rows 1000000            # throughput + memory at 1M rows
    python benchmarks/bench_throughput.py --rows 10000000 --memory-only
    python benchmarks/bench_throughput.py --rows 20000               # smoke check, under a minute

The script makes its own tables under ``--dir`` (reused when they already hold ``--rows`` rows):

* ``throughput_<rows>``: ``emb`` fixed_size_list<float32>[128], ``label`` int64, ``text`` string
  (20-40 chars). Every reader selects ``emb`` + ``label`` (520 bytes a row) and ends each path with
  a dict of torch tensors ``{"emb": (rows, 128) float32, "label": (rows,) int64}``.
* ``memory_<rows>``: ``id`` int64 + ``label`` int64 (16 bytes a row), small enough at 10M rows.

Each reader runs in a fresh subprocess, so its peak RSS is its own: the parent samples the resident
set of that process and all its descendants (DataLoader workers, the forkserver) every 10 ms with
psutil, or, without psutil, falls back to ``getrusage`` maxrss of the process plus its reaped
children (a lower bound). Steady-state rows/s is timed from the second batch to the last; the time
to the first batch (worker start-up included) and the setup before it (opening the table, building
permutations or splits) are reported in their own columns. Each reader runs ``--repeats`` epochs
(or ``--max-batches`` batches) and the table gives the best and the spread. All reads hit a warm
page cache: the table was just written, or read by the readers before.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from lance_lightning.datamodule import LanceDataModule
from lance_lightning.sharding import DEFAULT_BLOCK_SIZE

try:
    import psutil
except ImportError:  # pragma: no cover - the fallback is documented in the module docstring
    psutil = None

warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

DIM = 128
THROUGHPUT_COLUMNS = ["emb", "label"]
MEMORY_COLUMNS = ["id", "label"]
BYTES_PER_ROW = {"throughput": DIM * 4 + 8, "memory": 16}
BUILDER_MEMORY_ENV = "LANCEDB_PERM_BUILDER_MEMORY_LIMIT"
ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 abcdefghijklmnopqrstuvwxyz"
Batch = dict[str, torch.Tensor]


# -- tables ------------------------------------------------------------------------------


def table_name(kind: str, rows: int) -> str:
    return f"{kind}_{rows}"


def _schema(kind: str) -> pa.Schema:
    if kind == "throughput":
        return pa.schema([("emb", pa.list_(pa.float32(), DIM)), ("label", pa.int64()), ("text", pa.string())])
    return pa.schema([("id", pa.int64()), ("label", pa.int64())])


def _generate(kind: str, rows: int, seed: int, chunk: int = 65536) -> Iterator[pa.RecordBatch]:
    rng = np.random.default_rng(seed)
    schema = _schema(kind)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        label = rng.integers(0, 1000, n, dtype=np.int64)
        if kind == "memory":
            yield pa.RecordBatch.from_arrays(
                [pa.array(np.arange(start, start + n, dtype=np.int64)), pa.array(label)], schema=schema
            )
            continue
        emb = rng.standard_normal((n, DIM), dtype=np.float32)
        lengths = rng.integers(20, 41, n).tolist()
        offsets = rng.integers(0, 40, n).tolist()
        text = [f"{start + i:09d} " + ALPHABET[o : o + n_ - 10] for i, (o, n_) in enumerate(zip(offsets, lengths))]
        yield pa.RecordBatch.from_arrays(
            [pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), DIM), pa.array(label), pa.array(text)],
            schema=schema,
        )


def ensure_table(uri: str, kind: str, rows: int, seed: int = 0) -> tuple[str, float]:
    """The table's name, and seconds spent making it (0 when an existing one was reused)."""
    name = table_name(kind, rows)
    db = lancedb.connect(uri)
    try:
        table = db.open_table(name)
        if table.count_rows() == rows and table.schema.remove_metadata() == _schema(kind):
            return name, 0.0
        db.drop_table(name)
    except (ValueError, FileNotFoundError):
        pass
    t0 = time.perf_counter()
    reader = pa.RecordBatchReader.from_batches(_schema(kind), _generate(kind, rows, seed))
    db.create_table(name, reader)
    return name, time.perf_counter() - t0


# -- Arrow → tensors for the raw paths (the datamodule uses lance_lightning.convert) -------------


def _array(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array:
    column = batch.column(name)
    if isinstance(column, pa.ChunkedArray):
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return column


def arrow_to_tensors(batch: pa.RecordBatch | pa.Table) -> Batch:
    """Zero-copy where Arrow allows: fixed_size_list → (rows, size), primitives → (rows,)."""
    out = {}
    for name in batch.schema.names:
        array = _array(batch, name)
        if pa.types.is_fixed_size_list(array.type):
            out[name] = torch.from_numpy(array.flatten().to_numpy()).view(len(array), array.type.list_size)
        else:
            out[name] = torch.from_numpy(array.to_numpy())
    return out


def rows_dicts_to_tensors(batch: dict[str, Any]) -> Batch:
    """What lancedb's StreamingDataset + default_collate give: emb as 128 float64 columns."""
    out = {}
    for name, value in batch.items():
        out[name] = torch.stack(value, dim=1).to(torch.float32) if isinstance(value, list) else value
    return out


# -- readers (each runs inside its own child process) --------------------------------------


@dataclass
class Ctx:
    uri: str
    table: str
    rows: int
    columns: list[str]
    batch_size: int
    max_batches: int
    repeats: int
    seed: int

    def open(self) -> Any:
        return lancedb.connect(self.uri).open_table(self.table)

    @property
    def epoch_batches(self) -> int:
        return -(-self.rows // self.batch_size)


@dataclass
class Reader:
    """``make_iter(repeat)`` yields tensor dicts; ``limit`` caps the batches read per repeat."""

    make_iter: Callable[[int], Iterator[Batch]]
    limit: int
    setup_s: float
    index: Callable[[], dict[str, int]] | None = None  # bytes of row index the reader holds
    close: Callable[[], None] = lambda: None


def _row_ids(table: Any) -> np.ndarray:
    # select one narrow column: lancedb's select([]) reads *every* column
    ids = table.search().select(["label"]).with_row_id(True).limit(None).to_arrow()["_rowid"].to_numpy()
    return np.sort(ids).astype(np.uint64)


def reader_scan(ctx: Ctx) -> Reader:
    t0 = time.perf_counter()
    table = ctx.open()
    setup = time.perf_counter() - t0

    def make_iter(_: int) -> Iterator[Batch]:
        query = table.search().select(ctx.columns).limit(None)
        for batch in query.to_batches(ctx.batch_size):
            yield arrow_to_tensors(batch)

    return Reader(make_iter, limit=ctx.epoch_batches * 2, setup_s=setup)


def reader_scan_sliced(ctx: Ctx) -> Reader:
    """The sequential scan in reads of 65,536 rows, sliced into batches after conversion."""
    t0 = time.perf_counter()
    table = ctx.open()
    setup = time.perf_counter() - t0

    def make_iter(_: int) -> Iterator[Batch]:
        for batch in table.search().select(ctx.columns).limit(None).to_batches(65_536):
            tensors = arrow_to_tensors(batch)
            for lo in range(0, batch.num_rows, ctx.batch_size):
                yield {name: t[lo : lo + ctx.batch_size] for name, t in tensors.items()}

    return Reader(make_iter, limit=ctx.epoch_batches * 2, setup_s=setup)


def _take_reader(ctx: Ctx, batches_for: Callable[[np.ndarray, np.random.Generator], Iterator[np.ndarray]]) -> Reader:
    t0 = time.perf_counter()
    table = ctx.open()
    row_ids = _row_ids(table)
    setup = time.perf_counter() - t0

    def make_iter(repeat: int) -> Iterator[Batch]:
        rng = np.random.default_rng([ctx.seed, repeat])
        for ids in batches_for(row_ids, rng):
            yield arrow_to_tensors(table.take_row_ids(ids.tolist()).select(ctx.columns).to_arrow())

    return Reader(make_iter, limit=ctx.max_batches, setup_s=setup)


def reader_take_uniform(ctx: Ctx, *, sort: bool) -> Reader:
    def batches(row_ids: np.ndarray, rng: np.random.Generator) -> Iterator[np.ndarray]:
        order = row_ids[rng.permutation(len(row_ids))]
        for start in range(0, len(order), ctx.batch_size):
            ids = order[start : start + ctx.batch_size]
            yield np.sort(ids) if sort else ids

    return _take_reader(ctx, batches)


def reader_scan_blocks(ctx: Ctx) -> Reader:
    """Range scans of shuffled blocks of ``DEFAULT_BLOCK_SIZE`` rows, cut into batches: the ceiling
    of shuffle='block' (which also mixes rows across blocks and splits, and converts once)."""
    t0 = time.perf_counter()
    table = ctx.open()
    setup = time.perf_counter() - t0

    def make_iter(repeat: int) -> Iterator[Batch]:
        rng = np.random.default_rng([ctx.seed, repeat])
        for start in rng.permutation(-(-ctx.rows // DEFAULT_BLOCK_SIZE)) * DEFAULT_BLOCK_SIZE:
            query = table.search().select(ctx.columns).offset(int(start)).limit(DEFAULT_BLOCK_SIZE)
            block = pa.Table.from_batches(list(query.to_batches(DEFAULT_BLOCK_SIZE)))
            tensors = arrow_to_tensors(block)
            for lo in range(0, block.num_rows, ctx.batch_size):
                yield {name: t[lo : lo + ctx.batch_size] for name, t in tensors.items()}

    return Reader(make_iter, limit=ctx.max_batches, setup_s=setup)


def reader_take_contiguous(ctx: Ctx) -> Reader:
    def batches(row_ids: np.ndarray, _: np.random.Generator) -> Iterator[np.ndarray]:
        for start in range(0, len(row_ids), ctx.batch_size):
            yield row_ids[start : start + ctx.batch_size]

    return _take_reader(ctx, batches)


def _permutation(ctx: Ctx, table: Any) -> Any:
    from lancedb.permutation import Permutation, permutation_builder

    os.environ.setdefault(BUILDER_MEMORY_ENV, str(4 * 1024**3))  # as lance_lightning.splits does
    perm_table = permutation_builder(table).shuffle(seed=ctx.seed).execute()
    return Permutation.from_tables(table, perm_table).select_columns(ctx.columns).with_format("arrow")


def reader_permutation(ctx: Ctx) -> Reader:
    t0 = time.perf_counter()
    table = ctx.open()
    perm = _permutation(ctx, table)
    num_rows = len(perm)
    setup = time.perf_counter() - t0

    def make_iter(_: int) -> Iterator[Batch]:
        for start in range(0, num_rows, ctx.batch_size):
            offsets = list(range(start, min(start + ctx.batch_size, num_rows)))
            yield arrow_to_tensors(perm.__getitems__(offsets))

    return Reader(make_iter, limit=ctx.max_batches, setup_s=setup)


def _forkserver_kwargs(num_workers: int) -> dict[str, Any]:
    if not num_workers:
        return {}
    return {"multiprocessing_context": multiprocessing.get_context("forkserver"), "persistent_workers": True}


def reader_permutation_loader(ctx: Ctx, *, num_workers: int) -> Reader:
    """lancedb's shuffled Permutation in a DataLoader; each worker unpickles the permutation table."""
    t0 = time.perf_counter()
    table = ctx.open()
    perm = _permutation(ctx, table)
    loader = DataLoader(
        perm,
        batch_size=ctx.batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=arrow_to_tensors,
        **_forkserver_kwargs(num_workers),
    )
    setup = time.perf_counter() - t0
    return Reader(lambda _: iter(loader), limit=ctx.max_batches, setup_s=setup, close=lambda: _shutdown(loader))


def reader_streaming(ctx: Ctx) -> Reader:
    from lancedb.streaming import StreamingDataset

    t0 = time.perf_counter()
    table = ctx.open()

    def dataset(epoch: int) -> StreamingDataset:
        return StreamingDataset(table, columns=ctx.columns, shuffle=True, shuffle_seed=ctx.seed, epoch=epoch)

    first = dataset(0)
    setup = time.perf_counter() - t0

    def make_iter(repeat: int) -> Iterator[Batch]:
        # a StreamingDataset resumes where its last iteration stopped: a fresh one per run
        for batch in DataLoader(first if repeat == 0 else dataset(repeat), batch_size=ctx.batch_size):
            yield rows_dicts_to_tensors(batch)

    return Reader(make_iter, limit=ctx.max_batches, setup_s=setup)


# The datamodule readers split the table by position: train is its first 90% (read in the
# training order), val the last 10% (table order). Both are runs of the table, so the raw take
# readers over the whole table remain their ceilings, and setup goes through lancedb's
# permutation builder as the default random splits do.
DM_SPLITS = {"kind": "sequential", "fractions": {"train": 0.9, "val": 0.1}}
DM_SPLITS_MEMORY = {"kind": "sequential", "fractions": {"train": 1.0}}


def reader_datamodule(
    ctx: Ctx, *, shuffle: str, num_workers: int, stage: str = "train", splits: Any = DM_SPLITS, in_memory: bool = False
) -> Reader:
    t0 = time.perf_counter()
    dm = LanceDataModule(
        ctx.uri,
        ctx.table,
        columns=ctx.columns,
        splits=splits,
        batch_size=ctx.batch_size,
        seed=ctx.seed,
        num_workers=num_workers,
        shuffle=shuffle,
        in_memory=in_memory,
    )
    dm.setup("fit")
    loader = dm.val_dataloader() if stage == "val" else dm.train_dataloader()
    setup = time.perf_counter() - t0

    def make_iter(repeat: int) -> Iterator[Batch]:
        loader.sampler.set_epoch(repeat)  # what Lightning does before each epoch
        return iter(loader)

    return Reader(
        make_iter, limit=ctx.max_batches, setup_s=setup, close=lambda: _shutdown(loader), index=dm.index_nbytes
    )


def _shutdown(loader: DataLoader) -> None:
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str  # which table: "throughput" or "memory"
    build: Callable[[Ctx], Reader]
    what: str
    cap: str | None = None  # the raw reader whose rate is this reader's ceiling


def _dm(shuffle: str, workers: int, splits: Any = DM_SPLITS) -> Callable[[Ctx], Reader]:
    return lambda ctx: reader_datamodule(ctx, shuffle=shuffle, num_workers=workers, splits=splits)


_CAPS = {"uniform": "take uniform, sorted", "block": "scan shuffled blocks", "none": "scan"}

THROUGHPUT_SPECS: list[Spec] = [
    Spec("scan", "throughput", reader_scan, "lancedb query to_batches(batch_size), table order (the practical limit)"),
    Spec(
        "scan, 64k reads",
        "throughput",
        reader_scan_sliced,
        "the same scan in reads of 65,536 rows, sliced into batches (fewer round trips into lancedb)",
    ),
    Spec(
        "take uniform, sorted",
        "throughput",
        lambda c: reader_take_uniform(c, sort=True),
        "take_row_ids of uniformly random rows, sorted in the batch (uniform shuffle's ceiling)",
    ),
    Spec(
        "take uniform, shuffled",
        "throughput",
        lambda c: reader_take_uniform(c, sort=False),
        "the same row ids in shuffled order (no sort)",
    ),
    Spec(
        "scan shuffled blocks",
        "throughput",
        reader_scan_blocks,
        f"range scans (search().offset().limit()) of shuffled blocks of {DEFAULT_BLOCK_SIZE} rows, sliced into "
        "batches (block shuffle's ceiling)",
    ),
    Spec(
        "take contiguous",
        "throughput",
        reader_take_contiguous,
        "take_row_ids of 1024 consecutive rows (shuffle='none' ceiling)",
    ),
    Spec(
        "lancedb Permutation",
        "throughput",
        reader_permutation,
        "shuffled Permutation, format arrow, __getitems__ of offsets in order",
        cap="take uniform, sorted",
    ),
    Spec(
        "lancedb StreamingDataset",
        "throughput",
        reader_streaming,
        "shuffled, per-row dicts, default collate (batch_size 1024), num_workers 0",
        cap="take uniform, sorted",
    ),
]
for _mode in ("uniform", "block", "none"):
    for _w in (0, 1, 2):
        THROUGHPUT_SPECS.append(
            Spec(
                f"LanceDataModule {_mode} w{_w}",
                "throughput",
                _dm(_mode, _w),
                f"train_dataloader() (the first 90% of the table), shuffle={_mode!r}, num_workers={_w}",
                cap=_CAPS[_mode],
            )
        )
for _w in (0, 2):
    THROUGHPUT_SPECS.append(
        Spec(
            f"LanceDataModule in_memory uniform w{_w}",
            "throughput",
            lambda c, _w=_w: reader_datamodule(c, shuffle="uniform", num_workers=_w, in_memory=True),
            f"train_dataloader(), in_memory=True (columns read once into shared memory, batches are gathers), "
            f"shuffle='uniform', num_workers={_w}; setup includes the one read",
        )
    )
THROUGHPUT_SPECS.append(
    Spec(
        "LanceDataModule val w0",
        "throughput",
        lambda c: reader_datamodule(c, shuffle="none", num_workers=0, stage="val"),
        "val_dataloader() (table order, the last 10% of the table), num_workers=0",
        cap="scan",
    )
)
THROUGHPUT_SPECS.append(
    Spec(
        "LanceDataModule uniform w0 splits=None",
        "throughput",
        _dm("uniform", 0, splits=None),
        "as 'uniform w0' but splits=None (whole table): row ids come from splits.whole_table_row_ids",
        cap="take uniform, sorted",
    )
)

MEMORY_SPECS: list[Spec] = [
    Spec("scan", "memory", reader_scan, "lancedb query to_batches (baseline)"),
    Spec(
        "LanceDataModule uniform w0",
        "memory",
        _dm("uniform", 0, DM_SPLITS_MEMORY),
        "train_dataloader() over the whole table, num_workers=0",
    ),
    Spec(
        "LanceDataModule uniform w2",
        "memory",
        _dm("uniform", 2, DM_SPLITS_MEMORY),
        "train_dataloader() over the whole table, num_workers=2",
    ),
    Spec(
        "lancedb Permutation w0",
        "memory",
        lambda c: reader_permutation_loader(c, num_workers=0),
        "DataLoader(Permutation), num_workers=0",
    ),
    Spec(
        "lancedb Permutation w2",
        "memory",
        lambda c: reader_permutation_loader(c, num_workers=2),
        "DataLoader(Permutation), num_workers=2 (permutation table pickled into each worker)",
    ),
]
SPECS = {(s.kind, s.name): s for s in THROUGHPUT_SPECS + MEMORY_SPECS}


def _rows(batch: Batch) -> int:
    return len(next(iter(batch.values())))


def _check(batch: Batch, columns: list[str]) -> None:
    assert sorted(batch) == sorted(columns), f"batch has columns {sorted(batch)}, expected {sorted(columns)}"
    for name, value in batch.items():
        assert isinstance(value, torch.Tensor), f"{name} is a {type(value).__name__}, not a tensor"
    if "emb" in batch:
        assert batch["emb"].dtype == torch.float32 and batch["emb"].shape[1:] == (DIM,), batch["emb"].shape


def run_child(kind: str, name: str, ctx: Ctx) -> dict[str, Any]:
    """Build one reader, read ``repeats`` times, return the timings (runs in the child)."""
    reader = SPECS[(kind, name)].build(ctx)
    runs = []
    try:
        for repeat in range(ctx.repeats):
            t0 = time.perf_counter()
            iterator = reader.make_iter(repeat)
            first = next(iterator)
            t1 = time.perf_counter()
            _check(first, ctx.columns)
            rows, batches = 0, 1
            for batch in iterator:
                rows += _rows(batch)
                batches += 1
                if batches >= reader.limit:
                    break
            t2 = time.perf_counter()
            if hasattr(iterator, "close"):
                iterator.close()
            del iterator
            runs.append({"first_s": t1 - t0, "rows": rows, "secs": t2 - t1, "batches": batches})
        index = reader.index() if reader.index is not None else None
    finally:
        reader.close()
    return {
        "index": index,
        "table_rows": ctx.rows,
        "setup_s": reader.setup_s,
        "runs": runs,
        "maxrss_self_mb": _maxrss_mb(resource.RUSAGE_SELF),
        "maxrss_children_mb": _maxrss_mb(resource.RUSAGE_CHILDREN),
    }


def _maxrss_mb(who: int) -> float:
    kb = resource.getrusage(who).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 1024**2


# -- parent: one subprocess per reader, RSS sampled from outside -------------------------


class RssSampler(threading.Thread):
    """Peak RSS of a process and all its descendants, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.stop = threading.Event()
        self.peak_total = self.peak_main = self.peak_children = self.peak_child = 0
        self.peak_pss = 0  # proportional set size: shared pages split among the processes sharing them
        self.ticks = 0

    def _pss(self) -> None:
        total = 0
        for proc in [self.proc, *self.proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error, AttributeError):
                total += proc.memory_full_info().pss
        self.peak_pss = max(self.peak_pss, total)

    def run(self) -> None:
        while not self.stop.is_set():
            self.ticks += 1
            if self.ticks % 20 == 0:  # every ~0.2 s: reading smaps is too slow for every sample
                with contextlib.suppress(psutil.Error):
                    self._pss()
            try:
                main = self.proc.memory_info().rss
                others = []
                for child in self.proc.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        others.append(child.memory_info().rss)
            except psutil.Error:
                return
            self.peak_main = max(self.peak_main, main)
            self.peak_children = max(self.peak_children, sum(others))
            self.peak_child = max(self.peak_child, max(others, default=0))
            self.peak_total = max(self.peak_total, main + sum(others))
            self.stop.wait(self.interval)


def _child_main(kind: str, name: str, ctx: Ctx, conn: Any, log_path: str) -> None:
    """Entry point of one reader's process; its stderr goes to ``log_path``."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 2)
    warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
    try:
        conn.send(("ok", run_child(kind, name, ctx)))
    except BaseException:  # report anything, the parent prints it
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


_LAUNCHER: Any = None
_PRELOAD = [
    "numpy",
    "pyarrow",
    "torch",
    "lancedb",
    "lancedb.permutation",
    "lancedb.streaming",
    "lightning.pytorch",
    "lance_lightning.datamodule",
    "psutil",
]


def _launcher() -> Any:
    """A forkserver that has imported torch, lightning, lancedb and lance_lightning once.

    Each reader is a fresh process forked from it: its own memory, no import cost. Every reader's
    process therefore holds what a Lightning training script holds before it reads any data.
    The modules are named one by one: on Python 3.11 the default preload, ``"__main__"``, is
    silently skipped (``ForkServer.ensure_running`` looks for a ``main_path`` key that
    ``spawn.get_preparation_data`` never sets), so each child would import everything again.
    DataLoader workers started inside a reader use their own, default forkserver, as in a user's
    script, so their start-up (which includes importing this script) is measured as users pay it.
    """
    global _LAUNCHER
    if _LAUNCHER is None:
        # the readers are forked from a server that imported (never used) lancedb: its at-fork
        # hook resets the runtime and warns; the server passes this filter on to them
        os.environ["PYTHONWARNINGS"] = ",".join(
            filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore:lancedb fork support:RuntimeWarning"])
        )
        _LAUNCHER = multiprocessing.get_context("forkserver")
        _LAUNCHER.set_forkserver_preload(_PRELOAD)
    return _LAUNCHER


def run_reader(args: argparse.Namespace, spec: Spec, table: str) -> dict[str, Any]:
    columns = THROUGHPUT_COLUMNS if spec.kind == "throughput" else MEMORY_COLUMNS
    ctx = Ctx(args.dir, table, args.rows, columns, args.batch_size, args.max_batches, args.repeats, args.seed)
    mp = _launcher()
    receiver, sender = mp.Pipe(duplex=False)
    with tempfile.NamedTemporaryFile(prefix="bench_reader_", suffix=".log", delete=False) as log:
        log_path = log.name
    t0 = time.perf_counter()
    proc = mp.Process(target=_child_main, args=(spec.kind, spec.name, ctx, sender, log_path), daemon=False)
    proc.start()
    sender.close()
    sampler = RssSampler(proc.pid) if psutil is not None else None
    if sampler is not None:
        sampler.start()
    status, payload = "error", "no result"
    try:
        if receiver.poll(args.timeout):
            status, payload = receiver.recv()
        else:
            payload = f"no result after {args.timeout} s"
    except EOFError:
        payload = "the reader's process died without a result"
    proc.join(30)
    if proc.is_alive():
        proc.terminate()
        proc.join()
    if sampler is not None:
        sampler.stop.set()
        sampler.join()
    wall = time.perf_counter() - t0
    log_text = Path(log_path).read_text(errors="replace")
    os.unlink(log_path)
    if status != "ok":
        detail = payload if isinstance(payload, str) else repr(payload)
        if proc.exitcode:
            detail += f" (exit code {proc.exitcode})"
        tail = "\n".join((detail + "\n" + log_text).strip().splitlines()[-20:])
        print(f"\n  !! {spec.name} failed:\n{tail}", file=sys.stderr)
        last = [line for line in detail.strip().splitlines() if line.strip()]
        return {"error": last[-1] if last else "failed"}
    result = payload
    mb = 1024**2
    if sampler is not None:
        result.update(
            rss_mb=sampler.peak_total / mb,
            rss_main_mb=sampler.peak_main / mb,
            rss_children_mb=sampler.peak_children / mb,
            rss_child_mb=sampler.peak_child / mb,
            pss_mb=sampler.peak_pss / mb,
            rss_how="psutil",
        )
    else:
        result.update(
            rss_mb=result["maxrss_self_mb"] + result["maxrss_children_mb"],
            rss_main_mb=result["maxrss_self_mb"],
            rss_children_mb=result["maxrss_children_mb"],
            rss_child_mb=result["maxrss_children_mb"],
            rss_how="getrusage",
        )
    result["wall_s"] = wall
    return result


def _rates(result: dict[str, Any]) -> list[float]:
    return [r["rows"] / r["secs"] for r in result["runs"] if r["secs"] > 0 and r["rows"] > 0]


def _fmt_rate(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k"


def _ratio(x: float | None, base: float | None) -> str:
    return "–" if not x or not base else f"{x / base:.2f}"


def summarize(results: dict[str, dict[str, Any]], specs: list[Spec], kind: str) -> list[str]:
    bpr = BYTES_PER_ROW[kind]
    best = {name: max(_rates(r), default=None) for name, r in results.items() if "runs" in r}
    base_rate = best.get("scan")
    base_rss = results.get("scan", {}).get("rss_mb")
    lines = []
    if kind == "throughput":
        lines.append(
            "| reader | batches×runs | rows/s (best) | spread (min–max) | MB/s | × scan | × ceiling "
            "| peak RSS MB | × scan RSS | setup s | first batch s |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    else:
        lines.append(
            "| reader | batches×runs | rows/s (best) | spread (min–max) | peak RSS MB (all) | peak PSS MB (all) "
            "| main MB | children MB (sum) | largest child MB | row index held, main | setup s | first batch s |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for spec in specs:
        r = results.get(spec.name)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {spec.name} | failed: {r['error']} |" + " |" * 9)
            continue
        rates = _rates(r)
        top = max(rates, default=None)
        spread = f"{_fmt_rate(min(rates))}–{_fmt_rate(max(rates))}" if rates else "–"
        batches = f"{r['runs'][0]['batches']}×{len(r['runs'])}" if r["runs"] else "0"
        first = r["runs"][0]["first_s"] if r["runs"] else float("nan")
        rate = _fmt_rate(top) if top else "–"
        if kind == "throughput":
            cap = best.get(spec.cap) if spec.cap else None
            lines.append(
                f"| {spec.name} | {batches} | {rate} | {spread} | {top * bpr / 1e6 if top else 0:.0f} | "
                f"{_ratio(top, base_rate)} | {_ratio(top, cap) if spec.cap else ''} | {r['rss_mb']:.0f} | "
                f"{_ratio(r['rss_mb'], base_rss)} | {r['setup_s']:.2f} | {first:.2f} |"
            )
        else:
            index = r.get("index")
            held = ""
            if index:
                held = f"{sum(index.values()) / 1e6:.2f} MB ({8 * sum(index.values()) / r['table_rows']:.2f} bits/row)"
            lines.append(
                f"| {spec.name} | {batches} | {rate} | {spread} | {r['rss_mb']:.0f} | {r.get('pss_mb', 0):.0f} | "
                f"{r['rss_main_mb']:.0f} | {r['rss_children_mb']:.0f} | "
                f"{r['rss_child_mb']:.0f} | {held} | {r['setup_s']:.2f} | {first:.2f} |"
            )
    return lines


def _environment(args: argparse.Namespace) -> list[str]:
    try:
        commit = (
            subprocess.run(
                ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            or "?"
        )
    except OSError:
        commit = "?"
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return [
        f"commit {commit}; {cpu}, {os.cpu_count()} CPUs; python {platform.python_version()}, "
        f"torch {torch.__version__}, lancedb {lancedb.__version__}, pyarrow {pa.__version__}; "
        f"load average at start {load}",
        f"rows {args.rows:,}, batch size {args.batch_size}, readers other than the scan stop after "
        f"{args.max_batches} batches, {args.repeats} runs each; peak RSS via "
        f"{'psutil (process + descendants, 10 ms samples)' if psutil else 'getrusage maxrss (lower bound)'}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/tmp/lance_lightning_bench", help="database directory (made if missing)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument(
        "--max-batches",
        type=int,
        default=200,
        help="batches per run for every reader but the scan (which reads the whole table)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per reader (best and spread are reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-only", action="store_true", help="only the memory section (id + label table)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory section")
    parser.add_argument("--only", default=None, help="comma-separated substrings: run only readers whose name has one")
    parser.add_argument("--json", default=None, help="also write all raw results to this file")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a reader is given up")
    args = parser.parse_args(argv)

    os.makedirs(args.dir, exist_ok=True)
    sections = [] if args.memory_only else [("throughput", THROUGHPUT_SPECS)]
    if not args.no_memory:
        sections.append(("memory", MEMORY_SPECS))
    wanted = [s.strip() for s in args.only.split(",")] if args.only else None
    header = _environment(args)
    output = []
    raw: dict[str, Any] = {"environment": header}
    for kind, specs in sections:
        name, made = ensure_table(args.dir, kind, args.rows, args.seed)
        print(f"table {name}: " + (f"made in {made:.1f} s" if made else "reused"), file=sys.stderr)
        specs = [s for s in specs if s.name == "scan" or not wanted or any(w in s.name for w in wanted)]
        results: dict[str, dict[str, Any]] = {}
        for spec in specs:
            print(f"  {kind}: {spec.name} ...", file=sys.stderr, end="", flush=True)
            results[spec.name] = run_reader(args, spec, name)
            rates = _rates(results[spec.name]) if "runs" in results[spec.name] else []
            print(
                f" {_fmt_rate(max(rates)) if rates else '-'} rows/s, "
                f"{results[spec.name].get('rss_mb', 0):.0f} MB, {results[spec.name].get('wall_s', 0):.1f} s",
                file=sys.stderr,
            )
        raw[kind] = results
        what = "emb + label" if kind == "throughput" else "id + label"
        title = f"### {kind.capitalize()}: {args.rows:,} rows, {what} ({BYTES_PER_ROW[kind]} B/row)"
        output += ["", title, "", *summarize(results, specs, kind)]
        output += ["", "readers:"] + [f"- {s.name}: {s.what}" for s in specs]
    print("\n".join(header + output))
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
