"""Where the default (staged ``uniform``) loader spends its time: fill, 0-worker batches, worker gathers.

Run by hand after ``bench_throughput.py`` has made its table::

    python benchmarks/profile_staged.py --rows 1000000

One process. Prints cProfile's top functions of ``setup("fit")`` with an empty stage root (the fill),
of 400 batches of ``train_dataloader()`` with num_workers=0, and the time of one 16k-row group gather
(what a worker hands over) into private memory, into shared memory as the library does, and into
shared storage allocated directly (as torch's ``default_collate`` does in workers).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import DM_SPLITS, THROUGHPUT_COLUMNS, _git_commit, ensure_table  # noqa: E402


def top(profile: cProfile.Profile, n: int) -> str:
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(n)
    return out.getvalue()


def gathers(values: np.ndarray, pos: np.ndarray, repeats: int = 20) -> list[str]:
    shape = (len(pos), *values.shape[1:])
    dtype = torch.from_numpy(values[:0]).dtype

    def library() -> torch.Tensor:
        tensor = torch.from_numpy(np.empty(0, dtype=values.dtype)).new_empty(shape).share_memory_()
        np.take(values, pos, axis=0, out=tensor.numpy())
        return tensor

    def direct() -> torch.Tensor:
        storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(int(np.prod(shape)))
        tensor = torch.empty(0, dtype=dtype).new(storage).view(shape)
        np.take(values, pos, axis=0, out=tensor.numpy())
        return tensor

    def private() -> torch.Tensor:
        return torch.from_numpy(np.take(values, pos, axis=0))

    lines = []
    for name, fn in [("shared, new_empty().share_memory_() (library)", library), ("shared, _new_shared", direct)]:
        lines.append(_time(name, fn, len(pos), repeats))
    lines.append(_time("private (no shared memory)", private, len(pos), repeats))
    return lines


def _time(name: str, fn, rows: int, repeats: int) -> str:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    seconds = (time.perf_counter() - start) / repeats
    return f"  {name:48s} {seconds * 1e3:6.1f} ms  {rows / seconds / 1e6:5.2f}M rows/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/lance_lightning_bench")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--top", type=int, default=18)
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="profile-staged-")
    os.environ["XDG_CACHE_HOME"] = cache
    from lance_lightning.datamodule import LanceDataModule

    name, _ = ensure_table(args.dir, "throughput", args.rows)
    print(f"profile_staged.py at commit {_git_commit()}, {args.rows:,} rows, load {os.getloadavg()[0]:.2f}")
    try:
        dm = LanceDataModule(args.dir, name, columns=THROUGHPUT_COLUMNS, splits=DM_SPLITS, batch_size=1024)
        profile = cProfile.Profile()
        start = time.perf_counter()
        profile.runcall(dm.setup, "fit")
        print(f"setup('fit') with the fill: {time.perf_counter() - start:.2f} s\n{top(profile, args.top)}")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(0)
        profile, rows = cProfile.Profile(), 0
        start = time.perf_counter()
        profile.enable()
        for i, batch in enumerate(loader):
            rows += len(batch["label"])
            if i == 399:
                break
        profile.disable()
        rate = rows / (time.perf_counter() - start)
        print(f"400 batches, num_workers=0: {rate:,.0f} rows/s (under cProfile)\n{top(profile, args.top)}")
        staged = dm.datasets["train"].staged
        staged.take_into_tensors(np.arange(1))  # maps the files
        values = staged._flat["emb"][1]
        pos = np.random.default_rng(0).permutation(len(staged))[:16384]
        print("one 16k-row group of emb gathered:")
        print("\n".join(gathers(values, pos)))
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
