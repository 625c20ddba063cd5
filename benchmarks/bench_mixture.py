"""A mixture of three staged sources against one staged split of the same rows, like with like.

The table (``mixture_<rows>`` under ``--dir``): ``emb`` fixed_size_list<float32>[128] + ``label``
int64 (520 B a row) and ``part`` = row % 3. Two readers of the same rows, same batch size, same
workers:

* ``split``: ``splits={"train": 1.0}``, the uniform shuffle, read from the split's stage;
* ``mix``: ``mix`` of three sources (``part = 0``, ``1``, ``2``), a third each: each source one pass an
  epoch (``--batching`` the layout), each read from its own stage.

Each cell runs in its own process (``python bench_mixture.py --cell ...``), in ``--rounds``
interleaved rounds. The stages are filled before timing; a process reads ``--epochs`` epochs and
the steady epochs (all but the first) are timed from the first ``next()`` to the last batch. The
table reports the median rows/s over rounds and epochs, min-max, and mix/split; and, paired, the
median over rounds of each round's mix / split (its two cells run back to back, which goes first
alternating), steadier where the machine's speed drifts between rounds.

    python benchmarks/bench_mixture.py --rows 1000000 --rounds 3

``--baseline DIR`` also runs every cell with the package of another checkout (``DIR`` holds its
``lance_lightning``, e.g. ``git archive <commit> lance_lightning | tar -x -C DIR``), interleaved
with this one's in each round: a change and its base measured in the same run, under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

DIM = 128


def _commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here)
        return done.stdout.strip()
    except OSError:
        return "?"


def make_table(uri: str, rows: int) -> None:
    import lancedb
    import pyarrow as pa

    db = lancedb.connect(uri)
    name = f"mixture_{rows}"
    if name in db.list_tables().tables:
        return
    chunk = 250_000
    table = None
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        emb = np.random.default_rng(start).standard_normal((n, DIM)).astype(np.float32)
        ids = np.arange(start, start + n)
        data = pa.table(
            {
                "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), DIM),
                "label": (ids % 10).astype(np.int64),
                "part": (ids % 3).astype(np.int64),
            }
        )
        if table is None:
            table = db.create_table(name, data)
        else:
            table.add(data)


def cell(
    uri: str, rows: int, reader: str, workers: int, batching: str, batch_size: int, epochs: int, cache: str
) -> dict:
    from lance_lightning import LanceDataModule

    settings = dict(
        columns=["emb", "label"],
        splits={"train": 1.0},
        batch_size=batch_size,
        num_workers=workers,
        seed=0,
        cache=cache,
    )
    if reader == "mix":
        settings["mix"] = {f"part{p}": {"proportion": 1, "filter": f"part = {p}"} for p in range(3)}
        settings["mix_batching"] = batching
    dm = LanceDataModule(uri, f"mixture_{rows}", **settings)
    dm.setup("fit")
    loader = dm.train_dataloader()
    sampler = dm.samplers["train"]
    rates = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        read, start = 0, None
        for batch in loader:
            if start is None:
                start = time.perf_counter()
            read += len(batch["label"])
        if epoch:  # the first epoch starts the workers
            rates.append(read / (time.perf_counter() - start))
    return {"rows_per_s": rates, "epoch_rows": sampler.num_rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--batching", default="mixed", choices=["mixed", "stratified", "source"])
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "ll-bench-mixture"))
    parser.add_argument("--baseline", default=None, help="another checkout's root, run interleaved (see above)")
    parser.add_argument("--cell", nargs=2, metavar=("READER", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    uri, cache = os.path.join(args.dir, "db"), os.path.join(args.dir, "stages")
    if args.cell:
        reader, workers = args.cell
        out = cell(uri, args.rows, reader, int(workers), args.batching, args.batch_size, args.epochs, cache)
        print(json.dumps(out))
        return
    make_table(uri, args.rows)
    workers = [int(w) for w in args.workers.split(",")]
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    codes = {"this": here, **({"baseline": os.path.abspath(args.baseline)} if args.baseline else {})}
    results: dict[tuple[str, str, int], list[float]] = {}
    paired: dict[tuple[str, int], list[float]] = {}  # each round's mix / split, the two cells run back to back
    loads = []
    for round_ in range(args.rounds):
        for w in workers:
            for code, root in codes.items():
                medians = {}
                for reader in ("split", "mix") if round_ % 2 == 0 else ("mix", "split"):  # alternate who goes first
                    cmd = [sys.executable, os.path.abspath(__file__), "--rows", str(args.rows)]
                    cmd += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
                    cmd += ["--batching", args.batching, "--dir", os.path.abspath(args.dir)]
                    cmd += ["--cell", reader, str(w)]
                    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
                    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, cwd=root)
                    out = json.loads(done.stdout.strip().splitlines()[-1])
                    results.setdefault((code, reader, w), []).extend(out["rows_per_s"])
                    medians[reader] = statistics.median(out["rows_per_s"])
                paired.setdefault((code, w), []).append(medians["mix"] / medians["split"])
        loads.append(os.getloadavg()[0])
    print(
        f"bench_mixture.py at commit {_commit()}: {args.rows:,} rows of 520 B, batch {args.batch_size}, "
        f"mix_batching={args.batching}, {args.rounds} interleaved rounds x {args.epochs - 1} steady epochs; "
        f"load average after each round {', '.join(f'{x:.1f}' for x in loads)}"
    )
    print(
        "| code | workers | one staged split, rows/s | mixture of 3 staged sources, rows/s | mixture / split "
        "| paired: median of the rounds' mix / split (min-max) |"
    )
    print("|---|---|---|---|---|---|")
    for w in workers:
        for code, root in codes.items():
            split, mix = results[(code, "split", w)], results[(code, "mix", w)]
            print(
                f"| {code if code == 'this' else root} | {w} | "
                f"{statistics.median(split) / 1e6:.2f}M ({min(split) / 1e6:.2f}-{max(split) / 1e6:.2f}) | "
                f"{statistics.median(mix) / 1e6:.2f}M ({min(mix) / 1e6:.2f}-{max(mix) / 1e6:.2f}) | "
                f"{statistics.median(mix) / statistics.median(split):.2f} | "
                f"{statistics.median(pairs := paired[(code, w)]):.2f} ({min(pairs):.2f}-{max(pairs):.2f}) |"
            )


if __name__ == "__main__":
    main()
