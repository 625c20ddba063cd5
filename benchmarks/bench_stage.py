"""Staging layer: gathers from a stage against the table readers, and staging time against a scan.

Run by hand: ``python benchmarks/bench_stage.py [--rows 1000000] [--batches 300]``. One process,
no workers; the table is ``bench_throughput``'s (``emb`` fixed_size_list<float32>[128] + ``label``
int64, 520 B a row), batch 1,024 rows, uniform random positions (an exact shuffle's batches), rows
read as dict of torch tensors at the end of every path. Timing from the first call; each gather row
runs its batches after one warm-up batch (the stage is in the page cache: the fill just wrote it and
setup's verification read it). Prints a table naming the git commit.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import THROUGHPUT_COLUMNS, arrow_to_tensors, ensure_table  # noqa: E402

from lance_lightning.convert import batch_to_tensors  # noqa: E402
from lance_lightning.reads import read_offsets  # noqa: E402
from lance_lightning.source import TableSource  # noqa: E402
from lance_lightning.stage import StagedRows, ensure_stage, release_stage  # noqa: E402

BATCH = 1024


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", __file__, "lance_lightning/stage"], capture_output=True, text=True
        )
        return out.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def rate(fn: Callable[[np.ndarray], Any], batches: list[np.ndarray]) -> float:
    """Rows a second of ``fn`` over ``batches`` (after one warm-up batch)."""
    fn(batches[0])
    gc.collect()
    start = time.perf_counter()
    rows = 0
    for positions in batches:
        out = fn(positions)
        rows += len(positions)
        del out
    return rows / (time.perf_counter() - start)


def scan_rate(table: Any, columns: list[str]) -> tuple[float, float]:
    """(rows/s, seconds) of one sequential scan of the table's ``columns``, to tensors."""
    start = time.perf_counter()
    rows = 0
    for batch in table.search().select(columns).limit(None).to_batches(BATCH):
        rows += len(arrow_to_tensors(batch)["label"])
    seconds = time.perf_counter() - start
    return rows / seconds, seconds


def hf_rate(
    table: Any, columns: list[str], batches: list[np.ndarray], workdir: Path
) -> tuple[tuple[float, float] | None, str]:
    try:
        import datasets
    except ImportError:
        return None, "datasets not installed (pip install datasets)"
    import torch

    path = workdir / "hf"
    ds = datasets.Dataset(table.search().select(columns).limit(None).to_arrow().combine_chunks())
    ds.save_to_disk(str(path))
    ds = datasets.load_from_disk(str(path))
    as_numpy, as_arrow = ds.with_format("numpy"), ds.with_format("arrow")

    def gather_numpy(positions: np.ndarray) -> dict[str, Any]:
        rows = as_numpy[positions]
        return {name: torch.from_numpy(np.asarray(rows[name])) for name in columns}

    def gather_arrow(positions: np.ndarray) -> dict[str, Any]:
        return arrow_to_tensors(as_arrow[positions])

    rates = (rate(gather_numpy, batches[:30]), rate(gather_arrow, batches))
    return rates, f"datasets {datasets.__version__}, memory-mapped Arrow, one gather a batch"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=300, help="batches per gather row")
    parser.add_argument("--take-batches", type=int, default=30, help="batches for the (slow) table take row")
    parser.add_argument("--uri", default=os.path.join(tempfile.gettempdir(), "lance-lightning-bench"))
    args = parser.parse_args()
    os.makedirs(args.uri, exist_ok=True)
    name, made = ensure_table(args.uri, "throughput", args.rows)
    table = lancedb.connect(args.uri).open_table(name)
    source = TableSource(args.uri, name, table.version).stamped(table)
    columns = list(THROUGHPUT_COLUMNS)
    ids = table.search().select(["_rowid"]).limit(None).to_arrow()["_rowid"].to_numpy()
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, args.rows, BATCH) for _ in range(args.batches)]
    results: list[tuple[str, float | None, str]] = []

    scan, scan_seconds = scan_rate(table, columns)
    scan, scan_seconds = max((scan, scan_seconds), scan_rate(table, columns))  # second pass: warm
    results.append(("lancedb sequential scan, search().to_batches(1024)", scan, "reference"))

    workdir = Path(tempfile.mkdtemp(prefix="bench-stage-"))
    staging: list[str] = []
    try:
        for layout in ("flat", "arrow"):
            start = time.perf_counter()
            path = ensure_stage(source, table, ids, columns, root=workdir / "stages", layout=layout, progress=False)
            seconds = time.perf_counter() - start
            release_stage(path)
            size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
            staging.append(
                f"stage {layout:5s}: {seconds:5.2f} s ({seconds / scan_seconds:.2f}x one scan, {scan_seconds:.2f} s), "
                f"{size / 1e6:,.0f} MB, {args.rows / seconds / 1e6:.2f}M rows/s"
            )
            staged = StagedRows(path)
            results.append((f"stage {layout}: take -> Arrow", rate(staged.take, batches), ""))
            results.append(
                (
                    f"stage {layout}: take -> Arrow -> tensors",
                    rate(lambda p, s=staged: batch_to_tensors(s.take(p)), batches),
                    "",
                )
            )
            results.append(
                (f"stage {layout}: take_into_tensors", rate(staged.take_into_tensors, batches), "numpy gather")
            )
            shared = rate(lambda p, s=staged: s.take_into_tensors(p, out_shared=True), batches)
            note = "as in a worker: one share_memory_() a column a batch"
            results.append((f"stage {layout}: take_into_tensors(out_shared)", shared, note))
            staged.close()

        def take(positions: np.ndarray) -> dict[str, Any]:
            offsets = np.unique(positions)  # a fresh table: offset == position
            return arrow_to_tensors(read_offsets(table, offsets, columns))

        took = rate(take, batches[: args.take_batches])
        results.append(("table: reads.read_offsets (take_offsets), sorted batch", took, "LanceBatchDataset today"))
        hf, note = hf_rate(table, columns, batches, workdir)
        results.append(("HF datasets: ds.with_format('numpy')[idx]", None if hf is None else hf[0], note))
        results.append(("HF datasets: ds.with_format('arrow')[idx] -> tensors", None if hf is None else hf[1], note))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"\nbench_stage.py at commit {commit()}: {args.rows:,} rows of {columns} (520 B a row), batch {BATCH}, "
        f"uniform random positions, {args.batches} batches a row, 1 process, {os.cpu_count()} CPUs"
        + (f"; table made in {made:.0f} s" if made else "")
    )
    print(f"{'reader':55s} {'rows/s':>12s} {'x scan':>7s}  note")
    for label, value, note in results:
        shown = "-" if value is None else f"{value:,.0f}"
        ratio = "-" if value is None else f"{value / scan:.2f}"
        print(f"{label:55s} {shown:>12s} {ratio:>7s}  {note}")
    for line in staging:
        print(line)


if __name__ == "__main__":
    pa.set_cpu_count(max(1, os.cpu_count() or 1))
    main()
