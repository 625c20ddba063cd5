"""Large rows (images, audio, video frames): an exact uniform shuffle read from the table against
the same read from a stage, by row size. When does the table path come within 2x of the stage?

For each row size a table of ``--mib`` MiB of incompressible ``binary`` rows (plus an ``id``) is
made once in ``--dir``; each reader is a ``LanceDataModule`` train loader (``staging="off"``: reads
from the table; ``staging="always"``: from the node-local stage), read for one epoch in uniform
order, timed from the first ``next()`` to the last; batches of about ``--batch-mib`` MiB (at most
256 rows). Rounds interleave the two paths; medians are printed with the git commit::

    python benchmarks/bench_large_rows.py --sizes 4096,32768,262144,1048576 --mib 256 --rounds 3 --workers 0,2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def ensure_table(directory: str, row_bytes: int, total_mib: int) -> tuple[str, int]:
    import lancedb
    import pyarrow as pa

    name = f"rows_{row_bytes}_{total_mib}"
    db = lancedb.connect(directory)
    rows = max(64, total_mib * 2**20 // row_bytes)
    try:
        db.open_table(name)
    except (ValueError, FileNotFoundError):
        rng = np.random.default_rng(row_bytes)

        def batches():
            step = max(1, 64 * 2**20 // row_bytes)
            for lo in range(0, rows, step):
                n = min(step, rows - lo)
                blob = rng.integers(0, 256, n * row_bytes, dtype=np.uint8).tobytes()
                offsets = pa.array(np.arange(n + 1, dtype=np.int32) * row_bytes)
                payload = pa.BinaryArray.from_buffers(pa.binary(), n, [None, offsets.buffers()[1], pa.py_buffer(blob)])
                yield pa.record_batch({"id": pa.array(np.arange(lo, lo + n, dtype=np.int64)), "payload": payload})

        schema = pa.schema({"id": pa.int64(), "payload": pa.binary()})
        db.create_table(name, pa.RecordBatchReader.from_batches(schema, batches()))
    return name, rows


def epoch_rate(directory: str, name: str, batch: int, staging: str, workers: int, cache: str) -> dict:
    from lance_lightning import LanceDataModule

    stage = {"cache": cache, "cache_max_bytes": 2**40} if staging != "off" else {}
    dm = LanceDataModule(
        directory,
        name,
        columns=["id", "payload"],
        splits={"train": 1.0},
        batch_size=batch,
        seed=0,
        num_workers=workers,
        staging=staging,
        **stage,
    )
    dm.setup("fit")
    dm.samplers["train"].set_epoch(0)
    items = iter(dm.train_dataloader())
    first = next(items)
    start = time.perf_counter()
    rows = len(first["id"])
    nbytes = sum(len(b) for b in first["payload"])
    for batch_ in items:
        rows += len(batch_["id"])
        nbytes += sum(len(b) for b in batch_["payload"])
    seconds = time.perf_counter() - start
    dm.teardown("fit")
    return {"rows_per_s": (rows - len(first["id"])) / seconds, "mib_per_s": nbytes / 2**20 / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4096,32768,262144,1048576", help="bytes a row, comma-separated")
    parser.add_argument("--mib", type=int, default=256, help="MiB of rows a table")
    parser.add_argument("--batch-mib", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "lance_lightning_large_rows"))
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--record", default=None, help="write the docs record (docs/performance/records/large_rows.json)"
    )
    args = parser.parse_args()
    cache = str(Path(args.dir) / "stages")
    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        name, rows = ensure_table(args.dir, size, args.mib)
        batch = int(max(1, min(256, args.batch_mib * 2**20 // size)))
        for workers in [int(w) for w in args.workers.split(",")]:
            runs: dict[str, list[dict]] = {"off": [], "always": []}
            for _ in range(args.rounds):
                for staging in runs:
                    runs[staging].append(epoch_rate(args.dir, name, batch, staging, workers, cache))
            med = {s: float(np.median([r["mib_per_s"] for r in v])) for s, v in runs.items()}
            row = {
                "row_bytes": size,
                "rows": rows,
                "batch": batch,
                "workers": workers,
                "table_mib_s": med["off"],
                "stage_mib_s": med["always"],
                "table_rows_s": float(np.median([r["rows_per_s"] for r in runs["off"]])),
                "stage_over_table": med["always"] / med["off"],
            }
            results.append(row)
            print(
                f"{size:>9,} B x {rows:>7,} rows, batch {batch:>3}, {workers} workers: table {med['off']:8.1f} MiB/s "
                f"({row['table_rows_s']:,.0f} rows/s), stage {med['always']:8.1f} MiB/s -> stage/table "
                f"{row['stage_over_table']:.2f}x",
                flush=True,
            )
    print(f"bench_large_rows.py at {commit()}, {args.rounds} rounds, medians; {args.mib} MiB a table")
    if args.json:
        Path(args.json).write_text(json.dumps({"commit": commit(), "args": vars(args), "rows": results}, indent=1))
    if args.record:
        Path(args.record).write_text(json.dumps(record(args, results), indent=1, ensure_ascii=False) + "\n")


def record(args: argparse.Namespace, results: list[dict]) -> dict:
    """The docs record (``docs/performance/records/*.json``, drawn by ``make_figures.py``)."""
    import datetime
    import os

    rows = [
        {
            "row_kib": f"{r['row_bytes'] / 1024:,.0f} KiB",
            "rows": r["rows"],
            "batch": r["batch"],
            "workers": r["workers"],
            "table_mib_s": round(r["table_mib_s"], 1),
            "stage_mib_s": round(r["stage_mib_s"], 1),
            "stage_over_table": round(r["stage_over_table"], 2),
        }
        for r in results
    ]
    return {
        "title": "Large rows: an exact shuffle read from the table against the stage",
        "command": (
            f"python benchmarks/bench_large_rows.py --sizes {args.sizes} --mib {args.mib} "
            f"--rounds {args.rounds} --workers {args.workers}"
        ),
        "commit": commit(),
        "published": {"commit": "", "date": datetime.date.today().isoformat()},
        "machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} after the run",
        "setup": (
            f"{args.mib} MiB of incompressible binary rows a table; one uniform epoch a reader, timed from the first "
            f"next(); batches of about {args.batch_mib:g} MiB (at most 256 rows); medians of {args.rounds} rounds"
        ),
        "columns": [
            {"key": "row_kib", "label": "row", "format": "text"},
            {"key": "rows", "label": "rows", "format": "int"},
            {"key": "batch", "label": "batch rows", "format": "int"},
            {"key": "workers", "label": "workers", "format": "int"},
            {"key": "table_mib_s", "label": "from the table MiB/s", "format": "float1"},
            {"key": "stage_mib_s", "label": "from the stage MiB/s", "format": "float1"},
            {"key": "stage_over_table", "label": "stage / table", "format": "ratio"},
        ],
        "rows": rows,
        "notes": [],
    }


if __name__ == "__main__":
    main()
