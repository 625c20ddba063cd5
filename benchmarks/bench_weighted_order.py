"""What a weighted epoch order costs: seconds to its first slice and to every position of an epoch,
bytes held a row, peak bytes a row.

No table: the order is a pure function of (weights, seed, epoch). For each row count and mode it
makes ``--epochs`` epochs' orders and reports the median time to the first 16,384 positions (what an
epoch's first batch waits for) and to every position of the epoch, 16,384 at a time as the sampler
asks, the bytes the order holds (``order.nbytes``) and the peak of NumPy allocations while one is
made (``tracemalloc``, which NumPy reports to), each per split row. Compare with the rows' own bytes
(520 B a row in bench_throughput.py's table) and with a staged read (about 0.28 us a row there).

    python benchmarks/bench_weighted_order.py --rows 1000000,10000000
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import tracemalloc

import numpy as np

from lance_lightning.orders import UniformOrder, WeightedOrder

MODES = {
    "permutation": {},
    "permutation, half the rows": {"samples": 0.5},
    "replacement, rows draws": {"replacement": True, "samples": 1.0},
}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def measure(rows: int, mode: dict, epochs: int) -> dict[str, float]:
    weights = np.random.default_rng(0).random(rows)
    weights[::1000] = 0  # a few rows never drawn
    kw = dict(mode)
    if "samples" in kw:
        kw["samples"] = int(kw["samples"] * np.count_nonzero(weights))
    first, whole = [], []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        order = WeightedOrder(weights, seed=0, epoch=epoch, **kw)
        for start in range(0, order.num_rows, 16384):
            order.positions(np.arange(start, min(order.num_rows, start + 16384)))
            if not start:
                first.append(time.perf_counter() - t0)
        whole.append(time.perf_counter() - t0)
    held = order.nbytes
    del order
    tracemalloc.start()
    order = WeightedOrder(weights, seed=0, epoch=epochs, **kw)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "first": statistics.median(first),
        "s": statistics.median(whole),
        "held": held / rows,
        "peak": peak / rows,
        "draws": order.num_rows,
    }


def uniform_slice_s(rows: int, epochs: int) -> float:
    """The uniform order's cost for the same epoch, computed slice by slice (its positions, 16k at a time)."""
    times = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        order = UniformOrder(rows, seed=0, epoch=epoch)
        for start in range(0, rows, 16384):
            order.positions(np.arange(start, min(rows, start + 16384)))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1000000,10000000", help="comma-separated split row counts")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    print(f"bench_weighted_order.py at commit {_commit()}; {args.epochs} epochs a cell, median")
    print("| rows | mode | draws | s to the first 16k | s a whole epoch | us a draw | B held a row | peak B a row |")
    print("|---|---|---|---|---|---|---|---|")
    for rows in [int(r) for r in args.rows.split(",")]:
        for name, mode in MODES.items():
            m = measure(rows, mode, args.epochs)
            print(
                f"| {rows:,} | {name} | {m['draws']:,} | {m['first']:.3f} | {m['s']:.3f} | "
                f"{1e6 * m['s'] / max(m['draws'], 1):.3f} | {m['held']:.1f} | {m['peak']:.1f} |"
            )
        uniform = uniform_slice_s(rows, args.epochs)
        print(
            f"| {rows:,} | uniform (Feistel, for scale) | {rows:,} | | {uniform:.3f} | "
            f"{1e6 * uniform / rows:.3f} | 0 | 0 |"
        )


if __name__ == "__main__":
    main()
