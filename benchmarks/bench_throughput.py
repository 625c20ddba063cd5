"""Throughput and memory of the ways to read a LanceDB table into torch batches, like with like.

Run by hand (see benchmarks/README.md)::

    python benchmarks/bench_throughput.py --rows 1000000                      # 13 readers, 3 rounds
    python benchmarks/bench_throughput.py --rows 10000000 --rounds 2 --batches 1000 \\
        --only default,hf,block-w0,none-w0                                    # 10M rows
    python benchmarks/bench_throughput.py --rows 20000 --rounds 1             # smoke check

Every reader reads the same table (``throughput_<rows>`` under ``--dir``: ``emb``
fixed_size_list<float32>[128] + ``label`` int64 selected, 520 B a row; the table also has a ``text``
column that nobody selects), the same number of rows (``--batches`` batches of ``--batch-size``,
capped at the train split), and ends with ``{"emb": float32 (rows, 128), "label": int64 (rows,)}``.

Like with like:

* each reader runs in its own process (forked from a server that imported torch, lightning, lancedb
  and lance_lightning once: what a training script holds), in ``--rounds`` interleaved rounds
  (round 1 runs every reader, then round 2...); the table shows medians and min-max over rounds;
* a process reads two epochs of N batches. Epoch 1 is timed from the first ``next()`` (worker
  start-up included): ``first batch s`` and ``rows/s epoch 1``. Epoch 2 (persistent workers, a new
  ``iter()``) is the steady state: rows / (first ``next()`` to the last batch), so prefetch and
  grouped reads (a block window, a 16k-row hand-over from a worker) are inside the timing;
* ratios to the Lance scan (pylance ``to_batches``, one process, no workers) are given for every
  row, and the worker count is a column of its own: a 2-worker row is two processes reading;
* setup (splits, staging fill, verification) is a column of its own; for staged modes the fill is
  also set against one sequential scan of the split (the stage root is emptied at the start of
  every round, so the first staged reader of a round fills it, the others reuse it);
* peak memory is sampled from outside every 10 ms (``/proc/<pid>/status``): the main (training)
  process alone and with all its descendants (DataLoader workers, their forkserver), and which part
  of it is file-backed (memory-mapped table/stage pages: page cache, shared, reclaimable).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import torch

from lance_lightning.datamodule import LanceDataModule

try:
    import psutil
except ImportError:  # pragma: no cover - checked in main()
    psutil = None

warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

DIM = 128
THROUGHPUT_COLUMNS = ["emb", "label"]
BYTES_PER_ROW = {"throughput": DIM * 4 + 8, "memory": 16}
BUILDER_MEMORY_ENV = "LANCEDB_PERM_BUILDER_MEMORY_LIMIT"
ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 abcdefghijklmnopqrstuvwxyz"
REGION_ROWS = 4096  # "table regions a batch" counts distinct 4,096-row stretches of the table
Batch = dict[str, torch.Tensor]

# The datamodule readers split the table by position: train is its first 90%, read in the training
# order; HF datasets gets a copy of the same rows. (Other benchmark scripts import DM_SPLITS.)
TRAIN_FRACTION = 0.9
DM_SPLITS = {"kind": "sequential", "fractions": {"train": TRAIN_FRACTION, "val": 1 - TRAIN_FRACTION}}


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


def train_rows(rows: int) -> int:
    return round(rows * TRAIN_FRACTION)


def ensure_hf_copy(uri: str, table: str, rows: int) -> tuple[Path | None, float, str]:
    """The train split's ``emb`` + ``label`` as a HF ``datasets`` directory (``save_to_disk``):
    (path, seconds to make it, 0 when reused; a note). Streamed: an Arrow IPC stream written from
    pylance's scan, ``Dataset.from_file`` (memory-mapped), ``save_to_disk``."""
    try:
        import datasets
    except ImportError:
        return None, 0.0, "datasets not installed: pip install -e '.[bench]'"
    import lance

    path = Path(uri) / f"hf_{table}_{train_rows(rows)}"
    if (path / "state.json").exists():
        return path, 0.0, f"datasets {datasets.__version__}"
    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    ds = lance.dataset(os.path.join(uri, f"{table}.lance"))
    schema = ds.schema
    schema = pa.schema([schema.field(c) for c in THROUGHPUT_COLUMNS])
    stream = Path(uri) / f".hf_{table}.arrow"
    with pa.OSFile(str(stream), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in ds.to_batches(columns=THROUGHPUT_COLUMNS, batch_size=65536, limit=train_rows(rows)):
            writer.write_batch(batch)
    datasets.disable_progress_bars()
    datasets.Dataset.from_file(str(stream)).save_to_disk(str(path))
    stream.unlink()
    return path, time.perf_counter() - start, f"datasets {datasets.__version__}"


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


# -- readers (each runs inside its own child process) --------------------------------------


@dataclass
class Ctx:
    uri: str
    table: str
    rows: int
    batch_size: int
    batches: int  # batches an epoch, the same for every reader
    seed: int
    columns: list[str] = field(default_factory=lambda: list(THROUGHPUT_COLUMNS))
    hf_path: str | None = None

    @property
    def lance_path(self) -> str:
        return os.path.join(self.uri, f"{self.table}.lance")


@dataclass
class Reader:
    """``make_iter(epoch)`` yields tensor dicts; ``regions()`` the 4,096-row table regions a batch."""

    make_iter: Callable[[int], Iterator[Batch]]
    setup_s: float
    close: Callable[[], None] = lambda: None
    regions: Callable[[], float | None] = lambda: None
    extra: dict[str, Any] = field(default_factory=dict)


def _mean_regions(batches: list[np.ndarray]) -> float | None:
    counts = [len(np.unique(np.asarray(b, dtype=np.int64) // REGION_ROWS)) for b in batches if len(b)]
    return float(np.mean(counts)) if counts else None


def reader_scan(ctx: Ctx) -> Reader:
    """pylance ``to_batches`` in table order; after the timed epochs, one timed scan of the split."""
    import lance

    t0 = time.perf_counter()
    ds = lance.dataset(ctx.lance_path)
    setup = time.perf_counter() - t0

    def make_iter(_: int) -> Iterator[Batch]:
        for batch in ds.to_batches(columns=ctx.columns, batch_size=ctx.batch_size):
            yield arrow_to_tensors(batch)

    reader = Reader(make_iter, setup_s=setup, regions=lambda: 1.0)

    def split_scan() -> None:
        start, rows = time.perf_counter(), 0
        for batch in ds.to_batches(columns=ctx.columns, batch_size=ctx.batch_size, limit=train_rows(ctx.rows)):
            rows += len(arrow_to_tensors(batch)["label"])
        reader.extra["split_scan_s"] = time.perf_counter() - start
        reader.extra["split_rows"] = rows

    reader.close = split_scan
    return reader


def _stage_log() -> dict[str, Any]:
    """Catch the stage fill's one log line ("staged ...: rows, bytes in s")."""
    found: dict[str, Any] = {}

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.msg.startswith("staged ") and len(record.args) >= 4:
                found["fill_s"] = float(record.args[3])
                found["fill_bytes"] = int(str(record.args[2]).replace(",", ""))

    logger = logging.getLogger("lance_lightning.stage")
    logger.setLevel(logging.INFO)
    logger.addHandler(Catch())
    return found


def reader_datamodule(
    ctx: Ctx,
    *,
    shuffle: str,
    num_workers: int,
    staging: str = "auto",
    in_memory: bool = False,
    multiprocessing_context: str | None = None,
    read_ahead: int = 2,
    **settings: Any,
) -> Reader:
    from lance_lightning.dataset import StagedBatchDataset

    fill = _stage_log()
    t0 = time.perf_counter()
    dm = LanceDataModule(
        ctx.uri,
        ctx.table,
        columns=ctx.columns,
        splits=DM_SPLITS,
        batch_size=ctx.batch_size,
        seed=ctx.seed,
        num_workers=num_workers,
        shuffle=shuffle,
        staging=staging,
        in_memory=in_memory,
        multiprocessing_context=multiprocessing_context,
        read_ahead=read_ahead,
        **settings,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    setup = time.perf_counter() - t0
    sampler = loader.sampler

    def make_iter(epoch: int) -> Iterator[Batch]:
        sampler.set_epoch(epoch)  # what Lightning does before each epoch
        return iter(loader)

    def regions() -> float | None:
        sampler.set_epoch(0)
        batches = []
        for item in sampler:
            batches.extend(item if isinstance(item, list) else [item])
            if len(batches) >= 50:
                break
        return _mean_regions(batches[:50])

    extra = {"staged": isinstance(dm.datasets["train"], StagedBatchDataset), "train_rows": len(dm.datasets["train"])}
    reader = Reader(make_iter, setup_s=setup, close=lambda: _shutdown(loader), regions=regions, extra=extra)
    reader.extra.update(fill)  # filled by the log handler during setup
    return reader


def _shutdown(loader: Any) -> None:
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None


def _hf_batch(table: pa.Table) -> Batch:
    return arrow_to_tensors(table)


def reader_hf(ctx: Ctx, *, num_workers: int) -> Reader:
    """HF ``datasets``: ``load_from_disk`` (memory-mapped Arrow), ``with_format("arrow")``, one
    gather a batch (``ds[list_of_indices]``) through ``BatchSampler(RandomSampler)``, then tensors
    (the numpy format read 2.5x slower here: it converts the fixed-size list row by row)."""
    import datasets
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler

    if ctx.hf_path is None:
        raise RuntimeError("no HF datasets copy (datasets not installed)")
    t0 = time.perf_counter()
    ds = datasets.load_from_disk(ctx.hf_path).with_format("arrow")
    generator = torch.Generator().manual_seed(ctx.seed)
    batch_sampler = BatchSampler(RandomSampler(ds, generator=generator), ctx.batch_size, drop_last=False)
    kwargs: dict[str, Any] = {}
    if num_workers:
        kwargs = {"multiprocessing_context": multiprocessing.get_context("forkserver"), "persistent_workers": True}
    # batch_size=None + sampler=BatchSampler: the loader hands each list of indices to ds[...] (one
    # gather); with batch_sampler= it would call ds.__getitems__, which HF answers row by row.
    loader = DataLoader(
        ds, sampler=batch_sampler, batch_size=None, num_workers=num_workers, collate_fn=_hf_batch, **kwargs
    )
    setup = time.perf_counter() - t0

    def regions() -> float | None:
        return _mean_regions([np.asarray(b) for b, _ in zip(batch_sampler, range(50))])

    return Reader(lambda _: iter(loader), setup_s=setup, close=lambda: _shutdown(loader), regions=regions)


def reader_permutation(ctx: Ctx) -> Reader:
    """lancedb's shuffled ``Permutation`` of the whole table, ``__getitems__`` of consecutive offsets."""
    from lancedb.permutation import Permutation, permutation_builder

    os.environ.setdefault(BUILDER_MEMORY_ENV, str(4 * 1024**3))  # as lance_lightning.splits does
    t0 = time.perf_counter()
    table = lancedb.connect(ctx.uri).open_table(ctx.table)
    perm_table = permutation_builder(table).shuffle(seed=ctx.seed).execute()
    perm = Permutation.from_tables(table, perm_table).select_columns(ctx.columns).with_format("arrow")
    num_rows = len(perm)
    setup = time.perf_counter() - t0

    def make_iter(epoch: int) -> Iterator[Batch]:
        first = (epoch * ctx.batches * ctx.batch_size) % num_rows
        for start in range(first, num_rows, ctx.batch_size):
            offsets = list(range(start, min(start + ctx.batch_size, num_rows)))
            yield arrow_to_tensors(perm.__getitems__(offsets))

    return Reader(make_iter, setup_s=setup)


@dataclass(frozen=True)
class Spec:
    key: str  # for --only
    name: str  # the row's label
    workers: int
    build: Callable[[Ctx], Reader]
    staged: bool = False  # reads the node-local stage (the first one of a round fills it)


def _dm(shuffle: str, workers: int, **kwargs: Any) -> Callable[[Ctx], Reader]:
    return lambda ctx: reader_datamodule(ctx, shuffle=shuffle, num_workers=workers, **kwargs)


SCAN = "scan"
SPECS: list[Spec] = [
    Spec(SCAN, "Lance sequential scan, pylance to_batches (reference)", 0, reader_scan),
    *(
        Spec(f"default-w{w}", "LanceDataModule default (`uniform`, staged)", w, _dm("uniform", w), staged=True)
        for w in (0, 2)
    ),
    Spec(
        "default-w0-no-read-ahead",
        "LanceDataModule default, `read_ahead=0` (each batch read when the loop asks)",
        0,
        _dm("uniform", 0, read_ahead=0),
        staged=True,
    ),
    Spec(
        "default-w2-forkserver",
        "LanceDataModule default, workers from the fork server (the default before they forked)",
        2,
        _dm("uniform", 2, multiprocessing_context="forkserver"),
        staged=True,
    ),
    *(
        Spec(f"off-w{w}", "LanceDataModule `uniform`, staging='off' (table takes)", w, _dm("uniform", w, staging="off"))
        for w in (0, 2)
    ),
    *(Spec(f"block-w{w}", "LanceDataModule `block`", w, _dm("block", w)) for w in (0, 2)),
    *(
        Spec(
            f"weighted-w{w}",
            "LanceDataModule `weight_column='label'` (weighted permutation, staged)",
            w,
            _dm("uniform", w, weight_column="label"),
            staged=True,
        )
        for w in (0, 2)
    ),
    Spec("none-w0", "LanceDataModule `none`", 0, _dm("none", 0)),
    *(
        Spec(
            f"inmem-w{w}",
            "LanceDataModule `in_memory=True` (staged, pre-faulted)",
            w,
            _dm("uniform", w, in_memory=True),
            staged=True,
        )
        for w in (0, 2)
    ),
    *(
        Spec(
            f"hf-w{w}",
            "HF datasets, memory-mapped Arrow, one gather a batch",
            w,
            lambda c, w=w: reader_hf(c, num_workers=w),
        )
        for w in (0, 2)
    ),
    Spec("perm-w0", "lancedb `Permutation`, shuffled", 0, reader_permutation),
]
BY_KEY = {s.key: s for s in SPECS}


def _rows(batch: Batch) -> int:
    return len(next(iter(batch.values())))


def _check(batch: Batch, columns: list[str]) -> None:
    assert sorted(batch) == sorted(columns), f"batch has columns {sorted(batch)}, expected {sorted(columns)}"
    for name, value in batch.items():
        assert isinstance(value, torch.Tensor), f"{name} is a {type(value).__name__}, not a tensor"
    assert batch["emb"].dtype == torch.float32 and batch["emb"].shape[1:] == (DIM,), batch["emb"].shape


def run_child(key: str, ctx: Ctx) -> dict[str, Any]:
    """Build one reader, read two epochs of ``ctx.batches`` batches, return the timings."""
    reader = BY_KEY[key].build(ctx)
    epochs = []
    try:
        for epoch in range(2):
            t0 = time.perf_counter()  # iter() and the first next(): worker start, prefetch, first group
            iterator = reader.make_iter(epoch)
            first = next(iterator)
            t1 = time.perf_counter()
            _check(first, ctx.columns)
            rows, batches = _rows(first), 1
            while batches < ctx.batches:
                batch = next(iterator, None)
                if batch is None:
                    break
                rows += _rows(batch)
                batches += 1
            t2 = time.perf_counter()
            if hasattr(iterator, "close"):
                iterator.close()
            del iterator, first
            epochs.append({"first_s": t1 - t0, "secs": t2 - t0, "rows": rows, "batches": batches})
        regions = reader.regions()
    finally:
        reader.close()
    return {"setup_s": reader.setup_s, "epochs": epochs, "regions": regions, **reader.extra}


# -- parent: one subprocess per reader, memory sampled from outside -------------------------


def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "RssAnon:", "RssFile:", "RssShmem:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0]) * 1024
    return out


class MemorySampler(threading.Thread):
    """Peak resident memory of a process, and of it plus all its descendants, every ``interval`` s:
    total RSS and its file-backed part (``RssFile``: memory-mapped table/stage pages)."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.stop = threading.Event()
        self.peak = dict.fromkeys(("main", "main_file", "main_anon", "all", "all_file", "all_anon"), 0)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                main = _status_kb(self.proc.pid)
                kids = self.proc.children(recursive=True)
            except (OSError, psutil.Error):
                return
            stats = [main]
            for child in kids:
                with contextlib.suppress(OSError):
                    stats.append(_status_kb(child.pid))
            anon = [s.get("RssAnon", 0) + s.get("RssShmem", 0) for s in stats]
            values = {
                "main": main.get("VmRSS", 0),
                "main_file": main.get("RssFile", 0),
                "main_anon": anon[0],
                "all": sum(s.get("VmRSS", 0) for s in stats),
                "all_file": sum(s.get("RssFile", 0) for s in stats),
                "all_anon": sum(anon),
            }
            for name, value in values.items():
                self.peak[name] = max(self.peak[name], value)
            self.stop.wait(self.interval)


def _child_main(key: str, ctx: Ctx, conn: Any, log_path: str) -> None:
    """Entry point of one reader's process; its stderr goes to ``log_path``."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 2)
    warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
    try:
        conn.send(("ok", run_child(key, ctx)))
    except BaseException:  # report anything, the parent prints it
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


_LAUNCHER: Any = None
_PRELOAD = ["numpy", "pyarrow", "torch", "lance", "lancedb", "lancedb.permutation", "lightning.pytorch"]
_PRELOAD += ["lance_lightning.datamodule", "psutil"]


def _launcher() -> Any:
    """A forkserver that has imported torch, lightning, lancedb and lance_lightning once (not HF
    ``datasets``: its reader imports it, in its setup).

    Each reader is a fresh process forked from it: its own memory, no import cost. The modules are
    named one by one: on Python 3.11 the default preload, ``"__main__"``, is silently skipped.
    DataLoader workers started inside a reader use their own, default forkserver, as in a user's
    script, so their start-up is measured as users pay it.
    """
    global _LAUNCHER
    if _LAUNCHER is None:
        os.environ["PYTHONWARNINGS"] = ",".join(
            filter(
                None,
                [
                    os.environ.get("PYTHONWARNINGS"),
                    "ignore:lancedb fork support:RuntimeWarning",
                    "ignore:lance is not fork-safe:UserWarning",
                ],
            )
        )
        _LAUNCHER = multiprocessing.get_context("forkserver")
        _LAUNCHER.set_forkserver_preload(_PRELOAD)
    return _LAUNCHER


def run_reader(spec: Spec, ctx: Ctx, timeout: float) -> dict[str, Any]:
    mp = _launcher()
    receiver, sender = mp.Pipe(duplex=False)
    with tempfile.NamedTemporaryFile(prefix="bench_reader_", suffix=".log", delete=False) as log:
        log_path = log.name
    t0 = time.perf_counter()
    proc = mp.Process(target=_child_main, args=(spec.key, ctx, sender, log_path), daemon=False)
    proc.start()
    sender.close()
    sampler = MemorySampler(proc.pid)
    sampler.start()
    status, payload = "error", "no result"
    try:
        if receiver.poll(timeout):
            status, payload = receiver.recv()
        else:
            payload = f"no result after {timeout} s"
    except EOFError:
        payload = "the reader's process died without a result"
    proc.join(30)
    if proc.is_alive():
        proc.terminate()
        proc.join()
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
        print(f"\n  !! {spec.key} failed:\n{tail}", file=sys.stderr)
        last = [line for line in detail.strip().splitlines() if line.strip()]
        return {"error": last[-1] if last else "failed", "wall_s": wall}
    payload.update({f"peak_{k}_mb": v / 2**20 for k, v in sampler.peak.items()}, wall_s=wall)
    return payload


# -- summary -------------------------------------------------------------------------------


def _rate(epoch: dict[str, Any]) -> float:
    return epoch["rows"] / epoch["secs"] if epoch["secs"] > 0 else 0.0


def _fmt_rate(x: float | None) -> str:
    if not x:
        return "–"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k"


def _med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratio(x: float | None, base: float | None) -> str:
    return "–" if not x or not base else f"{x / base:.2f}"


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians (and min-max) over a reader's rounds."""
    ok = [r for r in runs if "epochs" in r]
    out: dict[str, Any] = {"rounds": len(ok), "errors": [r["error"] for r in runs if "error" in r]}
    if not ok:
        return out
    steady = [_rate(r["epochs"][1]) for r in ok]
    out.update(
        rate=_med(steady),
        rate_min=min(steady),
        rate_max=max(steady),
        rate_epoch1=_med([_rate(r["epochs"][0]) for r in ok]),
        first_s=_med([r["epochs"][0]["first_s"] for r in ok]),
        first2_s=_med([r["epochs"][1]["first_s"] for r in ok]),
        setup_s=_med([r["setup_s"] for r in ok]),
        setup_max_s=max(r["setup_s"] for r in ok),
        rows=ok[0]["epochs"][1]["rows"],
        regions=ok[0].get("regions"),
        staged=ok[0].get("staged"),
        **{k: max(r[k] for r in ok) for k in ok[0] if k.startswith("peak_")},
    )
    fills = [r["fill_s"] for r in ok if "fill_s" in r]
    if fills:
        out.update(fill_s=_med(fills), fill_min_s=min(fills), fill_max_s=max(fills))
        out["fill_bytes"] = next(r["fill_bytes"] for r in ok if "fill_bytes" in r)
    scans = [r["split_scan_s"] for r in ok if "split_scan_s" in r]
    if scans:
        out.update(split_scan_s=_med(scans), split_rows=ok[0]["split_rows"])
    return out


def table_lines(summary: dict[str, dict[str, Any]]) -> list[str]:
    base = summary.get(SCAN, {}).get("rate")
    hf = {w: summary.get(f"hf-w{w}", {}).get("rate") for w in (0, 2)}
    lines = [
        "| reader | workers | rows/s (median) | min–max | × Lance scan | × HF datasets (same workers) "
        "| rows/s epoch 1 (start-up in) | first batch s (epoch 1 / 2) | setup s | peak RSS MB main "
        "(file-backed) | peak RSS MB main + workers (file-backed) | 4,096-row regions a batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for spec in SPECS:
        s = summary.get(spec.key)
        if s is None:
            continue
        if "rate" not in s:
            lines.append(f"| {spec.name} | {spec.workers} | failed: {'; '.join(s['errors'])[:200]} |" + " |" * 9)
            continue
        vs_hf = "" if spec.key.startswith(("hf", SCAN)) else _ratio(s["rate"], hf.get(spec.workers))
        regions = "" if s.get("regions") is None else f"{s['regions']:.0f}"
        lines.append(
            f"| {spec.name} | {spec.workers} | {_fmt_rate(s['rate'])} | {_fmt_rate(s['rate_min'])}–"
            f"{_fmt_rate(s['rate_max'])} | {_ratio(s['rate'], base)} | {vs_hf} | {_fmt_rate(s['rate_epoch1'])} | "
            f"{s['first_s']:.2f} / {s['first2_s']:.2f} | {s['setup_s']:.2f} | {s['peak_main_mb']:,.0f} "
            f"({s['peak_main_file_mb']:,.0f}) | {s['peak_all_mb']:,.0f} ({s['peak_all_file_mb']:,.0f}) | {regions} |"
        )
    return lines


def staging_lines(summary: dict[str, dict[str, Any]]) -> list[str]:
    scan = summary.get(SCAN, {})
    fills = [(k, s) for k, s in summary.items() if "fill_s" in s]
    if not fills or "split_scan_s" not in scan:
        return []
    key, fill = fills[0]
    return [
        f"Staging fill (by `{key}`, the first staged reader of each round; stage emptied before each round): "
        f"median {fill['fill_s']:.2f} s (min–max {fill['fill_min_s']:.2f}–{fill['fill_max_s']:.2f}) for "
        f"{fill['fill_bytes'] / 1e6:,.0f} MB; one sequential scan of the same {scan['split_rows']:,} rows "
        f"(pylance to_batches → tensors): {scan['split_scan_s']:.2f} s → {fill['fill_s'] / scan['split_scan_s']:.2f}× "
        "(target ≤ 1.5×). Setup of the other staged rows is opening + verifying (full CRC-32) the existing stage."
    ]


def target_lines(summary: dict[str, dict[str, Any]], rows: int) -> list[str]:
    def get(key: str, what: str = "rate") -> float | None:
        return summary.get(key, {}).get(what)

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("MET" if ok else "NOT MET")

    out = ["Targets (issue 14, item 5):"]
    scan = get(SCAN)
    for w in (0, 2):
        d, h = get(f"default-w{w}"), get(f"hf-w{w}")
        r = d / scan if d and scan else None
        out.append(
            f"- default loader w{w} ≥ 1.0× Lance scan: {_ratio(d, scan)} → {verdict(None if r is None else r >= 1.0)}"
        )
        r = d / h if d and h else None
        out.append(
            f"- default loader w{w} ≥ 3× HF datasets w{w}: {_ratio(d, h)} → {verdict(None if r is None else r >= 3.0)}"
        )
    scan_s = get(SCAN, "split_scan_s")
    fill = next((s["fill_s"] for s in summary.values() if "fill_s" in s), None)
    if fill and scan_s:
        out.append(f"- staging ≤ 1.5× one scan of the split: {fill / scan_s:.2f}× → {verdict(fill / scan_s <= 1.5)}")
    for w in (0, 2):
        main, total = get(f"default-w{w}", "peak_main_mb"), get(f"default-w{w}", "peak_all_mb")
        if main is None:
            continue
        main_file, anon = get(f"default-w{w}", "peak_main_file_mb"), get(f"default-w{w}", "peak_main_anon_mb")
        note = "" if rows >= 10_000_000 else " (the target is stated at 10M rows)"
        out.append(
            f"- default loader w{w} peak RSS ≤ 1 GB{note}: main process {main:,.0f} MB "
            f"({main_file:,.0f} MB of it file-backed, {anon:,.0f} MB anonymous + shared memory) → "
            f"{verdict(main <= 1024)}; main + workers {total:,.0f} MB"
        )
    return out


def _git_commit() -> str:
    here = str(Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "-uno"], capture_output=True, text=True)
    except OSError:
        return "?"
    return (head.stdout.strip() or "?") + ("+dirty" if dirty.stdout.strip() else "")


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _environment() -> str:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import lance

    return (
        f"{cpu}, {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; python "
        f"{platform.python_version()}, torch {torch.__version__}, lancedb {lancedb.__version__}, pylance "
        f"{lance.__version__}, pyarrow {pa.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/tmp/lance_lightning_bench", help="database directory (made if missing)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument(
        "--batches", type=int, default=400, help="batches an epoch for every reader (capped at the split)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians and min–max reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only", default=None, help="comma-separated key prefixes (the scan always runs): " + ", ".join(BY_KEY)
    )
    parser.add_argument("--json", default=None, help="also write every round's raw results to this file")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a reader is given up")
    parser.add_argument(
        "--note", default="", help="a line printed under the header (e.g. what else ran on the machine)"
    )
    parser.add_argument(
        "--cache-home",
        default=None,
        help="XDG_CACHE_HOME of the readers, where stages live (default: DIR/xdg-cache; e.g. /dev/shm/bench "
        "to fill a stage in memory, without this disk's write-back)",
    )
    args = parser.parse_args(argv)
    if psutil is None:
        parser.error("psutil is needed: pip install -e '.[bench]'")

    os.makedirs(args.dir, exist_ok=True)
    # stages live under --dir (not the user's cache), so the bench can empty them between rounds
    os.environ["XDG_CACHE_HOME"] = os.path.abspath(args.cache_home or os.path.join(args.dir, "xdg-cache"))
    stage_root = Path(os.environ["XDG_CACHE_HOME"]) / "lance-lightning" / "stages"
    commit, load_before = _git_commit(), _load()
    name, made = ensure_table(args.dir, "throughput", args.rows, args.seed)
    print(f"table {name}: " + (f"made in {made:.1f} s" if made else "reused"), file=sys.stderr)
    wanted = [w.strip() for w in args.only.split(",")] if args.only else None
    specs = [s for s in SPECS if s.key == SCAN or not wanted or any(s.key.startswith(w) for w in wanted)]
    hf_path, hf_s, hf_note = None, 0.0, ""
    if any(s.key.startswith("hf") for s in specs):
        hf_path, hf_s, hf_note = ensure_hf_copy(args.dir, name, args.rows)
        print(f"HF copy: {hf_path} ({hf_note}" + (f", made in {hf_s:.1f} s)" if hf_s else ", reused)"), file=sys.stderr)
    split_batches = -(-train_rows(args.rows) // args.batch_size)
    batches = min(args.batches, split_batches)
    ctx = Ctx(
        os.path.abspath(args.dir),
        name,
        args.rows,
        args.batch_size,
        batches,
        args.seed,
        hf_path=str(hf_path) if hf_path else None,
    )

    raw: dict[str, list[dict[str, Any]]] = {s.key: [] for s in specs}
    for round_ in range(args.rounds):
        shutil.rmtree(stage_root, ignore_errors=True)  # the round's first staged reader fills it
        for spec in specs:
            print(f"  round {round_ + 1}: {spec.key} ...", file=sys.stderr, end="", flush=True)
            result = run_reader(spec, ctx, args.timeout)
            raw[spec.key].append(result)
            rate = _fmt_rate(_rate(result["epochs"][1])) if "epochs" in result else "failed"
            print(f" {rate} rows/s, {result.get('peak_main_mb', 0):.0f} MB, {result['wall_s']:.1f} s", file=sys.stderr)
    load_after = _load()
    summary = {key: aggregate(runs) for key, runs in raw.items()}

    out = [
        f"bench_throughput.py at commit {commit}",
        _environment(),
        f"load average (1, 5, 15 min) before: {load_before}; after: {load_after}. "
        + (args.note or "The machine is shared with other jobs: ratios from one run hold to about ±25%."),
        f"table {name}: {args.rows:,} rows; emb f32[128] + label int64 (520 B a row); batch {args.batch_size}; "
        f"every reader reads {batches} batches ({batches * args.batch_size:,} rows) an epoch, two epochs a process, "
        f"{args.rounds} interleaved round(s); datamodule rows read the train split (first {TRAIN_FRACTION:.0%}, "
        f"{train_rows(args.rows):,} rows), HF a copy of it"
        + (f" ({hf_note}, made in {hf_s:.1f} s)" if hf_s else (f" ({hf_note})" if hf_note else "")),
        "rows/s = rows of epoch 2 / (its first next() → its last batch), persistent workers; epoch 1 the same "
        "with worker start-up; peak RSS over the whole process (setup included), max over rounds",
        "",
        *table_lines(summary),
        "",
        *staging_lines(summary),
        "",
        *target_lines(summary, args.rows),
    ]
    print("\n".join(out))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"header": out[:5], "args": vars(args), "summary": summary, "rounds": raw}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
