"""The one per-row decode every reader of ``bench_images.py`` runs, importable by dotted path.

A module of its own so that DataLoader workers (forked, fork-server or spawned) and
``LanceDataModule(transform="image_decode.decode_batch")`` import the same functions:
``benchmarks/`` must be on ``sys.path`` / ``PYTHONPATH`` (``bench_images.py`` puts it there).

Images: PIL open → RGB → ``uint8`` array (H, W, 3), stacked and made channels-first in numpy
(no torch op in the main process: torch's intra-op threads would fight the loader for cores),
then one ``torch.from_numpy``: a ``uint8`` tensor ``(rows, 3, 128, 128)``.

Tokens: variable-length int32 rows padded to the batch's longest row with 0, plus a lengths tensor.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image


def decode_one(data: bytes) -> np.ndarray:
    """One encoded image → ``uint8`` (H, W, 3)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def decode_images(images: Sequence[bytes]) -> torch.Tensor:
    """Encoded images → one ``uint8`` tensor (rows, 3, H, W)."""
    stacked = np.stack([decode_one(b) for b in images])
    return torch.from_numpy(np.ascontiguousarray(stacked.transpose(0, 3, 1, 2)))


def decode_batch(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``LanceDataModule`` transform: ``{"image": list[bytes], "label": tensor}`` → decoded batch."""
    return {"image": decode_images(batch["image"]), "label": torch.as_tensor(batch["label"])}


def decode_pairs(items: Sequence[tuple[bytes, int]]) -> dict[str, torch.Tensor]:
    """``collate_fn`` for a map-style dataset yielding ``(jpeg bytes, label)`` a row."""
    return {"image": decode_images([b for b, _ in items]), "label": torch.tensor([label for _, label in items])}


def decode_columns(batch: Any) -> dict[str, torch.Tensor]:
    """``collate_fn`` for a whole batch given as columns: a ``dict`` of lists (HF datasets, LitData)
    or a ``pyarrow.Table`` (lancedb ``Permutation`` with the arrow format)."""
    if not isinstance(batch, dict):  # pyarrow Table / RecordBatch
        batch = {"image": batch.column("image").to_pylist(), "label": batch.column("label").to_numpy()}
    return {"image": decode_images(batch["image"]), "label": torch.as_tensor(np.asarray(batch["label"]))}


def pad_tokens(rows: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length int rows → ``(int32 (rows, longest) padded with 0, int64 lengths)``."""
    arrays = [np.asarray(r, dtype=np.int32) for r in rows]
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    out = np.zeros((len(arrays), int(lengths.max(initial=0))), dtype=np.int32)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return torch.from_numpy(out), torch.from_numpy(lengths)


def pad_batch(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``LanceDataModule`` transform for the token workload: ``{"tokens": list[Tensor], "label": tensor}``."""
    tokens, lengths = pad_tokens(batch["tokens"])
    return {"tokens": tokens, "lengths": lengths, "label": torch.as_tensor(batch["label"])}


def pad_columns(batch: Any) -> dict[str, torch.Tensor]:
    """``collate_fn`` for the token workload given as columns (HF datasets: a dict of lists)."""
    tokens, lengths = pad_tokens(batch["tokens"])
    return {"tokens": tokens, "lengths": lengths, "label": torch.as_tensor(np.asarray(batch["label"]))}


def pad_pairs(items: Sequence[tuple[np.ndarray, int]]) -> dict[str, torch.Tensor]:
    """``collate_fn`` for a map-style dataset yielding ``(int32 array, label)`` a row (npy files)."""
    tokens, lengths = pad_tokens([t for t, _ in items])
    return {"tokens": tokens, "lengths": lengths, "label": torch.tensor([label for _, label in items])}
