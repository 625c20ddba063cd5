"""Where the CPU of an image epoch goes: the training process against its DataLoader workers.

Reads one epoch of ``bench_images.py``'s table (make it first: ``python benchmarks/bench_images.py
--rows 50000 --rounds 1 --only lance``) with the default loader and the same decode, and prints the
training process's CPU time (``getrusage(RUSAGE_SELF)``) and the workers' (``RUSAGE_CHILDREN``,
counted once they exit at the end of the epoch), to set against the bare decode's CPU an image::

    python benchmarks/profile_image_cpu.py --rows 50000 --workers 2
    python benchmarks/profile_image_cpu.py --rows 50000 --workers 2 --fresh-output   # without output slots
    python benchmarks/profile_image_cpu.py --rows 50000 --workers 2 --touch   # a loop that reads every page
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/lance_lightning_bench_images"))
    parser.add_argument(
        "--fresh-output",
        action="store_true",
        help="hand each transformed batch over in fresh shared memory (lance_lightning.loader.OUTPUT_SLOTS = False), "
        "torch's way, instead of reused slots: the before of the slots' figure",
    )
    parser.add_argument(
        "--touch",
        action="store_true",
        help="read one byte of every 4 KiB page of each batch's images (as a step that uses them does): the "
        "training process then maps what it receives, and its RSS says so",
    )
    args = parser.parse_args()
    import lightning.pytorch  # noqa: F401  (what a training script holds)
    import PIL.Image  # noqa: F401

    import lance_lightning.loader
    from lance_lightning import LanceDataModule

    lance_lightning.loader.OUTPUT_SLOTS = not args.fresh_output

    dm = LanceDataModule(
        str(args.dir / f"images_{args.rows}" / "db"), "images", columns=["image", "label"], splits={"train": 1.0},
        batch_size=256, num_workers=args.workers, seed=0, transform="image_decode.decode_batch",
    )  # fmt: skip
    dm.setup("fit")
    dm.samplers["train"].set_epoch(0)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    rows = 0
    for batch in dm.train_dataloader():
        rows += len(batch["label"])
        if args.touch:
            int(batch["image"].view(-1)[::4096].sum())
    seconds = time.perf_counter() - start
    after, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    main_user, main_sys = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    print(f"{rows:,} images in {seconds:.2f} s: {rows / seconds:,.0f}/s")
    print(f"training process: {main_user + main_sys:.2f} s CPU ({(main_user + main_sys) / seconds:.0%} of a core)")
    print(
        f"workers: user {workers.ru_utime:.2f} s, system {workers.ru_stime:.2f} s: "
        f"{(workers.ru_utime + workers.ru_stime) / rows * 1e6:.0f} us of CPU an image; "
        f"{workers.ru_minflt / rows:.1f} minor page faults an image, "
        f"{workers.ru_nvcsw + workers.ru_nivcsw:,} context switches"
    )
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    mb = {k: int(status[k].split()[0]) // 1024 for k in ("VmHWM", "VmRSS", "RssShmem") if k in status}
    print(
        f"training process: peak RSS {mb.get('VmHWM')} MB, RSS {mb.get('VmRSS')} MB "
        f"of it shared memory {mb.get('RssShmem')} MB"
    )
    dm.teardown("fit")


if __name__ == "__main__":
    main()
