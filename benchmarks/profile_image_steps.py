"""Where a DataLoader worker's CPU goes on an image batch, step by step, against the bare decode.

Reads one epoch of ``bench_images.py``'s table (make it first: ``python benchmarks/bench_images.py
--rows 50000 --rounds 1 --only lance``) with the default loader and the same decode, after the
decode limit's own run (W forked processes decoding the in-memory JPEG bytes, nothing else), and
prints CPU microseconds an image (thread CPU of each worker's main thread, summed over workers):

* ``gather``: the rows of a batch from the stage (``StagedRows.take_into_tensors``);
* ``transform``: the decode (``image_decode.decode_batch``), to set against the decode limit's;
* ``lend``: its output copied into a reused shared-memory slot (``slots.lend_into_slot``);
* ``rest``: the worker's loop, the hand-over's pickling and queue (thread total less the above);
* the workers' user and system CPU (``getrusage``) and minor faults, the training process's CPU.

Run by hand (a machine shared with other jobs inflates every figure alike, so compare runs made
back to back)::

    python benchmarks/profile_image_steps.py --rows 50000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def decode_limit(db: Path, workers: int, batch: int) -> dict[str, float]:
    """CPU an image of ``workers`` forked processes decoding the table's JPEG bytes (as ``bench_images``)."""
    import image_decode
    import lancedb

    values = lancedb.connect(str(db)).open_table("images").to_arrow().column("image").combine_chunks().to_pylist()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    pids = []
    for w in range(workers):
        pid = os.fork()
        if pid == 0:
            import torch

            torch.set_num_threads(1)
            share = values[w::workers]
            for i in range(0, len(share), batch):
                image_decode.decode_images(share[i : i + batch])
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    n = len(values)
    return {
        "user": (after.ru_utime - before.ru_utime) / n * 1e6,
        "system": (after.ru_stime - before.ru_stime) / n * 1e6,
        "faults": (after.ru_minflt - before.ru_minflt) / n,
    }


def instrument(out_dir: str) -> Any:
    """Wrap the worker's steps with thread-CPU counters; each worker writes its sums after every batch."""
    import lance_lightning.dataset as dataset
    from lance_lightning.stage.reader import StagedRows

    sums: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                sums[name] = sums.get(name, 0.0) + time.thread_time() - start

        return wrapped

    StagedRows.take_into_tensors = timed("gather", StagedRows.take_into_tensors)
    dataset.lend_into_slot = timed("lend", dataset.lend_into_slot)
    getitem = dataset.StagedBatchDataset._getitem

    def counted(self: Any, index: Any) -> Any:
        out = getitem(self, index)
        sums["rows"] = sums.get("rows", 0) + len(index)
        sums["thread"] = time.thread_time()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        sums["user"], sums["system"], sums["faults"] = usage.ru_utime, usage.ru_stime, usage.ru_minflt
        with open(os.path.join(out_dir, f"{os.getpid()}.json"), "w") as fh:
            json.dump(sums, fh)
        return out

    dataset.StagedBatchDataset._getitem = counted
    import image_decode

    return timed("transform", image_decode.decode_batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/lance_lightning_bench_images"))
    args = parser.parse_args()
    import lightning.pytorch  # noqa: F401  (what a training script holds)
    import PIL.Image  # noqa: F401

    from lance_lightning import LanceDataModule

    db = args.dir / f"images_{args.rows}" / "db"
    limit = decode_limit(db, args.workers, 256)
    with tempfile.TemporaryDirectory() as out_dir:
        transform = instrument(out_dir)
        dm = LanceDataModule(
            str(db), "images", columns=["image", "label"], splits={"train": 1.0},
            batch_size=256, num_workers=args.workers, seed=0, transform=transform,
        )  # fmt: skip
        dm.setup("fit")
        dm.samplers["train"].set_epoch(0)
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        rows = sum(len(batch["label"]) for batch in dm.train_dataloader())
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        dm.teardown("fit")
        total: dict[str, float] = {}
        for name in os.listdir(out_dir):
            for key, value in json.loads(Path(out_dir, name).read_text()).items():
                total[key] = total.get(key, 0.0) + value
    n = total.pop("rows")
    us = {k: v / n * 1e6 for k, v in total.items() if k != "faults"}
    rest = us["thread"] - us["gather"] - us["transform"] - us["lend"]
    main_cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / rows * 1e6
    print(f"{rows:,} images in {seconds:.2f} s ({rows / seconds:,.0f}/s), load average {os.getloadavg()[0]:.1f}")
    print(
        f"decode limit ({args.workers} processes): {limit['user'] + limit['system']:.1f} us an image "
        f"(user {limit['user']:.1f}, system {limit['system']:.1f}), {limit['faults']:.2f} minor faults an image"
    )
    print(
        f"workers: {us['user'] + us['system']:.1f} us an image (user {us['user']:.1f}, system {us['system']:.1f}), "
        f"{total['faults'] / n:.2f} minor faults an image"
    )
    print(
        f"  gather {us['gather']:.1f}, transform {us['transform']:.1f}, lend {us['lend']:.1f}, rest {rest:.1f} "
        "(thread CPU, us an image)"
    )
    print(f"training process: {main_cpu:.1f} us an image")


if __name__ == "__main__":
    main()
