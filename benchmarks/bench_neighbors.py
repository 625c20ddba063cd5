"""Neighbours (issue 32): mining time exact vs index vs the machine's brute-force limit, and the
train loader's rows/s with ``k`` neighbours a row against the same loader without.

    python benchmarks/bench_neighbors.py --rows 100000 --dim 128 --k 10
    python benchmarks/bench_neighbors.py --rows 1000000 --only index,loader   # exact at 1M: hours on 2 cores

Mining (one table of ``--rows`` clustered ``--dim``-d float32 vectors, an IVF-PQ index on it):

* ``limit``: the brute-force floor of this machine: blocks of float32 matrix products and a top-k
  (``np.argpartition``) per block, vectors already in memory, nothing excluded, no ordering of ties;
* ``exact``: ``mine(mode="exact")``: the split's vectors read from the table, then
  :func:`lance_lightning.neighbors.exact_neighbors` (exact, deterministic tie order);
* ``index``: the index build (timed apart), then ``mine(mode="index")`` with its recall@k against
  ``exact`` on 1,000 sampled rows (computed here).

Loader: ``LanceDataModule(columns=["id", "x"], shuffle="uniform")`` read for ``--epochs`` epochs of
at most ``--batches`` batches of ``--batch-size`` (the first batch, with the workers' start, not
counted), with ``neighbors={"column": "x", "k": --loader-k}`` and without, at each of ``--workers``;
rows/s counts the batch's rows (a batch with neighbours gathers ``k + 1`` times as many).
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


def brute_force_limit(x: np.ndarray, k: int, block: int = 4096) -> float:
    """Seconds of the bare blocked matmul + top-k over every row (the floor any exact search pays)."""
    start = time.perf_counter()
    sq = np.einsum("ij,ij->i", x, x)
    for q0 in range(0, len(x), block):
        q = x[q0 : q0 + block]
        best = np.full((len(q), k), np.inf, dtype=np.float32)
        for r0 in range(0, len(x), block):
            d = np.concatenate([best, sq[None, r0 : r0 + block] - 2 * (q @ x[r0 : r0 + block].T)], axis=1)
            best = np.take_along_axis(d, np.argpartition(d, k - 1, axis=1)[:, :k], axis=1)
    return time.perf_counter() - start


def mine_times(args: argparse.Namespace, uri: str, table) -> dict:
    from lancedb.index import IvfPq

    from lance_lightning.neighbors.mine import mine, read_split_columns, vectors_of
    from lance_lightning.neighbors.spec import NeighborSpec
    from lance_lightning.reads import scan_row_ids

    out: dict = {}
    row_ids = np.sort(scan_row_ids(table))
    x = vectors_of(read_split_columns(table, row_ids, ["x"]).column("x"), "x", "vectors")
    only = set(args.only.split(","))
    exact = None
    if "limit" in only:
        out["limit_s"] = brute_force_limit(x, args.k)
        print(f"brute-force limit: {out['limit_s']:.1f} s", flush=True)
    if "exact" in only:
        start = time.perf_counter()
        exact = mine(NeighborSpec(column="x", k=args.k, mode="exact"), table, row_ids, mode="exact")
        out["exact_s"] = time.perf_counter() - start
        print(f"exact mining: {out['exact_s']:.1f} s", flush=True)
    if "index" in only:
        start = time.perf_counter()
        partitions = max(1, min(1024, int(np.sqrt(len(x)))))
        table.create_index("x", config=IvfPq(num_partitions=partitions, num_sub_vectors=max(1, args.dim // 8)))
        out["index_build_s"] = time.perf_counter() - start
        start = time.perf_counter()
        spec = NeighborSpec(column="x", k=args.k, mode="index", candidates=args.candidates)
        found = mine(spec, table, row_ids, mode="index")
        out["index_s"] = time.perf_counter() - start
        sample = np.random.default_rng(1).choice(len(x), size=min(1000, len(x)), replace=False)
        if exact is None:
            from lance_lightning.neighbors import exact_neighbors

            reference = exact_neighbors(x, args.k, queries=sample).ids
        else:
            reference = exact[sample]
        out["index_recall"] = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found[sample], reference)]))
        print(
            f"index: build {out['index_build_s']:.1f} s, mining {out['index_s']:.1f} s, "
            f"recall@{args.k} {out['index_recall']:.3f}",
            flush=True,
        )
    return out


def loader_rates(args: argparse.Namespace, uri: str) -> dict:
    from lance_lightning import LanceDataModule

    out = {}
    for workers in [int(w) for w in args.workers.split(",")]:
        for k in (0, args.loader_k):
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
            start = time.perf_counter()
            rows = 0
            for epoch in range(args.epochs):
                if epoch:
                    dm.samplers["train"].set_epoch(epoch)
                    it = iter(loader)
                for _, batch in zip(range(args.batches), it):
                    rows += len(batch["id"])
            rate = rows / (time.perf_counter() - start)
            out[f"w{workers}-k{k}"] = rate
            print(f"loader workers={workers} k={k}: {rate:,.0f} rows/s", flush=True)
            del it, loader
            dm.teardown()
        out[f"w{workers}-ratio"] = out[f"w{workers}-k{args.loader_k}"] / out[f"w{workers}-k0"]
        print(f"loader workers={workers}: with neighbours / without = {out[f'w{workers}-ratio']:.2f}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=10, help="neighbours a row, for the mining")
    parser.add_argument("--candidates", type=int, default=None, help="index mode's candidates a row (default 4k + 16)")
    parser.add_argument("--loader-k", type=int, default=4, help="neighbours a row, for the loader")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3, help="epochs the loader is read for (after its first batch)")
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--only", default="limit,exact,index,loader")
    parser.add_argument("--dir", default=None, help="where the table and stages go (default: a temporary directory)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    tmp = None
    if args.dir is None:
        tmp = args.dir = tempfile.mkdtemp(prefix="bench-neighbors-")
    try:
        uri = str(Path(args.dir) / "db")
        start = time.perf_counter()
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
