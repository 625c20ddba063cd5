"""Neighbours (issue 32): mining time exact vs index vs the machine's brute-force limit, and the
train loader's rows/s with ``k`` neighbours a row against the same loader without.

    python benchmarks/bench_neighbors.py --rows 100000 --dim 128 --k 10
    python benchmarks/bench_neighbors.py --rows 1000000 --sample 8000 --only limit,exact,index   # 1M: ~7 min quiet

Mining (one table of ``--rows`` clustered ``--dim``-d float32 vectors, an IVF-PQ index on it):

* ``limit``: the brute-force floor of this machine: blocks of float32 matrix products and a top-k
  (``np.argpartition``) per block, vectors already in memory, nothing excluded, no ordering of ties;
* ``exact``: ``mine(mode="exact")``: the split's vectors read from the table, then
  :func:`lance_lightning.neighbors.exact_neighbors` (exact, deterministic tie order);
* ``index``: the index build (timed apart), then ``mine(mode="index")`` with its recall@k against
  ``exact`` on 1,000 sampled rows (computed here).

``--sample S`` (for 1M rows, where exact mining takes hours on 2 cores): each of the three is run
for ``S`` sampled query rows only, each searched against ALL the rows, through the package's own
mining (``mine(..., queries=...)``), and its search time scaled linearly by ``rows / S``: the search
is linear in the queries (each costs one pass over every row, or over the same index partitions).
The vectors' read is paid once whatever the queries: each pass is run for one query first, right
before the sample (the same page cache), and that time is added once, unscaled. The
index build is timed in full; index mode's recall@k is measured against exact on the sample.
Checked against full runs at 20k and 100k rows, roughly (a busy machine): docs/guides/neighbors.md.
CPU seconds (every thread of the process) are reported beside the wall seconds: they move less with load.

Loader: ``LanceDataModule(columns=["id", "x"], shuffle="uniform")`` read for ``--epochs`` epochs of
at most ``--batches`` batches of ``--batch-size`` (the first batch, with the workers' start, not
counted), with ``neighbors={"column": "x", "k": --loader-k}`` and without, at each of ``--workers``,
in ``--rounds`` paired rounds (with and without one after the other, the order alternating); rows/s
counts the batch's rows (a batch with neighbours gathers ``k + 1`` times as many). A ``--dir`` kept
from an earlier run is reused (its table, stages and mined lists): ``--only loader`` then skips the mining.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def make_table(uri: str, rows: int, dim: int, seed: int = 0):
    import lancedb
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, rows // 1000), dim)).astype(np.float32)
    db = lancedb.connect(uri)
    table = None
    for lo in range(0, rows, 262_144):
        n = min(262_144, rows - lo)
        x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
        data = pa.table(
            {
                "id": np.arange(lo, lo + n, dtype=np.int64),
                "x": pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).ravel()), dim),
                "label": (np.arange(lo, lo + n) % 10).astype(np.int64),
            }
        )
        table = db.create_table("vectors", data) if table is None else table
        if lo:
            table.add(data)
    return table


def brute_force_limit(x: np.ndarray, k: int, block: int = 4096, queries: np.ndarray | None = None) -> float:
    """Seconds of the bare blocked matmul + top-k over every row (the floor any exact search pays);
    with ``queries`` (positions), of those rows' searches against every row."""
    start = time.perf_counter()
    sq = np.einsum("ij,ij->i", x, x)
    q_all = np.arange(len(x)) if queries is None else np.asarray(queries)
    for q0 in range(0, len(q_all), block):
        q = x[q_all[q0 : q0 + block]]
        best = np.full((len(q), k), np.inf, dtype=np.float32)
        for r0 in range(0, len(x), block):
            d = np.concatenate([best, sq[None, r0 : r0 + block] - 2 * (q @ x[r0 : r0 + block].T)], axis=1)
            best = np.take_along_axis(d, np.argpartition(d, k - 1, axis=1)[:, :k], axis=1)
    return time.perf_counter() - start


def recall(found: np.ndarray, reference: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, reference)]))


class Clock:
    """Wall and CPU seconds (this process, every thread: BLAS, lance) since it was made; the CPU
    figure changes less with other jobs on the machine."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def __call__(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def build_index(table, rows: int, dim: int) -> None:
    """Build the IVF-PQ index on ``x`` (sqrt(rows) partitions up to 1,024, dim/8 sub-vectors)."""
    from lancedb.index import IvfPq

    partitions = max(1, min(1024, int(np.sqrt(rows))))
    table.create_index("x", config=IvfPq(num_partitions=partitions, num_sub_vectors=max(1, dim // 8)))


def mine_times(args: argparse.Namespace, uri: str, table) -> dict:
    from lance_lightning.neighbors.mine import mine, read_split_columns, vectors_of
    from lance_lightning.neighbors.spec import NeighborSpec
    from lance_lightning.reads import scan_row_ids

    if args.sample:
        return sampled_mine_times(args, table)
    out: dict = {}
    row_ids = np.sort(scan_row_ids(table))
    x = vectors_of(read_split_columns(table, row_ids, ["x"]).column("x"), "x", "vectors")
    only = set(args.only.split(","))
    exact = None
    if "limit" in only:
        clock = Clock()
        brute_force_limit(x, args.k)
        out["limit_s"], out["limit_cpu_s"] = clock()
        print(f"brute-force limit: {out['limit_s']:.1f} s (CPU {out['limit_cpu_s']:.1f} s)", flush=True)
    if "exact" in only:
        clock = Clock()
        exact = mine(NeighborSpec(column="x", k=args.k, mode="exact"), table, row_ids, mode="exact")
        out["exact_s"], out["exact_cpu_s"] = clock()
        print(f"exact mining: {out['exact_s']:.1f} s (CPU {out['exact_cpu_s']:.1f} s)", flush=True)
    if "index" in only:
        clock = Clock()
        build_index(table, len(x), args.dim)
        out["index_build_s"], out["index_build_cpu_s"] = clock()
        clock = Clock()
        spec = NeighborSpec(column="x", k=args.k, mode="index", candidates=args.candidates)
        found = mine(spec, table, row_ids, mode="index")
        out["index_s"], out["index_cpu_s"] = clock()
        sample = np.random.default_rng(1).choice(len(x), size=min(1000, len(x)), replace=False)
        if exact is None:
            from lance_lightning.neighbors import exact_neighbors

            reference = exact_neighbors(x, args.k, queries=sample).ids
        else:
            reference = exact[sample]
        out["index_recall"] = recall(found[sample], reference, args.k)
        print(
            f"index: build {out['index_build_s']:.1f} s (CPU {out['index_build_cpu_s']:.1f}), mining "
            f"{out['index_s']:.1f} s (CPU {out['index_cpu_s']:.1f}), "
            f"recall@{args.k} {out['index_recall']:.3f}",
            flush=True,
        )
    return out


def sampled_mine_times(args: argparse.Namespace, table) -> dict:
    """``--sample S``: the mining of every row estimated from ``S`` sampled query rows (see the module).

    Each mode's pass is the package's own (``mine(..., queries=sample)``: the same reads, search
    and exclusions, only fewer queries), searched against ALL the rows. Reading the split's vectors
    is paid once whatever the queries, so it is timed apart and added once; the search is linear in
    the queries (each query costs the same: one pass over every row, exact, or over the same index
    partitions, index), so its sampled time is scaled by ``rows / S``. The index build is timed in full.
    """
    from lance_lightning.neighbors.mine import mine, read_split_columns, vectors_of
    from lance_lightning.neighbors.spec import NeighborSpec
    from lance_lightning.reads import scan_row_ids

    out: dict = {"sample": args.sample}
    only = set(args.only.split(","))
    row_ids = np.sort(scan_row_ids(table))
    n = len(row_ids)
    sample = np.sort(np.random.default_rng(1).choice(n, size=min(args.sample, n), replace=False))
    scale = n / len(sample)
    clock = Clock()
    x = vectors_of(read_split_columns(table, row_ids, ["x"]).column("x"), "x", "vectors")
    out["read_s"], out["read_cpu_s"] = clock()

    def scaled_pass(out: dict, name: str, run) -> tuple[np.ndarray, float, float]:
        """``run(queries)`` for one query, then for the sample, one right after the other: the
        first is the part paid once (the read, under the same page cache as the second); the
        difference is the sample's search, scaled by ``rows / S``."""
        clock = Clock()
        run(sample[:1])
        fixed, fixed_cpu = clock()
        clock = Clock()
        result = run(sample)
        took, cpu = clock()
        out[f"{name}_sample_s"] = took
        out[f"{name}_s"] = fixed + max(took - fixed, 0.0) * scale
        out[f"{name}_cpu_s"] = fixed_cpu + max(cpu - fixed_cpu, 0.0) * scale
        return result, took, fixed

    pilot = sample[: min(256, len(sample))]
    per_query = brute_force_limit(x, args.k, queries=pilot) / len(pilot)
    # from a run at 1M x 128-d (2 busy cores; the ratios, not the seconds): a query of exact mining
    # took 1.09x the limit's, of index mining 0.12x, and the index build 2,900 limit queries
    expected = per_query * len(sample) * (("limit" in only) + 1.1 * ("exact" in only) + 0.12 * ("index" in only))
    expected += per_query * 2900 * ("index" in only)
    print(
        f"sampled mining: {len(sample):,} query rows of {n:,}, each searched against all {n:,}; the search time "
        f"is scaled by {scale:,.1f} (it is linear in the queries), the read (one query's pass) added "
        f"once, the index build timed in full. Expected duration of this run: ~{expected / 60:.1f} min",
        flush=True,
    )
    exact = None
    if "limit" in only:
        clock = Clock()
        brute_force_limit(x, args.k, queries=sample)
        took, cpu = clock()
        out["limit_sample_s"], out["limit_s"], out["limit_cpu_s"] = took, took * scale, cpu * scale
        print(
            f"brute-force limit: {took:.1f} s for the sample -> {out['limit_s']:.1f} s for {n:,} rows "
            f"(CPU {out['limit_cpu_s']:.1f} s)",
            flush=True,
        )
    if "exact" in only:
        spec = NeighborSpec(column="x", k=args.k, mode="exact")
        exact, took, fixed = scaled_pass(out, "exact", lambda q: mine(spec, table, row_ids, mode="exact", queries=q))
        print(
            f"exact mining: {took:.1f} s for the sample (read and one query {fixed:.1f}) -> "
            f"{out['exact_s']:.1f} s for {n:,} rows (CPU {out['exact_cpu_s']:.1f} s)",
            flush=True,
        )
    if "index" in only:
        clock = Clock()
        build_index(table, n, args.dim)
        out["index_build_s"], out["index_build_cpu_s"] = clock()
        print(
            f"index build: {out['index_build_s']:.1f} s (all {n:,} rows; CPU {out['index_build_cpu_s']:.1f} s)",
            flush=True,
        )
        spec = NeighborSpec(column="x", k=args.k, mode="index", candidates=args.candidates)
        found, took, fixed = scaled_pass(out, "index", lambda q: mine(spec, table, row_ids, mode="index", queries=q))
        if exact is None:
            from lance_lightning.neighbors import exact_neighbors

            exact = exact_neighbors(x, args.k, queries=sample).ids
        out["index_recall"] = recall(found, exact, args.k)
        print(
            f"index mining: {took:.1f} s for the sample (read and one query {fixed:.1f}) -> "
            f"{out['index_s']:.1f} s for {n:,} rows (CPU {out['index_cpu_s']:.1f} s); "
            f"recall@{args.k} {out['index_recall']:.3f} on the "
            f"{len(sample):,} sampled rows against exact",
            flush=True,
        )
    return out


def worker_cpu(seen: dict, first: dict | None = None) -> None:
    """Note the CPU seconds (user + system) each worker of this process has used so far in ``seen``
    (and, for a worker not in ``first`` yet, there too: what it had used when first seen)."""
    import psutil

    for p in psutil.Process().children(recursive=True):
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        seen[p.pid] = t.user + t.system
        if first is not None:
            first.setdefault(p.pid, seen[p.pid])


def loader_rate(args: argparse.Namespace, uri: str, workers: int, k: int) -> tuple[float, float]:
    """Rows/s of the train loader at ``workers`` with ``k`` neighbours a row (0: none), and rows per
    CPU-second of the training process and its workers together (less sensitive to a busy machine:
    what the reading costs, not how long it waited for a core)."""
    from lance_lightning import LanceDataModule

    neighbors = {"column": "x", "k": k, "columns": ["x"]} if k else None
    dm = LanceDataModule(
        uri,
        "vectors",
        columns=["id", "x"],
        splits={"train": 1.0},
        batch_size=args.batch_size,
        num_workers=workers,
        seed=0,
        neighbors=neighbors,
        cache=str(Path(args.dir) / "stages"),
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    next(it)  # workers started, first batch made: not counted
    first: dict = {}
    worker_cpu(first)  # what the workers had used for the first batch: not counted
    seen = dict(first)
    start, cpu, rows = time.perf_counter(), time.process_time(), 0
    for epoch in range(args.epochs):
        if epoch:
            dm.samplers["train"].set_epoch(epoch)
            it = iter(loader)
        for _, batch in zip(range(args.batches), it):
            rows += len(batch["id"])
        worker_cpu(seen)  # before this epoch's workers exit (a new epoch's start with new ones)
    wall = time.perf_counter() - start
    used = time.process_time() - cpu + sum(t - first.get(pid, 0.0) for pid, t in seen.items())
    del it, loader
    dm.teardown()
    return rows / wall, rows / used


def loader_rates(args: argparse.Namespace, uri: str) -> dict:
    """Paired rounds: at each worker count, the loader with and without neighbours measured one
    after the other (the order alternating), ``--rounds`` times. Compare within a run; the median
    and the min-max of each figure are reported. ``cpu``: rows per CPU-second of the training
    process and its workers (what a row costs, whatever else the machine runs)."""
    out: dict = {}
    kk = args.loader_k
    for workers in [int(w) for w in args.workers.split(",")]:
        figures: dict[str, list[float]] = {}
        for r in range(args.rounds):
            order = (0, kk) if r % 2 == 0 else (kk, 0)
            got = {k: loader_rate(args, uri, workers, k) for k in order}
            now = {
                "k0": got[0][0],
                f"k{kk}": got[kk][0],
                "ratio": got[kk][0] / got[0][0],
                "k0-cpu": got[0][1],
                f"k{kk}-cpu": got[kk][1],
                "cpu-ratio": got[kk][1] / got[0][1],
            }
            for name, value in now.items():
                figures.setdefault(name, []).append(value)
            print(
                f"loader workers={workers} round {r}: k=0 {now['k0']:,.0f} rows/s, k={kk} {now[f'k{kk}']:,.0f} rows/s, "
                f"ratio {now['ratio']:.2f}; rows per CPU-s {now['k0-cpu']:,.0f} / {now[f'k{kk}-cpu']:,.0f}, "
                f"ratio {now['cpu-ratio']:.2f}",
                flush=True,
            )
        for name, values in figures.items():
            out[f"w{workers}-{name}"] = float(np.median(values))
            out[f"w{workers}-{name}-range"] = [min(values), max(values)]
        print(
            f"loader workers={workers}: with neighbours / without = {out[f'w{workers}-ratio']:.2f} "
            f"(median of {args.rounds} rounds, {min(figures['ratio']):.2f}-{max(figures['ratio']):.2f}); "
            f"by CPU time {out[f'w{workers}-cpu-ratio']:.2f} "
            f"({min(figures['cpu-ratio']):.2f}-{max(figures['cpu-ratio']):.2f})",
            flush=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=10, help="neighbours a row, for the mining")
    parser.add_argument("--candidates", type=int, default=None, help="index mode's candidates a row (default 15k)")
    parser.add_argument("--loader-k", type=int, default=4, help="neighbours a row, for the loader")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3, help="epochs the loader is read for (after its first batch)")
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--rounds", type=int, default=3, help="paired loader rounds (with and without, interleaved)")
    parser.add_argument("--only", default="limit,exact,index,loader")
    parser.add_argument(
        "--sample",
        type=int,
        default=0,
        help="mine only this many sampled query rows (against all rows) and scale to every row (0: mine all)",
    )
    parser.add_argument("--dir", default=None, help="where the table and stages go (default: a temporary directory)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    tmp = None
    if args.dir is None:
        tmp = args.dir = tempfile.mkdtemp(prefix="bench-neighbors-")
    try:
        uri = str(Path(args.dir) / "db")
        start = time.perf_counter()
        if (Path(uri) / "vectors.lance").is_dir():  # a --dir kept from an earlier run: its table (and stages)
            import lancedb

            table = lancedb.connect(uri).open_table("vectors")
        else:
            table = make_table(uri, args.rows, args.dim)
        print(f"table: {args.rows:,} rows x {args.dim}-d in {time.perf_counter() - start:.1f} s", flush=True)
        results = {"rows": args.rows, "dim": args.dim, "k": args.k, **mine_times(args, uri, table)}
        if "loader" in args.only.split(","):
            results.update(loader_rates(args, uri))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
