"""Hard negatives mined from the table, in every batch: an instance-retrieval embedder trained twice.

scikit-learn's handwritten digits (1,797 rows of 8x8 pixels) in a LanceDB table. The task is
instance retrieval: given a noisy copy of an image (pixel noise, sd 0.3, and brightness scaled by
0.8-1.2), find that very image among all the held-out images (two fifths of the table, by a hash
split). Each image is its own class, so the images a query is confused with are the other images
nearest to it, mostly of the same digit. A small embedder (64 pixels -> 256 -> 64-d unit vector)
learns with a contrastive loss: two noisy copies of a row pull together, every other row in sight
pushes apart. Both runs read the same table the same way (``neighbors={"column": ..., "k": 8}``:
each row's 8 nearest rows in every batch, mined by pixels for the first round, then by the run's
own embeddings, written into the table with ``LancePredictionWriter``, for the second), for the
same steps from the same start, with the same noise (the very same rows in the first round; in the
second each run's lists come from its own embeddings):

1. **random negatives**: each row's extra 8 negatives are the neighbours of *another* row of the
   batch (the batch's rows rolled by one): rows that are random to it;
2. **mined neighbours**: each row's extra 8 negatives are its own neighbours: the images it is most
   easily confused with.

Each is scored by recall@1 and recall@5 of the held-out queries (one noisy copy of every held-out
image, the same for every run) against the clean held-out images. It also prints how close the
extra negatives were to their row (mean cosine similarity in the model's embedding, over training),
and the recalls of the raw pixels (cosine), which need no training.
Run: ``python examples/hard_negatives.py`` (``--seeds 5``: both runs for seeds 0-4, mean and sd).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable

import lancedb
import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import torch
from sklearn.datasets import load_digits
from torch import nn

from lance_lightning import LanceDataModule, LancePredictionWriter

HIDDEN, EMBEDDING, K, TEMPERATURE, NOISE = 256, 64, 8, 0.2, 0.3
SPLITS = {"kind": "hash", "columns": ["id"], "weights": {"train": 3, "test": 2}}
RUNS = ("random negatives", "mined neighbours")


def write_digits(uri: str) -> None:
    """``digits``: ``id`` int64, ``pixels`` fixed_size_list<float32>[64] (0-1)."""
    pixels = (load_digits().data / 16.0).astype(np.float32)
    table = pa.table(
        {
            "id": np.arange(len(pixels), dtype=np.int64),
            "pixels": pa.FixedSizeListArray.from_arrays(pa.array(pixels.ravel()), 64),
        }
    )
    lancedb.connect(uri).create_table("digits", table)


def noisy(pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A noisy copy of each image: brightness scaled by 0.8-1.2, Gaussian pixel noise (sd ``NOISE``)."""
    scale = 0.8 + 0.4 * torch.rand(*pixels.shape[:-1], 1, generator=generator)
    return pixels * scale + NOISE * torch.randn(pixels.shape, generator=generator)


class Embedder(pl.LightningModule):
    """``pixels -> unit 64-d embedding``, trained with a contrastive (InfoNCE) loss: a row's positive
    is a second noisy copy of it; its negatives are the batch's other rows and 8 extra rows that the
    batch carries as neighbours (its own with ``mined=True``, another row's with ``mined=False``)."""

    def __init__(self, mined: bool) -> None:
        super().__init__()
        self.mined = mined
        self.net = nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, EMBEDDING))
        self.similarity = [0.0, 0]  # the extra negatives' summed cosine similarity to their row, and how many

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net(pixels), dim=-1)

    def training_step(self, batch, batch_idx):
        found = batch["neighbors"]  # [B, k]: each row's nearest rows of the train split
        extra, ids, mask = found["pixels"], found["id"], found["mask"]
        if not self.mined:  # the same rows, given to another row of the batch: random to it
            extra, ids, mask = extra.roll(1, 0), ids.roll(1, 0), mask.roll(1, 0)
        mask = mask & (ids != batch["id"][:, None])  # never a row's own copy as its negative
        a, b = self(noisy(batch["pixels"])), self(noisy(batch["pixels"]))
        e = self(noisy(extra))  # [B, k, D]
        loss = 0.0
        for u, v in ((a, b), (b, a)):
            hard = torch.einsum("bd,bkd->bk", u, e)
            logits = torch.cat([u @ v.T, hard.masked_fill(~mask, -1e9 * TEMPERATURE)], dim=1) / TEMPERATURE
            loss = loss + nn.functional.cross_entropy(logits, torch.arange(len(u))) / 2
            self.similarity[0] += float(hard.detach()[mask].sum()) / 2
            self.similarity[1] += int(mask.sum()) / 2
        return loss

    def predict_step(self, batch, batch_idx):
        return self(batch["pixels"])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=2e-3)


def trainer(tmp: str, **kwargs) -> pl.Trainer:
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return pl.Trainer(accelerator="cpu", devices=1, default_root_dir=tmp, **quiet, **kwargs)


def train(tmp: str, uri: str, model: Embedder, epochs: int, batch_size: int, seed: int, column: str) -> None:
    """``epochs`` epochs, every batch with each row's ``K`` nearest train rows by ``column``."""
    metric = "l2" if column == "pixels" else "cosine"
    neighbors = {"column": column, "k": K, "metric": metric, "columns": ["id", "pixels"]}
    data = LanceDataModule(
        uri, "digits", columns=["id", "pixels"], splits=SPLITS, batch_size=batch_size, seed=seed, neighbors=neighbors
    )
    trainer(tmp, max_epochs=epochs, limit_val_batches=0).fit(model, datamodule=data)


def split_ids(data: LanceDataModule, stage: str) -> list[int]:
    """The ids of the rows a stage's split holds."""
    dataset = data.datasets[stage]
    return dataset[np.arange(len(dataset))]["id"].tolist()


def score(uri: str, model: Callable[[torch.Tensor], torch.Tensor]) -> tuple[float, float]:
    """Recall@1 and @5: for a noisy copy of each held-out image (the same copies for every run), is
    that image the nearest (among the 5 nearest) of the clean held-out images in the embedding?"""
    table = lancedb.connect(uri).open_table("digits").to_arrow()
    pixels = np.asarray(table["pixels"].combine_chunks().flatten()).reshape(-1, 64)
    data = LanceDataModule(uri, "digits", columns=["id"], splits=SPLITS)
    data.setup("test")
    test_ids = set(split_ids(data, "test"))
    rows = np.flatnonzero([i in test_ids for i in table["id"].to_numpy()])
    gallery = torch.from_numpy(pixels[rows])
    queries = noisy(gallery, torch.Generator().manual_seed(12345))
    with torch.no_grad():
        similarity = model(queries) @ model(gallery).T
    rank = (similarity > similarity.diagonal()[:, None]).sum(dim=1)  # images nearer than the right one
    return float((rank < 1).float().mean()), float((rank < 5).float().mean())


def run(epochs: int, batch_size: int, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Both runs from the same start (``seed``: the model's initial weights, the batches' order and
    the noise; the held-out rows and queries are the same for every seed):
    {run: (recall@1, recall@5, the extra negatives' mean cosine similarity to their row)}, and the
    same recalls of the raw pixels (cosine, no training) under "raw pixels"."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in RUNS:
            uri = f"{tmp}/{name.split()[0]}"
            write_digits(uri)
            pl.seed_everything(seed, verbose=False)
            model = Embedder(mined=name == "mined neighbours")
            train(tmp, uri, model, epochs, batch_size, seed, "pixels")  # round 1: neighbours by pixels
            # write the model's embeddings into the table (a new column, one new version), mine by them
            writer = LancePredictionWriter(column="embedding")
            everything = LanceDataModule(uri, "digits", columns=["pixels"], splits=None, eval_batch_size=512)
            trainer(tmp, callbacks=[writer]).predict(model, datamodule=everything, return_predictions=False)
            train(tmp, uri, model, epochs, batch_size, seed, "embedding")  # round 2
            total, count = model.similarity
            results[name] = (*score(uri, model), total / max(count, 1))
        results["raw pixels"] = (*score(uri, lambda pixels: nn.functional.normalize(pixels, dim=-1)), float("nan"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs a round (both runs train 2 rounds)")
    parser.add_argument("--batch-size", type=int, default=32, help="rows a batch (each with its K neighbours)")
    parser.add_argument("--seeds", type=int, default=1, help="train both runs this many times (seeds 0, 1, ...)")
    args = parser.parse_args()
    runs = [run(args.epochs, args.batch_size, seed) for seed in range(args.seeds)]
    summary = {}
    for name in RUNS:
        figures = np.array([r[name] for r in runs])  # [seeds, (recall@1, recall@5, similarity)]
        summary[name] = figures.mean(axis=0)
        r1, r5, near = summary[name]
        line = f"{name}: test recall@1 {r1:.3f}, recall@5 {r5:.3f}, extra negatives' similarity {near:.3f}"
        if args.seeds > 1:
            sd = figures.std(axis=0, ddof=1)
            by_seed = figures[:, 0].round(3).tolist()
            line += f" (mean of {args.seeds} seeds; sd {sd[0]:.3f}, {sd[1]:.3f}; recall@1 by seed {by_seed})"
        print(line)
    r1, r5, _ = runs[0]["raw pixels"]
    print(f"raw pixels (cosine, no model): test recall@1 {r1:.3f}, recall@5 {r5:.3f}")


if __name__ == "__main__":
    main()
