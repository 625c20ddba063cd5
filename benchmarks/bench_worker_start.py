"""Time to the first batch: 0 workers against 2 (issue 14 item 4: within 2 s of each other).

Run by hand: ``python benchmarks/bench_worker_start.py [--rows 100000] [--repeats 3]``. Each
measurement runs in a fresh process started from a script file that imports Lightning, as a
training script does (a fork server imports that script before it can start a worker). Two
measurements a process:

* ``loader``: ``setup()`` and ``next(iter(train_dataloader()))``, where DataLoader starts its
  workers (the stage is filled by the first run and reused after);
* ``fit``: ``Trainer.fit`` on a train/val split (the sanity check's 2 val batches first, as by
  default) to the first ``training_step``, and on to the 50th.

Readers: the default (staged train and val; workers fork), the same with
``multiprocessing_context="forkserver"`` (the default before), and ``staging="off"`` (workers read
the table; they start from the fork server). Prints the git commit and the load average.
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

CHILD = r'''
import json, sys, time
t0 = time.perf_counter()
import lightning.pytorch as pl
import torch
from lance_lightning import LanceDataModule


class Model(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(128, 10)
        self.times = {}

    def training_step(self, batch, batch_idx):
        self.times.setdefault("first", time.perf_counter())
        self.times["last"] = time.perf_counter()
        return torch.nn.functional.cross_entropy(self.layer(batch["emb"]), batch["label"] % 10)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def datamodule(splits):
    return LanceDataModule(uri, "t", columns=["emb", "label"], batch_size=1024, num_workers=workers, splits=splits,
                           staging=staging, multiprocessing_context=context)


if __name__ == "__main__":
    uri, workers, staging, context, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    context = None if context == "default" else context
    t_imported = time.perf_counter()
    if mode == "loader":
        dm = datamodule({"train": 1.0})
        dm.setup("fit")
        loader = dm.train_dataloader()
        t1 = time.perf_counter()
        next(iter(loader))
        t2 = time.perf_counter()
        print(json.dumps({"first_batch_s": t2 - t1, "setup_to_first_batch_s": t2 - t_imported}))
    else:
        model = Model()
        trainer = pl.Trainer(max_steps=50, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=2)
        t1 = time.perf_counter()
        trainer.fit(model, datamodule=datamodule({"train": 0.9, "val": 0.1}))
        print(json.dumps({"fit_to_first_step_s": model.times["first"] - t1,
                          "steps_2_to_50_s": model.times["last"] - model.times["first"]}))
'''

READERS = {
    "default, 0 workers": ("auto", "default", 0),
    "default, 2 workers (fork)": ("auto", "default", 2),
    "default, 2 workers, forkserver": ("auto", "forkserver", 2),
    "staging=off, 2 workers": ("off", "default", 2),
}


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
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    print(f"commit {commit}{'+dirty' if dirty.stdout.strip() else ''}; {args.rows:,} rows; "
          f"load average before {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        uri = str(Path(tmp) / "db")
        make_table(uri, args.rows)
        script = Path(tmp) / "train.py"
        script.write_text(CHILD)
        env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache"), "PYTHONWARNINGS": "ignore"}
        results: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.repeats):
            for name, (staging, context, workers) in READERS.items():
                for mode in ("loader", "fit"):
                    out = subprocess.run(
                        [sys.executable, str(script), uri, str(workers), staging, context, mode],
                        capture_output=True, text=True, env=env,
                    )
                    if out.returncode:
                        raise SystemExit(f"{name} {mode} failed:\n{out.stderr[-3000:]}")
                    results.setdefault(name, []).append(json.loads(out.stdout.strip().splitlines()[-1]))

    def med(runs: list[dict[str, float]], key: str) -> str:
        values = [r[key] for r in runs if key in r]
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    print("| reader | next() s | setup()+next() s | fit → first step s | steps 2-50 s |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | {med(runs, 'first_batch_s')} | {med(runs, 'setup_to_first_batch_s')} "
              f"| {med(runs, 'fit_to_first_step_s')} | {med(runs, 'steps_2_to_50_s')} |")
    print(f"medians (min-max) of {args.repeats} runs; load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
