"""What a weighted epoch order costs: seconds to make one epoch's order, bytes held a row, peak bytes.

No table: the order is a pure function of (weights, seed, epoch). For each row count and mode it
makes ``--epochs`` epochs' orders and reports the median time, the bytes the order holds
(``order.nbytes``: positions + weights) and the peak of NumPy allocations while one is made
(``tracemalloc``, which NumPy reports to), each per split row. Compare with the rows' own bytes
(520 B a row in bench_throughput.py's table).

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
    times = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        order = WeightedOrder(weights, seed=0, epoch=epoch, **kw)
        order.positions(np.arange(min(16384, order.num_rows)))
        times.append(time.perf_counter() - t0)
    held = order.nbytes
    del order
    tracemalloc.start()
    order = WeightedOrder(weights, seed=0, epoch=epochs, **kw)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"s": statistics.median(times), "held": held / rows, "peak": peak / rows, "draws": order.num_rows}


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
    print("| rows | mode | draws | s an epoch's order | bytes held a row | peak bytes a row while made |")
    print("|---|---|---|---|---|---|")
    for rows in [int(r) for r in args.rows.split(",")]:
        for name, mode in MODES.items():
            m = measure(rows, mode, args.epochs)
            print(f"| {rows:,} | {name} | {m['draws']:,} | {m['s']:.2f} | {m['held']:.1f} | {m['peak']:.1f} |")
        uniform = uniform_slice_s(rows, args.epochs)
        print(f"| {rows:,} | uniform (Feistel, every position, for scale) | {rows:,} | {uniform:.2f} | 0 | 0 |")


if __name__ == "__main__":
    main()
