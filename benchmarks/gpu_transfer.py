"""GPU path check: batches built by lance_lightning.convert, pinned by the DataLoader, copied non-blocking.

Runs where lancedb is not installed (the lent GPU machine has no lancedb and its wheel is too
large to carry): it loads ``lance_lightning/convert.py`` by path and feeds Arrow record
batches held in memory, so it measures the conversion + pin + host-to-device part of the path.

    python benchmarks/gpu_transfer.py --rows 1000000 --batch-size 1024
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

_spec = importlib.util.spec_from_file_location(
    "ll_convert", Path(__file__).resolve().parents[1] / "lance_lightning" / "convert.py"
)
convert = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert)


class ArrowBatches(Dataset):
    """Index = batch number; each item is one Arrow slice converted to tensors (as LanceBatchDataset does)."""

    def __init__(self, table: pa.RecordBatch, batch_size: int) -> None:
        self.table, self.batch_size = table, batch_size

    def __len__(self) -> int:
        return -(-self.table.num_rows // self.batch_size)

    def __getitem__(self, i: int):
        return convert.batch_to_tensors(self.table.slice(i * self.batch_size, self.batch_size))


def make_table(rows: int) -> pa.RecordBatch:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((rows, 128), dtype=np.float32)
    return pa.record_batch(
        {
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 128),
            "label": pa.array(np.arange(rows) % 10),
            "text": pa.array([f"row {i}" for i in range(rows)]),
        }
    )


def run(table, batch_size: int, pin: bool, workers: int, device: torch.device) -> tuple[float, bool]:
    loader = DataLoader(ArrowBatches(table, batch_size), batch_size=None, pin_memory=pin, num_workers=workers)
    pinned = True
    total = 0
    torch.cuda.synchronize()
    start = time.perf_counter()
    checksum = torch.zeros((), device=device)
    for batch in loader:
        pinned &= batch["emb"].is_pinned() if pin else True
        emb = batch["emb"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        checksum += emb.sum() + label.sum()
        total += len(batch["text"])
    torch.cuda.synchronize()
    return total / (time.perf_counter() - start), pinned


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    device = torch.device("cuda")
    print(f"device {torch.cuda.get_device_name(0)}, torch {torch.__version__}, pyarrow {pa.__version__}")
    table = make_table(args.rows)
    # correctness: values survive conversion, pinning and the non-blocking copy
    loader = DataLoader(ArrowBatches(table, args.batch_size), batch_size=None, pin_memory=True)
    first = next(iter(loader))
    on_gpu = first["emb"].to(device, non_blocking=True)
    torch.cuda.synchronize()
    expected = table.column("emb").flatten().to_numpy()[: 128 * args.batch_size].reshape(-1, 128)
    assert torch.equal(on_gpu.cpu(), torch.from_numpy(expected)), "values changed on the way to the GPU"
    assert first["emb"].is_pinned() and first["label"].is_pinned(), "pin_memory did not pin the batch"
    print("correctness: pinned batches, values equal after a non-blocking copy: ok")
    print("| pin_memory | workers | rows/s (conversion + H2D, 520 B/row) | MB/s | all pinned |")
    print("|---|---|---|---|---|")
    for workers in (0, 2):
        for pin in (False, True):
            run(table, args.batch_size, pin, workers, device)  # warm-up
            rate, pinned = run(table, args.batch_size, pin, workers, device)
            shown = pinned if pin else "-"
            print(f"| {pin} | {workers} | {rate:,.0f} | {rate * 520 / 1e6:,.0f} | {shown} |")


if __name__ == "__main__":
    main()
