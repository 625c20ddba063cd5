"""The same LanceDataModule reads timed in two checkouts, side by side (issue 13: a refactor must not
slow the read paths). Run by hand from the repository root::

    git worktree add /tmp/old <commit>   # or: git archive <commit> | tar -x -C /tmp/old
    python benchmarks/bench_side_by_side.py /tmp/old . --rows 200000 --rounds 3

Each (checkout, shuffle) runs in a fresh process with that checkout first on ``sys.path``, rounds
interleaved; one epoch of the train split (emb float32[128] + label, batch 1024, 0 workers) timed
from the first ``next()``. The new checkout reads the table (``staging="off"``) so both read the same
way. Prints medians and min-max, the commits and the load average.
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
import inspect, json, sys, time, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, sys.argv[1])
from lance_lightning.datamodule import LanceDataModule
uri, shuffle = sys.argv[2], sys.argv[3]
extra = {"staging": "off"} if "staging" in inspect.signature(LanceDataModule.__init__).parameters else {}
dm = LanceDataModule(uri, "t", columns=["emb", "label"], batch_size=1024, shuffle=shuffle, seed=1,
                     splits={"train": 1.0}, **extra)
dm.setup("fit")
loader = dm.train_dataloader()
rows, t0 = 0, time.perf_counter()
for batch in loader:
    rows += len(batch["label"])
print(json.dumps({"rows_per_s": rows / (time.perf_counter() - t0), "module": LanceDataModule.__module__,
                  "file": sys.modules["lance_lightning"].__file__}))
"""


def make_table(uri: str, rows: int) -> None:
    import lancedb
    import numpy as np
    import pyarrow as pa

    emb = np.random.default_rng(0).standard_normal((rows, 128), dtype=np.float32)
    data = pa.table(
        {"emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 128), "label": pa.array(np.arange(rows) % 10)}
    )
    lancedb.connect(uri).create_table("t", data, mode="overwrite")


def commit_of(path: str) -> str:
    out = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "(not a git checkout)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkouts", nargs=2)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shuffles", default="uniform,block,none")
    args = parser.parse_args()
    print(f"checkouts {args.checkouts} ({', '.join(commit_of(c) for c in args.checkouts)}); load {os.getloadavg()}")
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        uri = str(Path(tmp) / "db")
        make_table(uri, args.rows)
        env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        for _ in range(args.rounds):
            for shuffle in args.shuffles.split(","):
                for checkout in args.checkouts:
                    root = str(Path(checkout).resolve())
                    out = subprocess.run(
                        [sys.executable, "-c", CHILD, root, uri, shuffle], capture_output=True, text=True, env=env
                    )
                    if out.returncode:
                        raise SystemExit(out.stderr[-2000:])
                    got = json.loads(out.stdout.strip().splitlines()[-1])
                    assert got["file"].startswith(root), (got["file"], root)
                    results.setdefault((shuffle, checkout), []).append(got["rows_per_s"])
    print(f"{'shuffle':10} {'checkout':30} {'rows/s median':>14} {'min-max':>22}")
    for (shuffle, checkout), values in results.items():
        print(f"{shuffle:10} {checkout:30} {statistics.median(values):14,.0f} {min(values):10,.0f}-{max(values):,.0f}")
    print(f"load after {os.getloadavg()}")


if __name__ == "__main__":
    main()
