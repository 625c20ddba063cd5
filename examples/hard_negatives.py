"""Hard negatives mined from the table, in every batch: a contrastive embedder trained twice.

scikit-learn's handwritten digits (1,797 rows of 8x8 pixels, 10 classes) in a LanceDB table. A small
embedder (64 pixels -> 16-d unit vector) learns with a supervised contrastive loss: rows of a label
pull together, other rows push apart. Trained twice from the same start, for the same steps:

1. **random negatives**: the other rows of the batch (what every data loader gives);
2. **mined neighbours**: the same, plus each row's ``k`` nearest rows *of another label*
   (``neighbors={"column": ..., "k": 4, "exclude_same": "label"}``): the rows the model confuses
   it with. The loop: mine by pixels and train; write the model's embeddings into the table
   (``LancePredictionWriter``); mine again by those embeddings and train on.

Each is scored by the k-nearest-neighbour accuracy of held-out rows (their label by the vote of their 5
nearest training rows in the embedding) and recall@1 (the nearest training row has the row's label).
Run: ``python examples/hard_negatives.py`` (``--seeds 5``: both runs for seeds 0-4, mean and sd).
"""

from __future__ import annotations

import argparse
import tempfile

import lancedb
import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import torch
from sklearn.datasets import load_digits
from torch import nn

from lance_lightning import LanceDataModule, LancePredictionWriter

EMBEDDING, K, VOTE, TEMPERATURE = 16, 4, 5, 0.2
SPLITS = {"kind": "hash", "columns": ["id"], "weights": {"train": 3, "test": 2}}


def write_digits(uri: str) -> None:
    """``digits``: ``id`` int64, ``pixels`` fixed_size_list<float32>[64] (0-1), ``label`` int64."""
    digits = load_digits()
    pixels = (digits.data / 16.0).astype(np.float32)
    table = pa.table(
        {
            "id": np.arange(len(pixels), dtype=np.int64),
            "pixels": pa.FixedSizeListArray.from_arrays(pa.array(pixels.ravel()), 64),
            "label": digits.target.astype(np.int64),
        }
    )
    lancedb.connect(uri).create_table("digits", table)


class Embedder(pl.LightningModule):
    """``pixels -> unit 16-d embedding``, trained with a supervised contrastive loss whose negatives
    are the batch's other rows and, where the batch carries them, each row's mined neighbours."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, EMBEDDING))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net(pixels), dim=-1)

    def training_step(self, batch, batch_idx):
        z, labels = self(batch["pixels"]), batch["label"]
        logits = z @ z.T / TEMPERATURE
        eye = torch.eye(len(z), dtype=torch.bool)
        logits = logits.masked_fill(eye, -1e9)  # a row is not its own positive
        positive = (labels[:, None] == labels[None, :]) & ~eye
        if "neighbors" in batch:  # [B, k] rows of other labels, nearest first: extra negatives
            found = batch["neighbors"]
            hard = torch.einsum("bd,bkd->bk", z, self(found["pixels"])) / TEMPERATURE
            logits = torch.cat([logits, hard.masked_fill(~found["mask"], -1e9)], dim=1)
            positive = torch.cat([positive, torch.zeros_like(found["mask"])], dim=1)
        log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        has = positive.any(dim=1)
        loss = -(log_p * positive).sum(1)[has] / positive.sum(1)[has]
        return loss.mean()

    def predict_step(self, batch, batch_idx):
        return self(batch["pixels"])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=2e-3)


def trainer(tmp: str, **kwargs) -> pl.Trainer:
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return pl.Trainer(accelerator="cpu", devices=1, default_root_dir=tmp, **quiet, **kwargs)


def train(
    tmp: str, uri: str, model: Embedder, epochs: int, batch_size: int, seed: int, neighbors: dict | None = None
) -> None:
    data = LanceDataModule(
        uri, "digits", columns=["pixels", "label"], splits=SPLITS, batch_size=batch_size, seed=seed, neighbors=neighbors
    )
    trainer(tmp, max_epochs=epochs, limit_val_batches=0).fit(model, datamodule=data)


def score(uri: str, model: Embedder) -> tuple[float, float]:
    """kNN accuracy and recall@1 of the test rows against the train rows, in the model's embedding."""
    table = lancedb.connect(uri).open_table("digits").to_arrow()
    ids = table["id"].to_numpy()
    pixels = np.asarray(table["pixels"].combine_chunks().flatten()).reshape(-1, 64)
    labels = table["label"].to_numpy()
    data = LanceDataModule(uri, "digits", columns=["id"], splits=SPLITS)
    data.setup("fit")
    data.setup("test")
    train_ids, test_ids = (set(split_ids(data, stage)) for stage in ("train", "test"))
    with torch.no_grad():
        z = model(torch.from_numpy(pixels)).numpy()
    train_rows = np.flatnonzero([i in train_ids for i in ids])
    test_rows = np.flatnonzero([i in test_ids for i in ids])
    nearest = np.argsort(-(z[test_rows] @ z[train_rows].T), axis=1)[:, :VOTE]
    votes = labels[train_rows][nearest]
    predicted = np.array([np.bincount(v, minlength=10).argmax() for v in votes])
    accuracy = float((predicted == labels[test_rows]).mean())
    recall = float((votes[:, 0] == labels[test_rows]).mean())
    return accuracy, recall


def split_ids(data: LanceDataModule, stage: str) -> list[int]:
    """The ids of the rows a stage's split holds."""
    dataset = data.datasets[stage]
    return dataset[np.arange(len(dataset))]["id"].tolist()


def run(epochs: int, batch_size: int, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Both runs from the same start (``seed``: the model's initial weights and the batches' order;
    the held-out rows are the same for every seed): {run: (kNN accuracy, recall@1)}."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"{tmp}/db"
        write_digits(uri)

        pl.seed_everything(seed, verbose=False)
        model = Embedder()
        train(tmp, uri, model, 2 * epochs, batch_size, seed)
        results["random negatives"] = score(uri, model)

        pl.seed_everything(seed, verbose=False)
        model = Embedder()
        mined = {"k": K, "exclude_same": "label", "columns": ["pixels"]}
        train(
            tmp, uri, model, epochs, batch_size, seed, neighbors={"column": "pixels", **mined}
        )  # round 1: neighbours by pixels
        # write the model's embeddings into the table (a new column, one new version), mine by them
        writer = LancePredictionWriter(column="embedding")
        everything = LanceDataModule(uri, "digits", columns=["pixels"], splits=None, eval_batch_size=512)
        trainer(tmp, callbacks=[writer]).predict(model, datamodule=everything, return_predictions=False)
        train(
            tmp, uri, model, epochs, batch_size, seed, neighbors={"column": "embedding", "metric": "cosine", **mined}
        )  # round 2
        results["mined neighbours"] = score(uri, model)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs a round (the random run trains 2 rounds)")
    parser.add_argument("--batch-size", type=int, default=32, help="rows a batch (each with its K neighbours)")
    parser.add_argument("--seeds", type=int, default=1, help="train both runs this many times (seeds 0, 1, ...)")
    args = parser.parse_args()
    runs = [run(args.epochs, args.batch_size, seed) for seed in range(args.seeds)]
    summary = {}
    for name in runs[0]:
        figures = np.array([r[name] for r in runs])  # [seeds, (accuracy, recall)]
        summary[name] = figures.mean(axis=0)
        line = f"{name}: {VOTE}-NN test accuracy {summary[name][0]:.3f}, recall@1 {summary[name][1]:.3f}"
        if args.seeds > 1:
            sd = figures.std(axis=0, ddof=1)
            by_seed = figures[:, 0].round(3).tolist()
            line += f" (mean of {args.seeds} seeds; sd {sd[0]:.3f}, {sd[1]:.3f}; accuracy by seed {by_seed})"
        print(line)
    # the line the example tests read: the mined run's accuracy
    print(
        f"test accuracy {summary['mined neighbours'][0]:.3f} (random negatives: {summary['random negatives'][0]:.3f})"
    )


if __name__ == "__main__":
    main()
