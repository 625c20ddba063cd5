"""Heavy rows: a per-row decode in the loader (issue 33). JPEG crops (or variable-length token
lists) read by lance-lightning and its peers, every reader decoding with the same function.

Run by hand from the repository root, in a venv with the ``bench`` extra (``litdata`` optional)::

    python benchmarks/bench_images.py                               # 50,000 images, 3 rounds, 2 workers
    python benchmarks/bench_images.py --rows 5000 --rounds 1        # smoke check (~2 min)
    python benchmarks/bench_images.py --workload tokens             # list<int32> rows, padded a batch
    python benchmarks/bench_images.py --json /tmp/images.json --record docs/performance/records/images_50k.json
    python benchmarks/bench_images.py --summarize /tmp/images.json --record ...   # table/record from saved results

The workload is made locally once and cached in ``--dir`` (default ``/tmp/lance_lightning_bench_images``):
``--rows`` random 128x128 crops (random horizontal and vertical flips) of the two photos scikit-learn
ships (``load_sample_images``: china.jpg, flower.jpg), re-encoded as JPEG (PIL, quality 90); label =
source photo x 4x4 crop cell (32 classes). Written as a lancedb table (``id`` int64, ``image``
binary, ``label`` int64), as files (one ``.jpg`` a row + ``labels.npy``), as a HF ``datasets``
directory (``save_to_disk``) and, when ``litdata`` imports, as a LitData optimized dataset.

Every reader is a torch ``DataLoader`` with ``--workers`` workers (2), batch ``--batch-size`` (256),
shuffled, and decodes in its workers with ``benchmarks/image_decode.py`` (PIL open → RGB → uint8
(3, 128, 128), stacked). Readers (``--only``):

* ``lance``: ``LanceDataModule(uri, "images", columns=["image", "label"], splits={"train": 1.0},
  batch_size=256, num_workers=W, transform="image_decode.decode_batch")``, every other setting its
  default; ``setup("fit")``, ``train_dataloader()``, ``samplers["train"].set_epoch(0)``.
* ``decode``: the decode limit: W processes (fork) decoding the in-memory JPEG bytes in batches,
  nothing else (images/s in all); ``decode1``: the same with one process.
* ``files``: map-style dataset over the ``.jpg`` files, ``DataLoader(shuffle=True, collate_fn=decode)``.
* ``hf``: ``datasets.load_from_disk``, ``DataLoader(ds, sampler=BatchSampler(RandomSampler(ds)),
  batch_size=None)``: one ``ds[indices]`` a batch, decoded in the collate function.
* ``litdata``: ``StreamingDataset(shuffle=True)`` + ``StreamingDataLoader``.
* ``perm``: lancedb ``Permutation`` (shuffled by its builder) in a ``DataLoader`` with forkserver
  workers (it crashes with fork workers), ``__getitems__`` a batch.

Like with like: each (reader, round) runs in a fresh subprocess that first imports numpy, torch,
PIL, lightning, lancedb and lance_lightning (what a training script holds), rounds interleaved;
one epoch of every row. Per run: ``setup s`` (constructor to a ready loader; for ``lance`` the stage
fill: the stage root ``--dir/xdg-cache`` is emptied at the start of every round), ``first batch s``
(``iter()`` to the first batch), images/s (rows / ``iter()`` to the last batch: worker start-up and
the first batch are inside, as in ``bench_throughput.py``'s first epoch; a loader whose ``iter()``
starts its workers (fork server) and one whose first ``next()`` waits for them are timed alike),
images/s after the first batch (the rest of the epoch: a loader that hands batches over in groups
decoded the next ones while the first was awaited, so this overstates its pace), the gaps the
consumer sees between batches (mean, p50, p99), the main process's peak RSS (``VmHWM`` of the
subprocess at the end: imports, setup and the epoch) and the DataLoader workers' peak total RSS
(``psutil`` sum over the descendants every 10 ms; forked pages shared with the parent count in
each). The table gives medians over rounds (min-max for images/s; ``x dec``: each run over the same
round's decode limit, then the median, since the load drifts between rounds) and the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIDE = 128
GRID = 4  # crop cells a side: label = source photo * GRID**2 + cell
TABLE = "images"
TOKEN_TABLE = "tokens"
TOKEN_RANGE = (32, 512)
VOCAB = 32000


# -- the workloads, made once --------------------------------------------------------------------


def _image_chunks(rows: int, seed: int, chunk: int = 4096) -> Iterable[tuple[list[bytes], list[int]]]:
    """``rows`` JPEG crops and their labels, ``chunk`` at a time (deterministic in ``seed``)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    for start in range(0, rows, chunk):
        images, labels = [], []
        for _ in range(min(chunk, rows - start)):
            src = int(rng.integers(len(photos)))
            photo = photos[src]
            h, w = photo.shape[0] - SIDE, photo.shape[1] - SIDE
            y, x = int(rng.integers(h + 1)), int(rng.integers(w + 1))
            crop = photo[y : y + SIDE, x : x + SIDE]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            if rng.random() < 0.5:
                crop = crop[::-1]
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(crop)).save(buf, format="JPEG", quality=90)
            images.append(buf.getvalue())
            labels.append(
                src * GRID * GRID + min(y * GRID // (h + 1), GRID - 1) * GRID + min(x * GRID // (w + 1), GRID - 1)
            )
        yield images, labels


def _token_chunks(rows: int, seed: int, chunk: int = 8192) -> Iterable[tuple[list[Any], list[int]]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        lengths = rng.integers(TOKEN_RANGE[0], TOKEN_RANGE[1] + 1, n)
        values = rng.integers(0, VOCAB, int(lengths.sum()), dtype=np.int32)
        yield np.split(values, np.cumsum(lengths)[:-1]), rng.integers(0, 32, n).tolist()


def ensure_workload(base: Path, workload: str, rows: int, seed: int = 0) -> tuple[Path, dict[str, Any]]:
    """The workload's directory (made once: ``ready.json`` marks it complete) and what it holds."""
    import lancedb
    import numpy as np
    import pyarrow as pa

    path = base / f"{workload}_{rows}"
    ready = path / "ready.json"
    if ready.exists():
        return path, json.loads(ready.read_text())
    shutil.rmtree(path, ignore_errors=True)
    (path / "files").mkdir(parents=True)
    t0 = time.perf_counter()
    column, table = ("image", TABLE) if workload == "images" else ("tokens", TOKEN_TABLE)
    value_type = pa.binary() if workload == "images" else pa.list_(pa.int32())
    schema = pa.schema([("id", pa.int64()), (column, value_type), ("label", pa.int64())])
    labels_all: list[int] = []
    payload_bytes = 0

    def batches() -> Iterable[pa.RecordBatch]:
        nonlocal payload_bytes
        chunks = _image_chunks(rows, seed) if workload == "images" else _token_chunks(rows, seed)
        for values, labels in chunks:
            first = len(labels_all)
            for i, value in enumerate(values):
                if workload == "images":
                    (path / "files" / f"{first + i:07d}.jpg").write_bytes(value)
                    payload_bytes += len(value)
                else:
                    np.save(path / "files" / f"{first + i:07d}.npy", value)
                    payload_bytes += value.nbytes
            labels_all.extend(labels)
            ids = pa.array(np.arange(first, first + len(labels), dtype=np.int64))
            array = pa.array(values, type=value_type) if workload == "images" else pa.array(values, type=value_type)
            yield pa.RecordBatch.from_arrays([ids, array, pa.array(labels, pa.int64())], schema=schema)

    db = lancedb.connect(str(path / "db"))
    db.create_table(table, pa.RecordBatchReader.from_batches(schema, batches()))
    np.save(path / "files" / "labels.npy", np.asarray(labels_all, dtype=np.int64))
    info: dict[str, Any] = {"workload": workload, "rows": rows, "seed": seed, "payload_bytes": payload_bytes}
    info["hf"] = _make_hf(path, table, column)
    info["litdata"] = _make_litdata(path, workload) if workload == "images" else "not made for tokens"
    info["make_s"] = round(time.perf_counter() - t0, 1)
    ready.write_text(json.dumps(info, indent=1))
    return path, info


def _make_hf(path: Path, table: str, column: str) -> str:
    """The table's ``image``/``tokens`` + ``label`` as a HF ``datasets`` directory, via an Arrow stream."""
    try:
        import datasets
    except ImportError:
        return "datasets not installed: pip install -e '.[bench]'"
    import lance
    import pyarrow as pa

    ds = lance.dataset(str(path / "db" / f"{table}.lance"))
    cols = [column, "label"]
    stream = path / "hf.arrow"
    schema = pa.schema([ds.schema.field(c) for c in cols])
    with pa.OSFile(str(stream), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in ds.to_batches(columns=cols, batch_size=4096):
            writer.write_batch(batch)
    datasets.disable_progress_bars()
    datasets.Dataset.from_file(str(stream)).save_to_disk(str(path / "hf"))
    stream.unlink()
    return f"datasets {datasets.__version__}"


def _litdata_item(index: int, files: str = "") -> dict[str, Any]:
    import numpy as np

    labels = np.load(os.path.join(files, "labels.npy"), mmap_mode="r")
    with open(os.path.join(files, f"{index:07d}.jpg"), "rb") as f:
        return {"image": f.read(), "label": int(labels[index])}


def _make_litdata(path: Path, workload: str) -> str:
    """A LitData optimized dataset of the same rows (raw JPEG bytes + label), when litdata imports."""
    try:
        import functools

        import litdata
    except Exception as err:  # ImportError, or a litdata that breaks on this torch
        return f"litdata unavailable: {type(err).__name__}: {err}"[:300]
    try:
        rows = len(list((path / "files").glob("*.jpg")))
        litdata.optimize(
            fn=functools.partial(_litdata_item, files=str(path / "files")),
            inputs=list(range(rows)),
            output_dir=str(path / "litdata"),
            chunk_bytes="64MB",
            num_workers=1,
            mode="overwrite",
        )
    except Exception as err:
        shutil.rmtree(path / "litdata", ignore_errors=True)
        return f"litdata optimize failed: {type(err).__name__}: {err}"[:300]
    return f"litdata {litdata.__version__}"


# -- the child: one reader, one epoch, in its own process ----------------------------------------


@dataclass
class Ctx:
    path: str  # the workload directory
    workload: str
    rows: int
    batch_size: int
    workers: int
    seed: int
    step_ms: float = 0.0  # CPU the training process spends on each batch (a busy loop: a step's own work)


def _column(ctx: Ctx) -> str:
    return "image" if ctx.workload == "images" else "tokens"


def _loader_kwargs(ctx: Ctx, **extra: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"num_workers": ctx.workers, **extra}
    if ctx.workers:
        kwargs["persistent_workers"] = False
    return kwargs


def build_lance(ctx: Ctx) -> Iterable[Any]:
    from lance_lightning.datamodule import LanceDataModule

    images = ctx.workload == "images"
    dm = LanceDataModule(
        str(Path(ctx.path) / "db"),
        TABLE if images else TOKEN_TABLE,
        columns=[_column(ctx), "label"],
        splits={"train": 1.0},
        batch_size=ctx.batch_size,
        num_workers=ctx.workers,
        seed=ctx.seed,
        transform="image_decode.decode_batch" if images else "image_decode.pad_batch",
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    dm.samplers["train"].set_epoch(0)
    return loader


class FileRows:
    """Map-style: row ``i`` is ``files/<i>.jpg`` read as bytes (or ``<i>.npy`` loaded), with its label."""

    def __init__(self, files: Path, workload: str) -> None:
        import numpy as np

        self.files, self.images = files, workload == "images"
        self.labels = np.load(files / "labels.npy")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import numpy as np

        if self.images:
            return (self.files / f"{i:07d}.jpg").read_bytes(), int(self.labels[i])
        return np.load(self.files / f"{i:07d}.npy"), int(self.labels[i])


def build_files(ctx: Ctx) -> Iterable[Any]:
    import image_decode
    import torch
    from torch.utils.data import DataLoader

    ds = FileRows(Path(ctx.path) / "files", ctx.workload)
    collate = image_decode.decode_pairs if ctx.workload == "images" else image_decode.pad_pairs
    return DataLoader(
        ds,
        batch_size=ctx.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(ctx.seed),
        collate_fn=collate,
        **_loader_kwargs(ctx),
    )


def build_hf(ctx: Ctx) -> Iterable[Any]:
    import datasets
    import image_decode
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler

    datasets.disable_progress_bars()
    ds = datasets.load_from_disk(str(Path(ctx.path) / "hf"))
    sampler = BatchSampler(RandomSampler(ds, generator=torch.Generator().manual_seed(ctx.seed)), ctx.batch_size, False)
    collate = image_decode.decode_columns if ctx.workload == "images" else image_decode.pad_columns
    # batch_size=None + sampler=BatchSampler: ds[indices] (one gather a batch), then the collate decodes.
    return DataLoader(ds, sampler=sampler, batch_size=None, collate_fn=collate, **_loader_kwargs(ctx))


def build_litdata(ctx: Ctx) -> Iterable[Any]:
    import image_decode
    import litdata

    ds = litdata.StreamingDataset(str(Path(ctx.path) / "litdata"), shuffle=True, seed=ctx.seed)
    return litdata.StreamingDataLoader(
        ds, batch_size=ctx.batch_size, collate_fn=_LitCollate(image_decode.decode_columns), **_loader_kwargs(ctx)
    )


class _LitCollate:
    """LitData hands a list of ``{"image": bytes, "label": int}``: to columns, then the shared decode."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, items: list[dict[str, Any]]) -> Any:
        return self.fn({"image": [i["image"] for i in items], "label": [i["label"] for i in items]})


def build_perm(ctx: Ctx) -> Iterable[Any]:
    import image_decode
    import lancedb
    from lancedb.permutation import Permutation, permutation_builder
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

    table = lancedb.connect(str(Path(ctx.path) / "db")).open_table(TABLE)
    perm_table = permutation_builder(table).shuffle(seed=ctx.seed).execute()
    perm = Permutation.from_tables(table, perm_table).select_columns(["image", "label"]).with_format("arrow")
    # batch_sampler=: the loader calls perm.__getitems__(indices) (one take a batch), then the collate decodes.
    sampler = BatchSampler(SequentialSampler(range(len(perm))), ctx.batch_size, False)
    return DataLoader(
        perm,
        batch_sampler=sampler,
        collate_fn=image_decode.decode_columns,
        **_loader_kwargs(ctx, multiprocessing_context="forkserver" if ctx.workers else None),
    )


def _decode_worker(share: list[bytes], batch: int, barrier: Any, out: Any, images: bool) -> None:
    import image_decode

    barrier.wait()
    start = time.perf_counter()
    fn = image_decode.decode_images if images else (lambda rows: image_decode.pad_tokens(rows)[0])
    for i in range(0, len(share), batch):
        fn(share[i : i + batch])
    out.put((start, time.perf_counter()))


def run_decode_limit(ctx: Ctx, processes: int) -> dict[str, Any]:
    """W forked processes decoding the in-memory rows, nothing else: rows / (first start to last end)."""
    import lancedb

    table = lancedb.connect(str(Path(ctx.path) / "db")).open_table(TABLE if ctx.workload == "images" else TOKEN_TABLE)
    column = table.to_arrow().column(_column(ctx)).combine_chunks()
    if ctx.workload == "images":
        values = column.to_pylist()
    else:  # int32 arrays a row, as the other readers hand them to the padding
        flat, offsets = column.values.to_numpy(), column.offsets.to_numpy()
        values = [flat[offsets[i] : offsets[i + 1]] for i in range(len(column))]
    mp = multiprocessing.get_context("fork")
    barrier, out = mp.Barrier(processes), mp.Queue()
    shares = [values[i::processes] for i in range(processes)]
    procs = [
        mp.Process(target=_decode_worker, args=(s, ctx.batch_size, barrier, out, ctx.workload == "images"))
        for s in shares
    ]
    for p in procs:
        p.start()
    spans = [out.get() for _ in procs]
    for p in procs:
        p.join()
    seconds = max(e for _, e in spans) - min(s for s, _ in spans)
    return {"rows": len(values), "images_per_s": len(values) / seconds, "seconds": seconds}


BUILDERS: dict[str, Callable[[Ctx], Iterable[Any]]] = {
    "lance": build_lance,
    "files": build_files,
    "hf": build_hf,
    "litdata": build_litdata,
    "perm": build_perm,
}


def _status_kb(pid: int | str, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class WorkerMemory:
    """Peak total RSS of this process's descendants (the DataLoader workers), sampled every 10 ms."""

    def __init__(self, interval: float = 0.01) -> None:
        import psutil

        self.me, self.interval, self.peak = psutil.Process(), interval, 0
        self.reading = False  # set once the loader is built: from then on the main process is sampled too
        self.main_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            total = 0
            with contextlib.suppress(Exception):
                for child in self.me.children(recursive=True):
                    with contextlib.suppress(Exception):
                        total += child.memory_info().rss
            self.peak = max(self.peak, total)
            if self.reading:
                with contextlib.suppress(Exception):
                    self.main_peak = max(self.main_peak, self.me.memory_info().rss)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _busy(seconds: float) -> None:
    """Spend ``seconds`` of this process's CPU, as a training step's own work would."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def child(key: str, ctx: Ctx) -> dict[str, Any]:
    """One reader's epoch, timed; the result as a dict (printed as the last line of stdout)."""
    import numpy as np

    rss_start = _status_kb("self", "VmRSS") / 1024
    if key.startswith("decode"):
        processes = 1 if key == "decode1" else ctx.workers
        got = run_decode_limit(ctx, processes)
        return {**got, "peak_rss_mb": _status_kb("self", "VmHWM") / 1024, "rss_start_mb": rss_start}
    with WorkerMemory() as workers:
        t0 = time.perf_counter()
        loader = BUILDERS[key](ctx)
        setup = time.perf_counter() - t0
        workers.reading = True
        t_iter = time.perf_counter()
        it = iter(loader)
        t_first_next = time.perf_counter()
        first = next(it)
        stamps = [time.perf_counter()]
        rows, label_sum = len(first["label"]), int(first["label"].sum())
        for batch in it:
            stamps.append(time.perf_counter())
            if ctx.step_ms:
                _busy(ctx.step_ms / 1e3)
            rows += len(batch["label"])
            label_sum += int(batch["label"].sum())  # every row once: the labels add up to the table's
        del it
    column = first["image" if ctx.workload == "images" else "tokens"]
    if ctx.workload == "images":
        assert column.dtype.is_floating_point is False and tuple(column.shape[1:]) == (3, SIDE, SIDE), column.shape
    expected = int(np.load(Path(ctx.path) / "files" / "labels.npy").sum())
    if rows != ctx.rows or label_sum != expected:
        raise SystemExit(f"{key}: read {rows} rows of {ctx.rows}, labels summing to {label_sum}, not {expected}")
    gaps = np.diff(stamps) * 1e3
    return {
        "rows": rows,
        "setup_s": setup,
        "first_batch_s": stamps[0] - t_iter,
        "images_per_s": rows / (stamps[-1] - t_iter),
        "iter_s": t_first_next - t_iter,
        "images_per_s_after_first": (rows - len(first["label"])) / (stamps[-1] - stamps[0])
        if len(stamps) > 1
        else None,
        "gap_mean_ms": float(gaps.mean()) if len(gaps) else None,
        "gap_p50_ms": float(np.percentile(gaps, 50)) if len(gaps) else None,
        "gap_p99_ms": float(np.percentile(gaps, 99)) if len(gaps) else None,
        "peak_rss_mb": _status_kb("self", "VmHWM") / 1024,
        "epoch_rss_mb": workers.main_peak / 2**20,
        "rss_start_mb": rss_start,
        "workers_peak_rss_mb": workers.peak / 2**20,
        "batch_shape": list(column.shape),
    }


def child_main(key: str, ctx_json: str) -> None:
    # What a training script holds before its loader starts, the same in every reader's process.
    import lancedb  # noqa: F401
    import lightning.pytorch  # noqa: F401
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401
    import torch  # noqa: F401

    import lance_lightning  # noqa: F401

    ctx = Ctx(**json.loads(ctx_json))
    print(json.dumps(child(key, ctx)))


# -- the parent: workload, rounds, table, record -------------------------------------------------


@dataclass(frozen=True)
class Spec:
    key: str
    name: str
    short: str


SPECS = [
    Spec("lance", "lance-lightning LanceDataModule default + transform", "lance-lightning default"),
    Spec("decode", "decode limit: W processes decoding in-memory bytes, nothing else", "decode limit"),
    Spec("decode1", "decode limit, 1 process", "decode limit, 1 process"),
    Spec("files", "files on disk + DataLoader (map-style, shuffle=True)", "files + DataLoader"),
    Spec("hf", "HF datasets (load_from_disk, one ds[indices] a batch)", "HF datasets"),
    Spec("litdata", "LitData StreamingDataset + StreamingDataLoader", "LitData"),
    Spec("perm", "lancedb Permutation + DataLoader (forkserver workers)", "lancedb Permutation"),
]
TOKEN_READERS = ("lance", "decode", "decode1", "files", "hf")


def commit_of(path: Path) -> str:
    out = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    commit = out.stdout.strip() or "(not a git checkout)"
    dirty = subprocess.run(
        ["git", "-C", str(path), "status", "--porcelain", "lance_lightning"], capture_output=True, text=True
    ).stdout.strip()
    return commit + ("+uncommitted lance_lightning changes" if dirty else "")


def machine() -> str:
    import lancedb
    import psutil
    import torch

    try:
        import lance

        pylance = f", pylance {lance.__version__}"
    except ImportError:
        pylance = ""
    cpu = platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return (
        f"{os.cpu_count()} cores ({cpu}), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
        f"torch {torch.__version__}, lancedb {lancedb.__version__}{pylance}"
    )


def run_child(key: str, ctx: Ctx, env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", key, json.dumps(asdict(ctx))]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    if out.returncode:
        return {"error": (out.stderr.strip() or out.stdout.strip())[-1500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _named(spec: Spec, workload: str, workers: int) -> tuple[str, str]:
    """The row's label and short label: for tokens the "decode" is the padding."""
    if spec.key == "decode":
        spec = Spec(
            spec.key, spec.name.replace("W processes", f"{workers} processes"), f"decode limit, {workers} processes"
        )
    if workload == "tokens" and spec.key.startswith("decode"):
        return spec.name.replace("decoding in-memory bytes", "padding in-memory rows").replace("decode", "padding"), (
            spec.short.replace("decode", "padding")
        )
    return spec.name, spec.short


def summarize(results: dict[str, list[dict[str, Any]]], workers: int, workload: str) -> list[dict[str, Any]]:
    """Medians over rounds, a row a reader; ``x_decode``: the median over rounds of the reader's
    images/s over the same round's W-process decode limit."""
    rows = []
    # x decode limit: each run against its own round's decode limit (the load drifts between rounds), median
    limit = {r["round"]: r["images_per_s"] for r in results.get("decode", []) if "error" not in r}
    for spec in SPECS:
        runs = [r for r in results.get(spec.key, []) if "error" not in r]
        name, short = _named(spec, workload, workers)
        if not runs:
            if spec.key in results:
                rows.append({"key": spec.key, "reader": name, "error": results[spec.key][-1]["error"]})
            continue
        rate = _median([r["images_per_s"] for r in runs])
        processes = 1 if spec.key == "decode1" else workers
        row = {
            "key": spec.key,
            "reader": name,
            "short": short,
            "workers": processes,
            "images_per_s": rate,
            "images_per_s_min": min(r["images_per_s"] for r in runs),
            "images_per_s_max": max(r["images_per_s"] for r in runs),
            "x_decode": _median([r["images_per_s"] / limit[r["round"]] for r in runs if r["round"] in limit]),
            "rounds": len(runs),
        }
        for name in (
            "images_per_s_after_first",
            "setup_s",
            "first_batch_s",
            "gap_mean_ms",
            "gap_p50_ms",
            "gap_p99_ms",
            "rss_start_mb",
        ):
            row[name] = _median([r.get(name) for r in runs])
        # memory: the largest over rounds
        row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
        row["peak_rss_mb_min"] = min(r["peak_rss_mb"] for r in runs)
        row["workers_peak_rss_mb"] = max((r.get("workers_peak_rss_mb") or 0) for r in runs) or None
        row["epoch_rss_mb"] = max((r.get("epoch_rss_mb") or 0) for r in runs) or None
        rows.append(row)
    return rows


def _fmt(v: float | None, spec: str) -> str:
    width = spec.split(",")[0].split(".")[0]
    return ("-".rjust(int(width)) if width.isdigit() else "-") if v is None else format(v, spec)


def print_table(rows: list[dict[str, Any]], unit: str) -> None:
    head = (
        f"{'reader':58} {unit + '/s':>9} {'min-max':>19} {'x dec':>6} {'after 1st':>9} {'setup s':>7} {'1st s':>6} "
        f"{'gap p50':>7} {'p99 ms':>7} {'RSS MB':>9} {'epoch':>6} {'wrk MB':>7}"
    )
    print(head)
    for r in rows:
        if "error" in r:
            print(f"{r['reader'][:58]:58} failed: {r['error'].splitlines()[-1][:200]}")
            continue
        print(
            f"{r['reader'][:58]:58} {r['images_per_s']:9,.0f} "
            f"{r['images_per_s_min']:9,.0f}-{r['images_per_s_max']:<9,.0f} {_fmt(r['x_decode'], '6.2f')} "
            f"{_fmt(r['images_per_s_after_first'], '9,.0f')} "
            f"{_fmt(r['setup_s'], '7.2f')} {_fmt(r['first_batch_s'], '6.2f')} {_fmt(r['gap_p50_ms'], '7.1f')} "
            f"{_fmt(r['gap_p99_ms'], '7.1f')} {r['peak_rss_mb_min']:4.0f}-{r['peak_rss_mb']:<4.0f} "
            f"{_fmt(r.get('epoch_rss_mb'), '6.0f')} {_fmt(r['workers_peak_rss_mb'], '7.0f')}"
        )


def make_record(
    args: argparse.Namespace, rows: list[dict[str, Any]], info: dict[str, Any], extra: dict[str, Any]
) -> dict:
    """The docs record (``docs/performance/records/*.json``, drawn by ``make_figures.py``)."""
    unit = "images" if args.workload == "images" else "rows"
    command = (
        f"python benchmarks/bench_images.py --workload {args.workload} --rows {args.rows} "
        f"--rounds {args.rounds} --workers {args.workers}"
    )
    columns = [
        {"key": "reader", "label": "reader", "format": "text"},
        {"key": "workers", "label": "workers / processes", "format": "int"},
        {"key": "images_per_s", "label": f"{unit}/s (median)", "format": "rate"},
        {
            "key": "x_decode",
            "label": f"× {'decode' if unit == 'images' else 'padding'} limit ({args.workers} processes)",
            "format": "ratio",
        },
        {"key": "images_per_s_after_first", "label": f"{unit}/s after the first batch", "format": "rate"},
        {"key": "first_batch_s", "label": "first batch s", "format": "seconds"},
        {"key": "setup_s", "label": "setup s", "format": "seconds"},
        {"key": "gap_p50_ms", "label": "gap p50 ms", "format": "float1"},
        {"key": "gap_p99_ms", "label": "gap p99 ms", "format": "float1"},
        {"key": "peak_rss_mb", "label": "peak RSS MB, main process", "format": "int"},
        {"key": "epoch_rss_mb", "label": "main process RSS MB while reading", "format": "int"},
        {"key": "workers_peak_rss_mb", "label": "workers' peak RSS MB", "format": "int"},
    ]
    out_rows = []
    for r in rows:
        if "error" in r:
            continue
        row = {c["key"]: r.get(c["key"]) for c in columns}
        for k in ("peak_rss_mb", "epoch_rss_mb", "workers_peak_rss_mb"):
            # the decode limit's process holds every row's bytes: its memory is no loader's
            row[k] = round(row[k]) if row[k] is not None and not r["key"].startswith("decode") else None
        row["short"] = r["short"]
        row["images_per_s_min"], row["images_per_s_max"] = r["images_per_s_min"], r["images_per_s_max"]
        out_rows.append(row)
    what = (
        f"{args.rows:,} JPEG crops 128x128 of scikit-learn's two sample photos (quality 90, "
        f"{info['payload_bytes'] / args.rows / 1024:.1f} KiB a row)"
        if args.workload == "images"
        else f"{args.rows:,} rows of list<int32> tokens, {TOKEN_RANGE[0]}-{TOKEN_RANGE[1]} a row, padded a batch"
    )
    return {
        "title": f"Heavy rows: {args.workload}, decoded in the loader",
        "command": command,
        "commit": extra["commit"],
        "published": {"commit": "", "date": datetime.date.today().isoformat()},
        "machine": (
            f"{extra['machine']}, load {extra['load_before']:.2f} before the run, {extra['load_after']:.2f} after"
        ),
        "setup": (
            f"{what}; batch {args.batch_size}, {args.workers} DataLoader workers, the same decode function "
            f"in every reader's workers (benchmarks/image_decode.py); each reader in a fresh process, "
            f"{args.rounds} rounds interleaved; {unit}/s over one epoch from iter() (worker start and first "
            "batch included) to the last batch, and after the first batch (medians); memory: the main process's "
            "VmHWM (largest over rounds) and the workers' summed RSS sampled every 10 ms"
        ),
        "columns": columns,
        "rows": out_rows,
        "notes": extra["notes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["images", "tokens"], default="images")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/lance_lightning_bench_images"))
    parser.add_argument("--only", default="", help="comma-separated reader keys: " + ",".join(s.key for s in SPECS))
    parser.add_argument("--json", type=Path, help="every round's raw results and the summary")
    parser.add_argument("--record", type=Path, help="write the docs record (docs/performance/records/<name>.json)")
    parser.add_argument("--note", action="append", default=[], help="a note for the record (repeatable)")
    parser.add_argument(
        "--keep-stage",
        action="store_true",
        help="keep the lance reader's stage between rounds (the first round fills it; later rounds reuse it, "
        "as every run after the first does): the training process's memory without the fill",
    )
    parser.add_argument("--summarize", type=Path, help="run nothing: the table (and --record) from a --json file")
    args = parser.parse_args()
    if args.summarize:
        return resummarize(args)

    keys = [s.key for s in SPECS if s.key in (TOKEN_READERS if args.workload == "tokens" else [x.key for x in SPECS])]
    if args.only:
        wanted = args.only.split(",")
        unknown = set(wanted) - set(keys)
        if unknown:
            raise SystemExit(
                f"--only: unknown reader(s) {sorted(unknown)} for --workload {args.workload}; valid: {keys}"
            )
        keys = [k for k in keys if k in wanted]
    if args.workers < 1:
        raise SystemExit(f"--workers must be >= 1 (the decode limit is W processes), got {args.workers}")

    args.dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    path, info = ensure_workload(args.dir, args.workload, args.rows, args.seed)
    made = time.perf_counter() - t0
    print(f"workload {path} ({f'made in {made:.0f} s' if made > 1 else 'reused'}): {json.dumps(info)}")
    if "litdata" in keys and not (path / "litdata").exists():
        print(f"litdata row skipped: {info.get('litdata')}")
        keys.remove("litdata")
    if "hf" in keys and not (path / "hf").exists():
        print(f"hf row skipped: {info.get('hf')}")
        keys.remove("hf")

    commit = commit_of(ROOT)
    load_before = os.getloadavg()[0]
    print(f"commit {commit}; {machine()}; load {os.getloadavg()}")
    cache = args.dir / "xdg-cache"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "XDG_CACHE_HOME": str(cache),
    }
    ctx = Ctx(str(path), args.workload, args.rows, args.batch_size, args.workers, args.seed)
    results: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(args.rounds):
        if not args.keep_stage or round_ == 0:
            shutil.rmtree(cache, ignore_errors=True)  # the lance reader's stage is filled in its setup every round
        for key in keys:
            got = run_child(key, ctx, env)
            got["round"] = round_
            results.setdefault(key, []).append(got)
            shown = (
                "failed: " + got["error"].splitlines()[-1][:200] if "error" in got else f"{got['images_per_s']:,.0f}/s"
            )
            print(f"  round {round_ + 1} {key:8} {shown}", flush=True)
    load_after = os.getloadavg()[0]
    rows = summarize(results, args.workers, args.workload)
    print()
    print_table(rows, "img" if args.workload == "images" else "row")
    print(
        f"load before {load_before:.2f}, after {os.getloadavg()}; RSS MB: main process VmHWM, min-max over rounds;",
        "epoch: its largest RSS while reading (after setup)",
    )
    notes = list(args.note)
    for r in rows:
        if "error" in r:
            notes.append(f"{r['reader']}: failed ({r['error'].splitlines()[-1][:200]})")
    for name in ("hf", "litdata"):
        if name in info and not (path / name).exists():
            notes.append(f"no {name} row: {info[name]}")
    extra = {
        "commit": commit,
        "machine": machine(),
        "load_before": load_before,
        "load_after": load_after,
        "notes": notes,
    }
    if args.json:
        raw = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "info": info}
        args.json.write_text(json.dumps({**raw, "results": results, "summary": rows, **extra}, indent=1))
    if args.record:
        args.record.write_text(json.dumps(make_record(args, rows, info, extra), indent=1) + "\n")
        print(f"record written to {args.record}")


def resummarize(args: argparse.Namespace) -> None:
    """The table, and the record with ``--record``, from the raw results a ``--json`` run saved."""
    data = json.loads(args.summarize.read_text())
    for name in ("workload", "rows", "rounds", "workers", "batch_size"):  # the run's, where it saved them
        setattr(args, name, data.get("args", {}).get(name, getattr(args, name)))
    rows = summarize(data["results"], args.workers, args.workload)
    print_table(rows, "img" if args.workload == "images" else "row")
    extra = {k: data[k] for k in ("commit", "machine", "load_before", "load_after")}
    extra["notes"] = data["notes"] + list(args.note)
    if args.record:
        args.record.write_text(json.dumps(make_record(args, rows, data["info"], extra), indent=1) + "\n")
        print(f"record written to {args.record}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        sys.path.insert(0, str(HERE))
        child_main(sys.argv[2], sys.argv[3])
    else:
        main()
