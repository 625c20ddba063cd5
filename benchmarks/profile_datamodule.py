"""Where LanceDataModule's time goes, batch by batch, in each shuffle mode (num_workers=0).

Run by hand after ``bench_throughput.py`` has made its table (or let this script make it)::

    python benchmarks/profile_datamodule.py --rows 1000000
    python benchmarks/profile_datamodule.py --rows 1000000 --cprofile 15   # plus cProfile's top 15

The datamodule reads the same splits as in bench_throughput.py (train: the first 90% of the
table). For each mode it times, per batch, the steps ``LanceBatchDataset.read_arrow`` and
``__getitem__`` take (the sampler's next batch, the sortedness check, ``np.unique``,
``tolist``, lancedb's ``take_row_ids(...).select(...).to_arrow()``, the Arrow ``take`` that puts
rows back in the sampler's order, ``batch_to_tensors``), then the same batches read
end to end through ``dataset[ids]`` and through a ``DataLoader`` (num_workers=0), and the raw
read for that mode: ``take_row_ids`` of the sorted ids plus a minimal Arrow-to-tensor step.
The step timings mirror the package's code; they are not hooks inside it, so check that
their sum matches the end-to-end time before trusting the split.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_throughput import DM_SPLITS, THROUGHPUT_COLUMNS, arrow_to_tensors, ensure_table  # noqa: E402

from lance_lightning.convert import batch_to_tensors  # noqa: E402
from lance_lightning.datamodule import LanceDataModule  # noqa: E402

STEPS = ["sampler", "sorted check", "np.unique", "tolist", "lancedb take", "arrow take", "batch_to_tensors"]


def step_times(dm: LanceDataModule, batches: int) -> tuple[dict[str, float], list[np.ndarray], float]:
    """Seconds per step summed over ``batches`` batches; the batches' ids; the epoch order's cost."""
    sampler, dataset = dm.samplers["train"], dm.datasets["train"]
    table, columns = dataset.table(), dataset.columns
    t0 = time.perf_counter()
    sampler.epoch_positions()
    epoch_order_s = time.perf_counter() - t0
    totals: dict[str, float] = defaultdict(float)
    kept = []
    iterator = iter(sampler)
    pending = [next(iterator)]  # the first next() computes the epoch order: timed above, not here
    for _ in range(batches):
        t = time.perf_counter()
        try:
            row_ids = pending.pop() if pending else next(iterator)
        except StopIteration:
            break
        t1 = time.perf_counter()
        ids = np.asarray(row_ids, dtype=np.uint64)
        is_sorted = not (len(ids) > 1 and not np.all(ids[1:] > ids[:-1]))
        t2 = time.perf_counter()
        if is_sorted:
            unique, inverse = ids, None
        else:
            unique, inverse = np.unique(ids, return_inverse=True)
        t3 = time.perf_counter()
        as_list = unique.tolist()
        t4 = time.perf_counter()
        result = table.take_row_ids(as_list).select(columns).to_arrow()
        t5 = time.perf_counter()
        if inverse is not None:
            result = result.take(pa.array(inverse))
        t6 = time.perf_counter()
        batch_to_tensors(result)
        t7 = time.perf_counter()
        for name, dt in zip(STEPS, (t1 - t, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)):
            totals[name] += dt
        kept.append(ids)
    return dict(totals), kept, epoch_order_s


def end_to_end(dm: LanceDataModule, batches: list[np.ndarray]) -> float:
    dataset = dm.datasets["train"]
    t0 = time.perf_counter()
    for ids in batches:
        dataset[ids]
    return time.perf_counter() - t0


def raw_read(dm: LanceDataModule, batches: list[np.ndarray]) -> float:
    """take_row_ids of the sorted ids + minimal tensors: the ceiling for this mode's batches."""
    dataset = dm.datasets["train"]
    table, columns = dataset.table(), dataset.columns
    sorted_batches = [np.sort(ids).tolist() for ids in batches]
    t0 = time.perf_counter()
    for ids in sorted_batches:
        arrow_to_tensors(table.take_row_ids(ids).select(columns).to_arrow())
    return time.perf_counter() - t0


def loader_time(dm: LanceDataModule, batches: int, profile: cProfile.Profile | None = None) -> float:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    iterator = iter(loader)
    next(iterator)  # start-up excluded, as in bench_throughput
    t0 = time.perf_counter()
    if profile is not None:
        profile.enable()
    for i, _ in enumerate(iterator, start=2):
        if i >= batches:
            break
    if profile is not None:
        profile.disable()
    return (time.perf_counter() - t0) / max(1, batches - 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/tmp/lance_lightning_bench")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=100, help="batches timed per mode and pass")
    parser.add_argument("--repeats", type=int, default=3, help="passes per mode; the best is reported")
    parser.add_argument("--modes", default="uniform,block,none")
    parser.add_argument("--cprofile", type=int, default=0, help="print cProfile's top N functions per mode")
    args = parser.parse_args(argv)

    name, made = ensure_table(args.dir, "throughput", args.rows)
    print(f"table {name}: " + (f"made in {made:.1f} s" if made else "reused"), file=sys.stderr)
    lines = [
        f"ms per batch of {args.batch_size} (best of {args.repeats} passes of {args.batches} batches), "
        "num_workers=0; % of the step sum in parentheses",
        "",
        "| mode | " + " | ".join(STEPS) + " | step sum | dataset[ids] | DataLoader w0 | raw read | "
        "overhead vs raw | epoch order (once/epoch) |",
        "|---" * (len(STEPS) + 7) + "|",
    ]
    profiles = []
    for mode in args.modes.split(","):
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
        best: dict[str, float] = {}
        best_e2e = best_raw = best_loader = best_order = float("inf")
        for repeat in range(args.repeats):
            dm.samplers["train"].set_epoch(repeat)
            steps, batches, order_s = step_times(dm, args.batches)
            n = len(batches)
            for key, value in steps.items():
                best[key] = min(best.get(key, float("inf")), value / n)
            best_order = min(best_order, order_s)
            best_e2e = min(best_e2e, end_to_end(dm, batches) / n)
            best_raw = min(best_raw, raw_read(dm, batches) / n)
            best_loader = min(best_loader, loader_time(dm, args.batches))
        total = sum(best.values())
        cells = [f"{best[s] * 1e3:.2f} ({100 * best[s] / total:.0f}%)" for s in STEPS]
        lines.append(
            f"| {mode} | "
            + " | ".join(cells)
            + f" | {total * 1e3:.2f} | {best_e2e * 1e3:.2f} | {best_loader * 1e3:.2f} | {best_raw * 1e3:.2f} | "
            f"{100 * (best_loader / best_raw - 1):+.0f}% | {best_order * 1e3:.0f} ms |"
        )
        print(f"  {mode}: done", file=sys.stderr)
        if args.cprofile:
            profile = cProfile.Profile()
            loader_time(dm, args.batches, profile)
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.cprofile)
            profiles.append((mode, out.getvalue()))
    print("\n".join(lines))
    for mode, text in profiles:
        body = text[text.find("   ncalls") :].rstrip()
        print(f"\ncProfile, shuffle={mode!r}, DataLoader num_workers=0, {args.batches} batches, by tottime:\n{body}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
