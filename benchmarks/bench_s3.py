"""Reading a table from S3 (a local moto server), with and without the local cache.

Run by hand::

    python benchmarks/bench_s3.py --rows 100000            # ~1-3 min on 2 busy cores
    python benchmarks/bench_s3.py --rows 20000 --shuffle block

A moto S3 server on 127.0.0.1 holds ``bench``: ``emb`` fixed_size_list<float32>[128] + ``label``
int64 (520 bytes a row), written as fragments of ``--fragment-rows`` rows.
``LanceDataModule(splits={"train": 1.0})`` reads it with ``num_workers=0`` for two epochs, each
epoch's rows/s timed from its first batch to its last, in three setups: the same table on local
disk (the reference), the S3 table read directly, and the S3 table with ``cache=`` (setup copies
it once; both epochs then read the local copy). ``setup s`` is the datamodule's ``setup("fit")``
(opening, splits, and for the cache the copy). moto is a single Python process serving from
memory: absolute figures say little about real S3 latency; the ratios (direct vs cached vs local) are the point.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa

from lance_lightning.datamodule import LanceDataModule

DIM = 128


def make_table(num_rows: int) -> pa.Table:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((num_rows, DIM), dtype=np.float32)
    return pa.table(
        {
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), DIM),
            "label": (np.arange(num_rows) % 10).astype(np.int64),
        }
    )


def run(uri: str, options: dict | None, args, cache: str | None) -> dict:
    dm = LanceDataModule(
        uri,
        "bench",
        splits={"train": 1.0},
        batch_size=args.batch_size,
        shuffle=args.shuffle,
        storage_options=options,
        cache=cache,
    )
    start = time.perf_counter()
    dm.setup("fit")
    out = {"setup_s": time.perf_counter() - start}
    loader = dm.train_dataloader()
    for epoch in (1, 2):
        loader.sampler.set_epoch(epoch - 1)
        rows, start = 0, time.perf_counter()
        for batch in loader:
            rows += len(batch["label"])
        out[f"epoch{epoch}"] = rows / (time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--fragment-rows", type=int, default=8192)
    parser.add_argument("--shuffle", default="uniform", choices=["uniform", "block", "none"])
    args = parser.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    creds = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds).create_bucket(Bucket="bench")
    options = {**creds, "aws_endpoint": endpoint, "aws_region": "us-east-1", "allow_http": "true"}
    data = make_table(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        local = str(Path(tmp) / "db")
        lancedb.connect(local).create_table("bench", data)
        start = time.perf_counter()
        # moto copies a whole object to answer each range request: keep objects small (one
        # fragment per --fragment-rows rows) so the server, not the reader, is not what is timed.
        remote = lancedb.connect("s3://bench/db", storage_options=options)
        table = remote.create_table("bench", data.slice(0, args.fragment_rows))
        for offset in range(args.fragment_rows, args.rows, args.fragment_rows):
            table.add(data.slice(offset, args.fragment_rows))
        print(f"wrote {args.rows} rows ({data.nbytes / 1e6:.0f} MB) to moto in {time.perf_counter() - start:.1f}s")
        results = {
            "local disk, no cache": run(local, None, args, None),
            "s3 (moto), no cache": run("s3://bench/db", options, args, None),
            "s3 (moto), cache": run("s3://bench/db", options, args, str(Path(tmp) / "cache")),
        }
    server.stop()
    print(f"\n{args.rows} rows, batch {args.batch_size}, shuffle={args.shuffle}, num_workers=0 (rows/s)\n")
    print("| reader | setup s | epoch 1 rows/s | epoch 2 rows/s |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['setup_s']:.2f} | {r['epoch1']:,.0f} | {r['epoch2']:,.0f} |")


if __name__ == "__main__":
    main()
