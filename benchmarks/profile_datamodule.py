"""LanceDataModule's own overhead over the raw read of the same rows, per shuffle mode (num_workers=0).

Run by hand after ``bench_throughput.py`` has made its table (or let this script make it)::

    python benchmarks/profile_datamodule.py --rows 1000000
    python benchmarks/profile_datamodule.py --rows 1000000 --cprofile 15   # plus cProfile's top 15

For each mode, one process alternates two ways of producing the *same batches* (the same rows,
in the same batches, as ``{"emb", "label"}`` tensors):

* ``DataLoader w0``: ``dm.train_dataloader()`` with num_workers=0, everything included
  (sampler, order, position→offset map, read planning, conversion, gathers, DataLoader);
* ``raw read``: the lancedb calls that mode needs, written out by hand with nothing of
  lance_lightning in the timed loop: per batch ``take_offsets`` of the sorted offsets (uniform),
  or per group of batches one ``search().offset().limit().to_batches()`` per run of rows, the
  unwanted rows filtered out, minimal tensors, and a gather per batch (block, none).

The batches are taken from the sampler before timing, so the raw read does no planning the
datamodule does not also do. ``overhead`` = DataLoader time / raw time - 1, best of ``--repeats``
alternating passes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_throughput import DM_SPLITS, THROUGHPUT_COLUMNS, arrow_to_tensors, ensure_table  # noqa: E402

from lance_lightning.datamodule import LanceDataModule  # noqa: E402
from lance_lightning.dataset import BatchGroup  # noqa: E402

MAX_GAP = 64  # wanted offsets further apart start a new range, as lance_lightning.reads does


def planned_items(dm: LanceDataModule, batches: int) -> list[list[np.ndarray]]:
    """The sampler's items for the first ``batches`` batches, as lists of batches of table offsets."""
    sampler, dataset = dm.samplers["train"], dm.datasets["train"]
    items, count = [], 0
    for item in sampler:
        group = list(item) if isinstance(item, BatchGroup) else [item]
        items.append([dataset.offsets(b) for b in group])
        count += len(group)
        if count >= batches:
            break
    return items


def raw_read(table, columns: list[str], items: list[list[np.ndarray]]) -> tuple[float, int]:
    """Seconds and batches for the hand-written read of ``items`` (see the module docstring)."""
    t0, n = time.perf_counter(), 0
    for group in items:
        if len(group) == 1 and len(group[0]) and np.diff(group[0]).max(initial=0) > MAX_GAP:
            arrow_to_tensors(table.take_offsets(np.sort(group[0]).tolist()).select(columns).to_arrow())
            n += 1
            continue
        union, where = np.unique(np.concatenate(group), return_inverse=True)
        cuts = np.flatnonzero(np.diff(union) > MAX_GAP) + 1
        pieces = []
        for run in np.split(union, cuts):
            first, span = int(run[0]), int(run[-1] - run[0]) + 1
            query = table.search().select(columns).offset(first).limit(span)
            piece = pa.Table.from_batches(list(query.to_batches(span)))
            if len(run) != span:
                keep = np.zeros(span, dtype=bool)
                keep[run - first] = True
                piece = piece.filter(pa.array(keep))
            pieces.append(piece)
        tensors = arrow_to_tensors(pa.concat_tables(pieces))
        if np.array_equal(where, np.arange(len(where))):  # already in table order: slices, no gather
            gathered = tensors
        else:
            index = torch.from_numpy(where)
            gathered = {name: t.index_select(0, index) for name, t in tensors.items()}
        lo = 0
        for batch in group:
            {name: t[lo : lo + len(batch)] for name, t in gathered.items()}
            lo += len(batch)
            n += 1
    return time.perf_counter() - t0, n


def loader_time(dm: LanceDataModule, batches: int, profile: cProfile.Profile | None = None) -> tuple[float, int]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    n = 0
    t0 = time.perf_counter()
    if profile is not None:
        profile.enable()
    for _ in loader:
        n += 1
        if n >= batches:
            break
    if profile is not None:
        profile.disable()
    return time.perf_counter() - t0, n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/tmp/lance_lightning_bench")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=256, help="batches timed per mode and pass")
    parser.add_argument("--repeats", type=int, default=3, help="alternating passes per mode; the best is reported")
    parser.add_argument("--modes", default="uniform,block,none")
    parser.add_argument("--cprofile", type=int, default=0, help="print cProfile's top N functions per mode")
    args = parser.parse_args(argv)

    name, made = ensure_table(args.dir, "throughput", args.rows)
    print(f"table {name}: " + (f"made in {made:.1f} s" if made else "reused"), file=sys.stderr)
    lines = [
        f"ms per batch of {args.batch_size}, best of {args.repeats} alternating passes, num_workers=0",
        "",
        "| mode | batches | DataLoader w0 ms | raw read ms | overhead |",
        "|---|---|---|---|---|",
    ]
    profiles = []
    for mode in args.modes.split(","):
        batches = args.batches
        dm = LanceDataModule(
            args.dir,
            name,
            columns=THROUGHPUT_COLUMNS,
            splits=DM_SPLITS,
            batch_size=args.batch_size,
            shuffle=mode,
            num_workers=0,
        )
        dm.setup("fit")
        dm.samplers["train"].set_epoch(0)
        items = planned_items(dm, batches)
        table, columns = dm.datasets["train"].table(), list(THROUGHPUT_COLUMNS)
        best_dm = best_raw = float("inf")
        for _ in range(args.repeats):
            seconds, n = loader_time(dm, batches)
            best_dm = min(best_dm, seconds / n)
            seconds, n = raw_read(table, columns, items)
            best_raw = min(best_raw, seconds / n)
        overhead = 100 * (best_dm / best_raw - 1)
        lines.append(f"| {mode} | {batches} | {best_dm * 1e3:.2f} | {best_raw * 1e3:.2f} | {overhead:+.1f}% |")
        print(f"  {mode}: done", file=sys.stderr)
        if args.cprofile:
            profile = cProfile.Profile()
            loader_time(dm, batches, profile)
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.cprofile)
            profiles.append((mode, out.getvalue()))
    print("\n".join(lines))
    for mode, text in profiles:
        body = text[text.find("   ncalls") :].rstrip()
        print(f"\ncProfile, shuffle={mode!r}, DataLoader num_workers=0, by tottime:\n{body}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
