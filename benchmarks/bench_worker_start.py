"""Time to the first batch: 0 workers against 2 (issue 14 item 4: within 2 s of each other).

Run by hand: ``python benchmarks/bench_worker_start.py [--rows 100000] [--repeats 3]``. Each
measurement runs in a fresh process (as a training script does): it builds the datamodule, sets
it up (the stage is filled by the first run and reused after), then times ``next(iter(loader))``,
which is where DataLoader starts its workers, and from ``setup()`` to the first batch (setup
starts the fork server in the background, so its imports overlap the splits and the stage).
Prints the git commit and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from lance_lightning import LanceDataModule
uri, workers, staging = sys.argv[1], int(sys.argv[2]), sys.argv[3]
dm = LanceDataModule(uri, "t", columns=["emb", "label"], batch_size=1024, num_workers=workers,
                     splits={"train": 1.0}, staging=staging)
ts = time.perf_counter()
dm.setup("fit")
loader = dm.train_dataloader()
t1 = time.perf_counter()
batch = next(iter(loader))
t2 = time.perf_counter()
print(json.dumps({"import_setup_s": t1 - t0, "first_batch_s": t2 - t1, "setup_to_first_batch_s": t2 - ts}))
"""


def make_table(uri: str, rows: int) -> None:
    import lancedb
    import numpy as np
    import pyarrow as pa

    emb = np.random.default_rng(0).standard_normal((rows, 128), dtype=np.float32)
    data = pa.table({
        "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 128),
        "label": pa.array(np.arange(rows) % 10),
    })
    lancedb.connect(uri).create_table("t", data, mode="overwrite")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"commit {commit}; load average before {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        uri = str(Path(tmp) / "db")
        make_table(uri, args.rows)
        env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        results: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.repeats):
            for staging in ("auto", "off"):
                for workers in (0, 2):
                    out = subprocess.run(
                        [sys.executable, "-c", CHILD, uri, str(workers), staging],
                        capture_output=True, text=True, env=env, check=True,
                    )
                    results.setdefault(f"staging={staging} workers={workers}", []).append(
                        json.loads(out.stdout.strip().splitlines()[-1])
                    )
    print(f"{'reader':28} {'import+setup s':>15} {'next() s (median, min-max)':>28} {'setup()+next() s':>18}")
    for name, runs in results.items():
        first = [r["first_batch_s"] for r in runs]
        setup = statistics.median(r["import_setup_s"] for r in runs)
        total = statistics.median(r["setup_to_first_batch_s"] for r in runs)
        line = f"{name:28} {setup:15.2f} {statistics.median(first):10.2f} ({min(first):.2f}-{max(first):.2f})"
        print(f"{line:72} {total:18.2f}")
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
