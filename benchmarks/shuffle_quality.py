"""What each shuffle mode costs in randomness, measured on the orders the sampler really yields.

Run by hand::

    python benchmarks/shuffle_quality.py                       # 1M rows, batch 1024, world size 1
    python benchmarks/shuffle_quality.py --world-size 8 --block-size 16384

No table is read: the orders come from ``LanceBatchSampler`` (the pure functions of
``lance_lightning.sharding``), so the figures are exact for any table of ``--rows`` rows.
Per mode, over the batches of rank 0 in one epoch:

* ``nn gap``: mean distance, in table rows, from a row to its nearest neighbour in the same
  batch, as a share of the uniform shuffle's (1.0 = as spread as uniform);
* ``regions``: distinct table regions of ``--region`` rows that a batch touches (uniform: about
  ``batch_size`` when the table has many regions);
* ``label entropy``: for a table written in label order (``--classes`` labels, one after the
  other: the worst case), the entropy of a batch's labels over log(classes) (1.0 = every batch
  as mixed as the whole table);
* ``epoch overlap``: share of a batch's rows that shared a batch in the previous epoch as well
  (how much batch composition repeats across epochs; uniform: about batch_size / rows);
* ``rank corr``: Spearman correlation of a row's place in the epoch with its place in the table
  (0 = no trace of table order left).
"""

from __future__ import annotations

import argparse

import numpy as np

from lance_lightning.sampler import LanceBatchSampler
from lance_lightning.sharding import DEFAULT_BLOCK_SIZE, DEFAULT_WINDOW_BLOCKS


def rank0_batches(args: argparse.Namespace, mode: str, epoch: int) -> list[np.ndarray]:
    sampler = LanceBatchSampler(
        args.rows,
        batch_size=args.batch_size,
        num_replicas=args.world_size,
        rank=0,
        shuffle=mode,
        seed=0,
        block_size=args.block_size,
        window_blocks=args.window_blocks,
    )
    sampler.set_epoch(epoch)
    return [b for b in sampler if len(b) == args.batch_size]


def nn_gap(batches: list[np.ndarray]) -> float:
    gaps = []
    for b in batches:
        d = np.diff(np.sort(b))
        nearest = np.minimum(np.r_[d, np.inf], np.r_[np.inf, d])
        gaps.append(nearest[np.isfinite(nearest)].mean())
    return float(np.mean(gaps))


def label_entropy(batches: list[np.ndarray], rows: int, classes: int) -> float:
    out = []
    for b in batches:
        counts = np.bincount(b * classes // rows, minlength=classes)
        p = counts[counts > 0] / len(b)
        out.append(-(p * np.log(p)).sum() / np.log(classes))
    return float(np.mean(out))


def epoch_overlap(previous: list[np.ndarray], current: list[np.ndarray], rows: int) -> float:
    batch_of = np.full(rows, -1)
    for i, b in enumerate(previous):
        batch_of[b] = i
    shared = []
    for b in current:
        ids = batch_of[b]
        _, counts = np.unique(ids[ids >= 0], return_counts=True)
        shared.append(counts.max() / len(b) if len(counts) else 0.0)
    return float(np.mean(shared))


def rank_correlation(batches: list[np.ndarray]) -> float:
    order = np.concatenate(batches)
    place = np.empty(len(order))
    place[np.argsort(order)] = np.arange(len(order))
    return float(np.corrcoef(place, np.arange(len(order)))[0, 1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE)
    parser.add_argument("--window-blocks", type=int, default=DEFAULT_WINDOW_BLOCKS)
    parser.add_argument("--region", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args(argv)
    print(
        f"rows={args.rows:,} batch_size={args.batch_size} world_size={args.world_size} "
        f"block_size={args.block_size} window_blocks={args.window_blocks} (rank 0, epochs 0 and 1)\n"
    )
    header = "| mode | nn gap (rows) | x uniform | regions / batch | label entropy | epoch overlap | rank corr |"
    print(header)
    print("|---|---|---|---|---|---|---|")
    uniform_gap = None
    for mode in ("uniform", "block", "none"):
        first, second = rank0_batches(args, mode, 0), rank0_batches(args, mode, 1)
        gap = nn_gap(second)
        uniform_gap = uniform_gap or gap
        regions = np.mean([len(np.unique(b // args.region)) for b in second])
        print(
            f"| {mode} | {gap:,.1f} | {gap / uniform_gap:.3f} | {regions:,.1f} | "
            f"{label_entropy(second, args.rows, args.classes):.3f} | {epoch_overlap(first, second, args.rows):.4f} | "
            f"{rank_correlation(second):+.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
