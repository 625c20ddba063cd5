"""Where ``LancePredictionWriter``'s time goes in each predict batch, on the training thread.

Run by hand, after ``bench_writer.py`` has made its table (``--rows 200000`` makes ``writer_200000``)::

    python benchmarks/writer_step_times.py --rows 200000 --rounds 2

Each round runs one predict epoch without the writer and one with ``LancePredictionWriter(column=
"pred")`` (fresh processes, interleaved; 5 ms steps with the CPU idle, as when a GPU runs the model;
0 workers, ``read_ahead=2``), and times three spans of every batch from Lightning's hooks: the
fetch (the previous batch's end to this one's start: waiting for the loader), the step, and what
runs after the step (Lightning's hooks and the writer's ``write_on_batch_end``). The table is
restored to the version it read after each writer run, and the versions in between are cleaned
up (bench_writer.drop_old_versions): each run's predictions would otherwise stay on disk.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

STEP_S = 0.005


def one_epoch(uri: str, name: str, with_writer: bool) -> dict[str, float]:
    import lancedb
    import lightning.pytorch as pl
    import torch
    from bench_writer import drop_old_versions, predict_model, predict_trainer

    from lance_lightning import LanceDataModule, LancePredictionWriter

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    marks: dict[str, list[float]] = {"start": [], "end": [], "stepped": []}

    class Times(pl.Callback):
        def on_predict_batch_start(self, *args):
            marks["start"].append(time.perf_counter())

        def on_predict_batch_end(self, *args):  # after the writer's: it is registered first
            marks["end"].append(time.perf_counter())

    base = lancedb.connect(uri).open_table(name).version
    callbacks: list = [LancePredictionWriter(column="pred")] if with_writer else []
    dm = LanceDataModule(uri, name, columns=["emb"], splits=None, eval_batch_size=1024)
    trainer = predict_trainer([*callbacks, Times()])
    model = predict_model(STEP_S * 1000, on_stepped=lambda: marks["stepped"].append(time.perf_counter()))
    began = time.perf_counter()
    trainer.predict(model, datamodule=dm, return_predictions=False)
    total = time.perf_counter() - began
    if with_writer:
        lancedb.connect(uri).open_table(name).restore(base)
        drop_old_versions(f"{uri}/{name}.lance")  # the run's data files, as bench_writer does
    start, end, stepped = (np.array(marks[k]) for k in ("start", "end", "stepped"))
    spans = {"fetch": start[1:] - end[:-1], "step": stepped - start, "after": end - stepped}
    return {
        "total_s": total,
        "loop_s": end[-1] - start[0],
        **{f"{k}_ms_median": float(np.median(v) * 1e3) for k, v in spans.items()},
        **{f"{k}_ms_mean": float(v.mean() * 1e3) for k, v in spans.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/tmp/lance_lightning_bench")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("NAME", "WRITER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_epoch(args.dir, args.child[0], args.child[1] == "1")))
        return
    name = f"writer_{args.rows}"
    if not (Path(args.dir) / f"{name}.lance").exists():
        raise SystemExit(f"no table {name} in {args.dir}: run benchmarks/bench_writer.py --rows {args.rows} first")
    here = Path(__file__).parent
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here)
    print(f"writer_step_times.py at commit {commit.stdout.strip()}; table {name}")
    runs: dict[str, list[dict[str, float]]] = {"predict only": [], "new columns": []}
    for _ in range(args.rounds):
        for label, flag in (("predict only", "0"), ("new columns", "1")):
            cmd = [sys.executable, __file__, "--dir", args.dir, "--child", name, flag]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[label].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("ms a batch, median / mean over the batches (medians over rounds); loop s")
    print(f"{'':14} {'fetch':>13} {'step':>13} {'after step':>13} {'loop s':>7}")
    for label, rs in runs.items():
        cell = {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
        spans = [f"{cell[f'{k}_ms_median']:.2f} / {cell[f'{k}_ms_mean']:.2f}" for k in ("fetch", "step", "after")]
        print(f"{label:14} {spans[0]:>13} {spans[1]:>13} {spans[2]:>13} {cell['loop_s']:7.2f}")


if __name__ == "__main__":
    main()
