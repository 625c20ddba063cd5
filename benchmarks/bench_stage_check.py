"""What the per-batch stage check costs: a staged gather with and without ``StagedRows._check``.

Builds (or reuses) a staged split of the throughput benchmark's table, then times
``take_into_tensors`` of ``--batch-size`` random positions, interleaving rounds with the check as
shipped and with it replaced by nothing. Medians of ``--rounds`` rounds of ``--batches`` gathers.

    python benchmarks/bench_stage_check.py --rows 1000000 --rounds 7
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128, help="float32 values a row (520 B rows at 128)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "lance_lightning_stage_check"))
    args = parser.parse_args()

    import lancedb
    import pyarrow as pa

    from lance_lightning import LanceDataModule
    from lance_lightning.stage.reader import StagedRows

    db = lancedb.connect(args.dir)
    name = f"check_{args.rows}_{args.dim}"
    try:
        db.open_table(name)
    except (ValueError, FileNotFoundError):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
        db.create_table(
            name,
            pa.table(
                {
                    "id": pa.array(np.arange(args.rows, dtype=np.int64)),
                    "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), args.dim),
                }
            ),
        )
    dm = LanceDataModule(args.dir, name, splits={"train": 1.0}, cache=str(Path(args.dir) / "stages"), staging="always")
    dm.setup("fit")
    rows: StagedRows = dm.datasets["train"].staged
    n = rows.num_rows
    rng = np.random.default_rng(1)
    positions = [rng.integers(0, n, args.batch_size) for _ in range(args.batches)]

    def run() -> float:
        start = time.perf_counter()
        for pos in positions:
            rows.take_into_tensors(pos)
        return (time.perf_counter() - start) / len(positions) * 1e6

    run()  # warm: every page of the stage in the page cache
    shipped = StagedRows._check
    times: dict[str, list[float]] = {"with the check": [], "without": []}
    for _ in range(args.rounds):
        StagedRows._check = shipped
        times["with the check"].append(run())
        StagedRows._check = lambda self: None
        times["without"].append(run())
    StagedRows._check = shipped
    start = time.perf_counter()
    for _ in range(10_000):
        rows._check()
    one = (time.perf_counter() - start) / 10_000 * 1e6
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    with_check, without = (float(np.median(v)) for v in times.values())
    print(f"bench_stage_check.py at {commit}: {n:,} staged rows, batch {args.batch_size}, {args.rounds} rounds")
    print(f"one check: {one:.2f} us ({len(rows._stamps)} mapped files); two a gather")
    print(f"gather with the check {with_check:.1f} us, without {without:.1f} us: +{with_check / without - 1:.1%}")
    dm.teardown("fit")


if __name__ == "__main__":
    main()
