"""A stage fill against its two parts done alone: one sequential scan of the rows, one write of the bytes.

Run by hand, after ``bench_throughput.py`` has made its table::

    python benchmarks/bench_fill.py --rows 10000000 --rounds 3

Every round, in one process, on the split ``bench_throughput`` stages (the first 90% of the rows,
``emb`` + ``label``, 520 B a row):

* **scan**: pylance ``to_batches(batch_size=1024)`` of those rows, to tensors (the reference of
  ``bench_throughput.py``'s "staging ≤ 1.5× one scan" line);
* **write**: as many bytes as the stage holds, written into a new file beside the stages from one
  reused 8 MiB buffer, the file's blocks reserved first as the fill reserves them (what this
  machine charges for putting that many new pages in the page cache: no reading, no CRC);
* **fill**: ``ensure_stage`` of the split, the previous stage removed first.

A fill is a scan and a write, overlapped on two threads (``stage/fill.py``), so on a machine whose
write alone costs as much as the scan, no fill can reach 1.5× the scan; the CPU columns say how
much of the machine each took.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lancedb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import (  # noqa: E402
    THROUGHPUT_COLUMNS,
    _environment,
    _git_commit,
    arrow_to_tensors,
    ensure_table,
    train_rows,
)

from lance_lightning.source import TableSource  # noqa: E402
from lance_lightning.stage import ensure_stage, release_stage  # noqa: E402
from lance_lightning.stage.store import directory_bytes  # noqa: E402
from lance_lightning.stage.write import preallocate  # noqa: E402

BATCH = 1024
WRITE_CHUNK = 8 << 20


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(work) -> tuple[float, float]:
    """(wall s, CPU s of this process, all threads) of ``work()``."""
    cpu, start = cpu_seconds(), time.perf_counter()
    work()
    return time.perf_counter() - start, cpu_seconds() - cpu


def scan(lance_path: str, columns: list[str], rows: int) -> None:
    import lance

    seen = 0
    for batch in lance.dataset(lance_path).to_batches(columns=columns, batch_size=BATCH, limit=rows):
        seen += len(arrow_to_tensors(batch)["label"])
    assert seen == rows, (seen, rows)


def write(path: Path, nbytes: int) -> None:
    chunk = memoryview(os.urandom(WRITE_CHUNK))
    with open(path, "wb") as fh:
        preallocate(fh, nbytes, path)  # as the fill does
        for start in range(0, nbytes, WRITE_CHUNK):
            fh.write(chunk[: min(WRITE_CHUNK, nbytes - start)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/lance_lightning_bench", help="database directory (made if missing)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stage-dir", default=None, help="where stages go (default: a new temporary directory)")
    args = parser.parse_args()

    name, _ = ensure_table(args.dir, "throughput", args.rows)
    table = lancedb.connect(args.dir).open_table(name)
    source = TableSource(args.dir, name, table.version).stamped(table)
    columns = list(THROUGHPUT_COLUMNS)
    rows = train_rows(args.rows)
    ids = table.search().select(["_rowid"]).limit(None).to_arrow()["_rowid"].to_numpy()[:rows]
    base = Path(args.stage_dir or tempfile.mkdtemp(prefix="bench-fill-"))
    root, scratch = base / "stages", base / "write-test"
    lance_path = f"{args.dir}/{name}.lance"

    def fill() -> None:
        release_stage(ensure_stage(source, table, ids, columns, root=root, progress=False))

    results: dict[str, list[tuple[float, float]]] = {"scan": [], "write": [], "fill": []}
    try:
        fill()  # this process's first fill, untimed; its size is what the write row writes
        nbytes = directory_bytes(next(p for p in root.iterdir() if not p.name.startswith(".")))
        for round_ in range(args.rounds):
            results["scan"].append(timed(lambda: scan(lance_path, columns, rows)))
            scratch.unlink(missing_ok=True)
            results["write"].append(timed(lambda: write(scratch, nbytes)))
            scratch.unlink()
            shutil.rmtree(root)
            results["fill"].append(timed(fill))
            print(
                f"round {round_ + 1}: "
                + ", ".join(f"{k} {v[-1][0]:.2f} s (CPU {v[-1][1]:.2f} s)" for k, v in results.items()),
                file=sys.stderr,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"bench_fill.py at commit {_git_commit()}")
    print(_environment())
    print(
        f"table {name}: a split of {rows:,} rows of {', '.join(columns)} (520 B a row), a stage of {nbytes:,} bytes; "
        f"{args.rounds} rounds, medians (min–max)\n"
    )
    print("| what | seconds | CPU seconds (all threads) | × the scan |")
    print("|---|---|---|---|")
    reference = statistics.median(w for w, _ in results["scan"])
    for what, runs in results.items():
        walls = [w for w, _ in runs]
        wall = statistics.median(walls)
        cpu = statistics.median(c for _, c in runs)
        print(f"| {what} | {wall:.2f} ({min(walls):.2f}–{max(walls):.2f}) | {cpu:.2f} | {wall / reference:.2f} |")


if __name__ == "__main__":
    main()
