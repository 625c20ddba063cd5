"""What ``LancePredictionWriter(column=...)`` adds to a 2-process DDP predict epoch (CPU, gloo).

Under DDP a fragment's batches come from every rank (dealt round-robin), so each rank stages its
outputs in an Arrow file during the loop; after a barrier each rank writes the new data files of
its share of the fragments, and rank 0 commits. This times both parts on rank 0: the loop (first
to last batch) and what comes after it (the barriers, the writing and the commit), with and
without the writer, rounds interleaved::

    python benchmarks/bench_writer_ddp.py --rows 1000000 --rounds 2 --fragments 1
    python benchmarks/bench_writer_ddp.py --rows 1000000 --rounds 2 --fragments 4

With one fragment (what ``create_table`` makes of up to 1M rows) one rank writes it all; with
``--fragments 4`` (a copy of the table in 4 fragments) each rank writes two.

The table is ``bench_writer.py``'s (``writer_<rows>`` under ``--dir``); after each writer run it
is restored to the version it read and older versions are cleaned up. Each run is a fresh
``python`` that Lightning re-launches for rank 1; the DDP start-up (seconds) is outside both figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def run_once(uri: str, name: str, mode: str) -> None:
    """One 2-process predict (this process is rank 0; Lightning starts rank 1 from this script)."""
    import lightning.pytorch as pl
    import torch

    from lance_lightning import LanceDataModule, LancePredictionWriter

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    marks: dict[str, float] = {}

    class Clock(pl.Callback):
        def on_predict_start(self, trainer, pl_module):
            marks["start"] = time.perf_counter()

        def on_predict_epoch_end(self, trainer, pl_module):  # before on_predict_end (the writer's commit)
            marks["loop_end"] = time.perf_counter()

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(128, 128)

        def predict_step(self, batch, batch_idx):
            return self.layer(batch["emb"])

    import lancedb

    base_version = lancedb.connect(uri).open_table(name).version  # restored after a new columns run
    callbacks: list = [Clock()]
    if mode == "new columns":
        callbacks.append(LancePredictionWriter(column="pred"))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    dm = LanceDataModule(uri, name, columns=["emb"], splits=None, eval_batch_size=1024)
    trainer.predict(Model(), datamodule=dm, return_predictions=False)
    end = time.perf_counter()
    if trainer.global_rank == 0:
        print(f"RESULT {marks['loop_end'] - marks['start']:.4f} {end - marks['loop_end']:.4f}", flush=True)
        if mode == "new columns":
            from bench_writer import drop_old_versions

            lancedb.connect(uri).open_table(name).restore(base_version)
            drop_old_versions(f"{uri}/{name}.lance")


def ensure_fragmented(uri: str, name: str, rows: int, fragments: int) -> str:
    """A copy of table ``name`` in ``fragments`` fragments of about equal size."""
    import lance
    from bench_writer import reusable

    copy = f"{name}_f{fragments}"
    if reusable(uri, copy, rows):
        return copy
    source = lance.dataset(f"{uri}/{name}.lance")
    lance.write_dataset(
        source.scanner(batch_size=65536).to_reader(), f"{uri}/{copy}.lance", max_rows_per_file=-(-rows // fragments)
    )
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--dir", default="/tmp/lance_lightning_bench/writer")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fragments", type=int, default=1, help="fragments of the table (a copy when > 1)")
    parser.add_argument("--run", nargs=3, metavar=("URI", "NAME", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_once(*args.run)
        return
    from bench_writer import ensure_table

    name = ensure_table(args.dir, args.rows)
    if args.fragments > 1:
        name = ensure_fragmented(args.dir, name, args.rows, args.fragments)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    modes = ("predict only", "new columns")
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for round_ in range(args.rounds):
        for mode in modes:
            out = subprocess.run(
                [sys.executable, __file__, "--run", args.dir, name, mode],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
            if line is None:
                sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
            loop, after = map(float, line.split()[1:])
            results[mode].append((loop, after))
            print(f"  round {round_ + 1} {mode:13s} loop {loop:.2f} s, after the loop {after:.2f} s", file=sys.stderr)
    print(
        f"bench_writer_ddp.py at commit {commit or '?'}: {args.rows:,} rows in {args.fragments} fragment(s), "
        "[B, 128] float32, 2 ranks, rank 0"
    )
    print("mode            loop s (median)   after the loop s (median)   all rounds")
    for mode in modes:
        loops, afters = zip(*results[mode])
        rounds = ", ".join(f"{a:.2f}+{b:.2f}" for a, b in results[mode])
        print(f"{mode:15s} {statistics.median(loops):15.2f} {statistics.median(afters):27.2f}   {rounds}")


if __name__ == "__main__":
    main()
