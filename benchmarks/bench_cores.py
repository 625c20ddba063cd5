"""How the image loader scales with workers and cores, and what a training step's own CPU costs it
(issue 33): the ``lance`` reader of ``bench_images.py`` (50k JPEG crops, batch 256, the same decode)
at each ``--workers`` count, with the training process idle between batches and with a step that
spends ``--step-ms`` of CPU a batch (a busy loop: what a step's Python and kernel launches cost on a
core), each against the same round's decode limit (W processes decoding in memory) and one process's
decode rate::

    python benchmarks/bench_cores.py                       # workers 1,2,3; steps 0 and 15 ms; 2 rounds
    python benchmarks/bench_cores.py --workers 1,2 --step-ms 0,30 --rounds 3

The model it checks: images/s ~= min(W, C - s) / (d * (1 + o)), with C the cores, s the cores the
step keeps busy (step_ms / the batch's interval), d one process's decode time an image and o the
loader's overhead on it (reading, hand-over). Needs the workload of ``bench_images.py`` (made there
on first use) and a venv with torch, lancedb, lightning and PIL; run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_images  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--step-ms", default="0,15")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/lance_lightning_bench_images"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    path, _ = bench_images.ensure_workload(args.dir, "images", args.rows)
    cache = args.dir / "xdg-cache"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(bench_images.ROOT), os.environ.get("PYTHONPATH", "")]),
        "XDG_CACHE_HOME": str(cache),
    }
    workers = [int(w) for w in args.workers.split(",")]
    steps = [float(s) for s in args.step_ms.split(",")]
    cores = len(os.sched_getaffinity(0))
    print(f"commit {bench_images.commit_of(bench_images.ROOT)}; {cores} cores; load {os.getloadavg()}")
    results = []
    for round_ in range(args.rounds):
        base = bench_images.Ctx(str(path), "images", args.rows, 256, 1, 0)
        one = bench_images.run_child("decode1", base, env)["images_per_s"]
        for w in workers:
            ctx = bench_images.Ctx(str(path), "images", args.rows, 256, w, 0)
            limit = bench_images.run_child("decode", ctx, env)["images_per_s"]
            for step in steps:
                got = bench_images.run_child("lance", bench_images.Ctx(**{**ctx.__dict__, "step_ms": step}), env)
                if "error" in got:
                    print(f"  round {round_ + 1} W={w} step {step} ms failed: {got['error'][-300:]}")
                    continue
                rate = got["images_per_s"]
                row = {"round": round_, "workers": w, "step_ms": step, "images_per_s": rate, "decode_limit": limit,
                       "decode_1": one, "x_limit": rate / limit, "x_one": rate / one}  # fmt: skip
                results.append(row)
                print(
                    f"  round {round_ + 1} W={w} step {step:4.0f} ms: {rate:8,.0f} img/s = {rate / limit:.2f}x the "
                    f"{w}-process limit ({limit:,.0f}), {rate / one:.2f}x one process ({one:,.0f})",
                    flush=True,
                )
    print(f"load after {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
