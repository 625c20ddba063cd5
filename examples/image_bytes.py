"""Images stored as encoded bytes (PNG) in a ``binary`` column, decoded in a ``transform``.

Many image tables keep each image as its original file bytes. ``LanceDataModule`` hands a
binary column to you as ``list[bytes]``; a ``transform`` (a callable or, as here, a dotted path
``"image_bytes.decode_batch"`` so that worker processes can import it) turns the batch into
tensors inside the DataLoader worker, in parallel with training.

The PNGs are made locally from scikit-learn's 8x8 digits with the tiny grayscale PNG codec
below (standard library only). With Pillow installed, decoding one image is just
``np.asarray(PIL.Image.open(io.BytesIO(data)))``.

Run: ``python examples/image_bytes.py [--workers N]`` (default 0: decode in the main process;
worker processes cost a few seconds to start, worth it once decoding is the bottleneck).
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_encode(image: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of ``image`` (``uint8``, shape ``(height, width)``)."""
    height, width = image.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in image.astype(np.uint8))  # filter 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, grayscale, no interlace
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def png_decode(data: bytes) -> np.ndarray:
    """Decode an 8-bit grayscale, non-interlaced PNG (all five row filters) to ``uint8 (h, w)``."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG")
    pos, idat, width = len(PNG_SIGNATURE), b"", 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if tag == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if (depth, color, interlace) != (8, 0, 0):
                raise ValueError("only 8-bit grayscale, non-interlaced PNGs are decoded here")
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    rows = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, width + 1)
    out = np.zeros((height, width), dtype=np.int32)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        above = out[y - 1] if y else np.zeros(width, dtype=np.int32)
        if kind in (0, 2):
            out[y] = (line + (above if kind == 2 else 0)) % 256
            continue
        for x in range(width):
            left = out[y, x - 1] if x else 0
            upper_left = above[x - 1] if x and y else 0
            if kind == 1:
                pred = left
            elif kind == 3:
                pred = (left + above[x]) // 2
            else:  # 4: Paeth
                p = left + above[x] - upper_left
                pa_, pb, pc = abs(p - left), abs(p - above[x]), abs(p - upper_left)
                pred = left if pa_ <= pb and pa_ <= pc else (above[x] if pb <= pc else upper_left)
            out[y, x] = (line[x] + pred) % 256
    return out.astype(np.uint8)


def decode_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """The transform: ``{"png": list[bytes], "label": Tensor}`` -> ``{"image": (B, 8, 8) float32, "label"}``."""
    images = np.stack([png_decode(b) for b in batch["png"]]).astype(np.float32) / 255.0
    return {"image": torch.from_numpy(images), "label": batch["label"]}


def write_png_table(uri: str) -> None:
    """``digits_png``: ``id`` int64, ``png`` binary (PNG file bytes), ``label`` int64."""
    import lancedb
    import pyarrow as pa
    from sklearn.datasets import load_digits

    digits = load_digits()
    pngs = [png_encode((image * 255 / 16).round()) for image in digits.images]
    table = pa.table(
        {
            "id": np.arange(len(pngs), dtype=np.int64),
            "png": pa.array(pngs, type=pa.binary()),
            "label": digits.target.astype(np.int64),
        }
    )
    lancedb.connect(uri).create_table("digits_png", table)


def main(workers: int = 0) -> dict[str, float]:
    import lightning.pytorch as pl

    from lance_lightning import LanceDataModule
    from lance_lightning.app.models import MLPClassifier

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"{tmp}/db"
        write_png_table(uri)
        data = LanceDataModule(
            uri,
            "digits_png",
            columns=["png", "label"],
            transform="image_bytes.decode_batch",  # importable by workers: this file's directory is on sys.path
            batch_size=64,
            num_workers=workers,
        )
        pl.seed_everything(0, verbose=False)  # model init, dropout
        model = MLPClassifier(in_features=64, num_classes=10, input_key="image")
        trainer = pl.Trainer(
            max_epochs=3,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp,
        )
        trainer.fit(model, datamodule=data)
        metrics = trainer.test(model, datamodule=data, verbose=False)[0]
        print(f"columns become {data.column_tensors()}, decoded by {data.transform.__module__}.decode_batch")
        print(f"test accuracy {metrics['test/acc']:.3f} with {workers} worker process(es)")
        return metrics


if __name__ == "__main__":  # workers start with forkserver and import this file as `image_bytes`
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=0)
    main(parser.parse_args().workers)
