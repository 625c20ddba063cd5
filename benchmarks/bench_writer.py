"""What ``LancePredictionWriter`` adds to a predict epoch, and what memory it takes.

Run by hand::

    python benchmarks/bench_writer.py --rows 1000000            # the issue's figure (several minutes)
    python benchmarks/bench_writer.py --rows 200000 --repeats 2
    python benchmarks/bench_writer.py --rows 20000 --repeats 1  # smoke check
    python benchmarks/bench_writer.py --rows 1000000 --step-ms 5  # an accelerator's step: the CPU waits

The table ``writer_<rows>`` (made under ``--dir``, reused when it has ``--rows`` rows) is the
throughput benchmark's: ``id`` int64, ``emb`` fixed_size_list<float32>[128], ``label`` int64,
``text`` string. The model is ``Linear(128, 128)``: ``predict_step`` returns ``[B, 128]`` float32.
Each mode runs ``trainer.predict`` over the whole table (``columns=["emb"]``, no workers, table
order; torch limited to one thread) in a fresh process, ``--repeats`` rounds, the modes interleaved
in each round; the medians are reported, with the spread (min..max) of the totals:

* ``predict only``: no writer (``return_predictions=False``), the baseline;
* ``new columns``: ``LancePredictionWriter(column="pred")``: with pylance, the new column's data
  files written during the loop by a background thread, then one metadata-only ``Merge`` commit;
  without it, staging during the loop and a commit that rewrites the table (see
  lance_lightning/writer/fragments.py and writer/rewrite.py);
* ``new table``: ``LancePredictionWriter(table="preds")``: ``source_rowid``, ``id`` (read beside
  each batch) and the outputs; with pylance written into the new table's data files during the
  loop by a background thread, then one ``Overwrite`` commit (lance_lightning/writer/table.py);
  without it, staging during the loop and one ``create_table`` after it.

Columns: total (the ``trainer.predict`` call), loop (first to last batch, staging included),
commit (``on_predict_end``: barrier, join, write), overhead (total over the baseline's), peak RSS of
the process, and its RSS growth from the start of the loop to its end (flat when no prediction is
kept: the staging file is on disk). Each is given in wall time and in CPU time of the process, all
threads (medians): on a shared machine the second moves less with other jobs' load.
After each ``new columns`` run the table is restored to the version it read, so every run reads the
same table, and the versions in between are cleaned up (as after a ``new table`` run: each run's
0.5 GB of data files would otherwise stay on disk; 30 runs filled 29 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

DIM = 128
MODES = ("predict only", "new columns", "new table")


def reusable(uri: str, name: str, rows: int) -> bool:
    """Whether benchmark table ``name`` is there as made, with ``rows`` rows; one that is not (a
    run stopped before restoring leaves the predictions' column) is dropped, to be made again."""
    import lancedb

    from lance_lightning.source import list_table_names

    db = lancedb.connect(uri)
    if name not in list_table_names(db):
        return False
    table = db.open_table(name)
    if table.count_rows() == rows and table.schema.names == ["id", "emb", "label", "text"]:
        return True
    db.drop_table(name)
    return False


def ensure_table(uri: str, rows: int) -> str:
    import lancedb
    import numpy as np
    import pyarrow as pa

    name = f"writer_{rows}"
    if reusable(uri, name, rows):
        return name
    db = lancedb.connect(uri)
    rng = np.random.default_rng(0)

    def batches():
        for start in range(0, rows, 65536):
            n = min(65536, rows - start)
            emb = rng.standard_normal(n * DIM, dtype=np.float32)
            yield pa.record_batch(
                {
                    "id": np.arange(start, start + n, dtype=np.int64),
                    "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb), DIM),
                    "label": rng.integers(0, 10, n),
                    "text": pa.array([f"item {i} of the writer benchmark" for i in range(start, start + n)]),
                }
            )

    first = next(batches())
    db.create_table(name, pa.RecordBatchReader.from_batches(first.schema, batches()))
    return name


def cpu_s() -> float:
    """CPU seconds of this process so far, all threads (lance's writer threads included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def drop_old_versions(path: str) -> None:
    """Delete every version but the latest, and the data files only they used."""
    import datetime

    import lance

    lance.dataset(path).cleanup_old_versions(older_than=datetime.timedelta(0), delete_unverified=True)


def predict_model(step_ms: float = 0.0, on_stepped: Callable[[], None] | None = None) -> Any:
    """``Linear(DIM, DIM)`` over ``emb``: ``predict_step`` returns ``[B, DIM]`` float32. With
    ``step_ms`` each step lasts at least that long with the CPU idle (an accelerator's step: the CPU
    thread waits for the device); ``on_stepped()`` runs as each step ends."""
    import lightning.pytorch as pl
    import torch

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(DIM, DIM)

        def predict_step(self, batch, batch_idx):
            began = time.perf_counter()
            out = self.layer(batch["emb"])
            if step_ms:
                time.sleep(max(0.0, step_ms / 1000 - (time.perf_counter() - began)))
            if on_stepped is not None:
                on_stepped()
            return out

    return Model()


def predict_trainer(callbacks: list[Any]) -> Any:
    """A one-device CPU Trainer with nothing of its own (no logger, checkpoints, progress bar or
    summary) and ``callbacks``, in that order, after Lightning's."""
    import lightning.pytorch as pl

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.callbacks.extend(callbacks)
    return trainer


def run_mode(
    uri: str, name: str, mode: str, batch_size: int, step_ms: float = 0.0, workers: int = 0, read_ahead: int = 2
) -> dict[str, Any]:
    """One predict epoch in this process (called in a fresh subprocess)."""
    import lancedb
    import lightning.pytorch as pl
    import torch

    from lance_lightning import LanceDataModule, LancePredictionWriter

    warnings.filterwarnings("ignore")
    # one intra-op thread: torch's spinning OpenMP threads otherwise fight lance's threads for the
    # 2 cores and the model's time swings by 2x from run to run (a GPU would take this part anyway)
    torch.set_num_threads(1)
    marks: dict[str, float] = {}

    class Clock(pl.Callback):
        def on_predict_start(self, trainer, pl_module):
            marks["start"], marks["rss_start"], marks["cpu_start"] = time.perf_counter(), rss_bytes(), cpu_s()

        def on_predict_epoch_end(self, trainer, pl_module):  # runs before on_predict_end (the commit)
            marks["loop_end"], marks["rss_loop_end"], marks["cpu_loop_end"] = time.perf_counter(), rss_bytes(), cpu_s()

    base_version = lancedb.connect(uri).open_table(name).version  # restored after a new columns run
    callbacks: list[Any] = [Clock()]
    if mode == "new columns":
        callbacks.append(LancePredictionWriter(column="pred"))
    elif mode == "new table":
        callbacks.append(LancePredictionWriter(column="pred", table="preds", overwrite=True))
    dm = LanceDataModule(
        uri, name, columns=["emb"], splits=None, eval_batch_size=batch_size, num_workers=workers, read_ahead=read_ahead
    )
    trainer = predict_trainer(callbacks)
    began, cpu_began = time.perf_counter(), cpu_s()
    trainer.predict(predict_model(step_ms), datamodule=dm, return_predictions=False)
    ended, cpu_ended = time.perf_counter(), cpu_s()
    if mode == "new columns":
        lancedb.connect(uri).open_table(name).restore(base_version)
    if mode != "predict only":
        drop_old_versions(f"{uri}/{name if mode == 'new columns' else 'preds'}.lance")
    return {
        "mode": mode,
        "total_s": ended - began,
        "loop_s": marks["loop_end"] - marks["start"],
        "commit_s": ended - marks["loop_end"],
        "setup_s": marks["start"] - began,
        "cpu_total_s": cpu_ended - cpu_began,
        "cpu_loop_s": marks["cpu_loop_end"] - marks["cpu_start"],
        "cpu_commit_s": cpu_ended - marks["cpu_loop_end"],
        "rss_loop_growth_mb": (marks["rss_loop_end"] - marks["rss_start"]) / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def spread(runs: list[dict[str, Any]], mode: str, prefix: str) -> str:
    totals = [r[f"{prefix}total_s"] for r in runs if r["mode"] == mode]
    return f"{min(totals):.2f}..{max(totals):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", default="/tmp/lance_lightning_bench")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the raw runs here")
    parser.add_argument(
        "--step-ms",
        type=float,
        default=0.0,
        help="make each predict step last at least this long, the CPU idle meanwhile (as when a GPU runs the "
        "model and the CPU waits for it); 0: the CPU runs the model",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="DataLoader workers of the predict loader (reads then run in those processes, whose CPU time the "
        "CPU columns leave out)",
    )
    parser.add_argument(
        "--read-ahead", type=int, default=2, help="the datamodule's read_ahead (batches read ahead with 0 workers)"
    )
    parser.add_argument(
        "--child", nargs=6, metavar=("NAME", "MODE", "BATCH", "STEP_MS", "WORKERS", "AHEAD"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        name, mode, batch, step_ms, workers, ahead = args.child
        print(json.dumps(run_mode(args.dir, name, mode, int(batch), float(step_ms), int(workers), int(ahead))))
        return
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    here = Path(__file__).parent
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=here
    )
    print(
        f"bench_writer.py at commit {commit.stdout.strip()}{'+dirty' if dirty.stdout.strip() else ''}; "
        f"load average {os.getloadavg()}",
        flush=True,
    )
    made = time.perf_counter()
    name = ensure_table(args.dir, args.rows)
    print(f"table {name} in {args.dir} ({time.perf_counter() - made:.1f} s to make or check)", flush=True)
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for mode in MODES:  # interleaved, so that a change of machine load hits every mode alike
            child = [name, mode, str(args.batch_size), str(args.step_ms), str(args.workers), str(args.read_ahead)]
            cmd = [sys.executable, __file__, "--dir", args.dir, "--child", *child]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode:
                raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
            run = json.loads(out.stdout.strip().splitlines()[-1]) | {"repeat": repeat}
            runs.append(run)
            print(f"  run {repeat} {mode:<13} {run['total_s']:7.2f} s", flush=True)
    keys = [k for k in runs[0] if k not in ("mode", "repeat")]
    median = {mode: {k: statistics.median(r[k] for r in runs if r["mode"] == mode) for k in keys} for mode in MODES}
    step = f", each step >= {args.step_ms:g} ms with the CPU idle (an accelerator's step)" if args.step_ms else ""
    step += f", {args.workers} loader worker(s)" if args.workers else f", read_ahead={args.read_ahead}"
    print(
        f"\n{args.rows:,} rows, batch {args.batch_size}, [B, {DIM}] float32 output{step}, "
        f"median of {args.repeats} rounds"
    )
    header = ("", "total s", "loop s", "commit s", "overhead", "peak RSS MB", "loop RSS +MB", "spread s")
    widths = (9, 9, 10, 10, 13, 14, 14)
    for title, pick, prefix in (("wall time", median, ""), ("CPU time (all threads)", median, "cpu_")):
        base = pick["predict only"][f"{prefix}total_s"]
        print(f"{title:<24}" + "".join(f"{h:>{w}}" for h, w in zip(header[1:], widths)))
        for mode, r in pick.items():
            total = r[f"{prefix}total_s"]
            overhead = "" if mode == "predict only" else f"{(total / base - 1) * 100:+.0f}%"
            print(
                f"  {mode:<22}{total:>9.2f}{r[f'{prefix}loop_s']:>9.2f}{r[f'{prefix}commit_s']:>10.2f}{overhead:>10}"
                f"{r['peak_rss_mb']:>13.0f}{r['rss_loop_growth_mb']:>14.0f}{spread(runs, mode, prefix):>16}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
