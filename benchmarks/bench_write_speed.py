"""How fast this machine can make a stage's bytes: the floor under a stage fill, without Lance.

A fill reads the split from the table and writes it into new files (plus a CRC-32 of every 64 MiB
segment). This script times the writing half alone, on the same sizes: ``write()`` of ``--gb`` GB
in 8 MiB chunks to a new file in each ``--to`` directory (the disk where stages live by default,
and ``/dev/shm``: memory, no write-back), and ``zlib.crc32`` over the same bytes::

    python benchmarks/bench_write_speed.py --gb 4.7                     # the 10M-row stage's size
    python benchmarks/bench_write_speed.py --gb 4.7 --to /tmp /dev/shm --rounds 3
    python benchmarks/bench_write_speed.py --gb 4.5 --to /tmp --rounds 3 --preallocate

``--preallocate`` also times each write with the file's blocks reserved first, as a fill does for its
column files (``lance_lightning.stage.write.preallocate``: ``fallocate``), interleaved with the plain one.

Each file is deleted after its round. Wall and system CPU time are reported per round: on a VM,
pages the guest touches for the first time can cost far more than recycled ones, so the rounds
differ, and the first is usually the fill's case (a stage is new memory).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import time
import zlib
from pathlib import Path

CHUNK = 8 << 20


def _sys_s() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def time_write(directory: Path, size: int, chunk: bytes, preallocated: bool = False) -> tuple[float, float]:
    """Seconds of wall and of system CPU to write ``size`` bytes to a new file in ``directory``."""
    fd, name = tempfile.mkstemp(dir=directory, prefix="bench-write-")
    try:
        began, sys_began = time.perf_counter(), _sys_s()
        with os.fdopen(fd, "wb", buffering=0) as fh:
            if preallocated:
                from lance_lightning.stage.write import preallocate

                preallocate(fh, size, Path(name))
            for _ in range(size // len(chunk)):
                fh.write(chunk)
        return time.perf_counter() - began, _sys_s() - sys_began
    finally:
        os.unlink(name)


def time_crc(size: int, chunk: bytes) -> float:
    began, crc = time.perf_counter(), 0
    for _ in range(size // len(chunk)):
        crc = zlib.crc32(chunk, crc)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=4.7, help="GB written a round (default: the 10M-row stage)")
    parser.add_argument("--to", nargs="+", default=[tempfile.gettempdir(), "/dev/shm"], help="directories")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--preallocate", action="store_true", help="also time writes to preallocated files")
    args = parser.parse_args()
    size = int(args.gb * 1e9) // CHUNK * CHUNK
    chunk = os.urandom(CHUNK)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    print(f"bench_write_speed.py at commit {commit or '?'}: {size / 1e9:.2f} GB in {CHUNK >> 20} MiB writes")
    print(f"load average before: {os.getloadavg()}")
    for round_ in range(1, args.rounds + 1):
        for directory in args.to:
            for preallocated in (False, True) if args.preallocate else (False,):
                wall, system = time_write(Path(directory), size, chunk, preallocated)
                rate = size / wall / 1e9
                how = " (preallocated)" if preallocated else ""
                print(
                    f"round {round_}: write() to {directory}{how}: {wall:.2f} s ({rate:.2f} GB/s), "
                    f"{system:.2f} s system"
                )
        crc = time_crc(size, chunk)
        print(f"round {round_}: zlib.crc32 of the same bytes: {crc:.2f} s ({size / crc / 1e9:.2f} GB/s)")


if __name__ == "__main__":
    main()
