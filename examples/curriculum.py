"""A curriculum the model steers: each training row's loss, written back into the table every epoch,
weighs the next epoch's draw.

Writes scikit-learn's 8x8 digits (1,797 rows) into a LanceDB table with a weight column ``w`` (1.0),
then trains the same small MLP twice from the same seed:

* **uniform**: every train row once an epoch, in a new order;
* **curriculum**: ``weight_column="w"`` drawn with replacement (as many draws as train rows), and a
  :class:`~lance_lightning.RowValueWriter` that writes each drawn row's loss (+ ``--floor``) into
  ``w`` at every epoch's end. With ``table_updates="next_epoch"`` the datamodule reads the new
  weights at the next epoch boundary: rows the model got wrong are drawn more often next epoch.

Prints, for both: the test accuracy, the accuracy on the hardest class (the class of lowest
uniform test accuracy), and the first epoch whose validation accuracy reaches ``--target``; with
``--seeds N``, means over seeds 0 .. N-1 (model init, draws and order; the splits stay).

Run: ``python examples/curriculum.py [--epochs N] [--seeds N] [--floor F] [--target A]``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from typing import Any

import lancedb
import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import torch
from sklearn.datasets import load_digits
from torch.nn import functional as F

from lance_lightning import LanceDataModule, RowValueWriter
from lance_lightning.app.models import MLPClassifier

CLASSES = 10
# splits by a hash of `id`: a row keeps its split however often the table is rewritten
SPLITS = {"kind": "hash", "columns": ["id"], "weights": {"train": 3, "val": 1, "test": 1}}


def write_digits(uri: str) -> int:
    """A ``digits`` table: ``id``, ``image`` fixed_shape_tensor<float32, [8, 8]>, ``label``, ``w`` = 1.0."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    table = pa.table(
        {
            "id": np.arange(len(images), dtype=np.int64),
            "image": pa.FixedShapeTensorArray.from_numpy_ndarray(images),
            "label": digits.target.astype(np.int64),
            "w": np.ones(len(images)),
        }
    )
    lancedb.connect(uri).create_table("digits", table)
    return len(images)


class CurriculumMLP(MLPClassifier):
    """The examples' MLP, whose training step also returns each row's loss (``row_loss``), and which
    counts correct predictions by class on the val and test splits."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.val_history: list[float] = []  # val accuracy after each epoch
        self.test_by_class = np.zeros((2, CLASSES))  # [correct, total] by class
        self._val = np.zeros(2)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self(batch["image"])
        per_row = F.cross_entropy(logits, batch["label"], reduction="none")
        return {"loss": per_row.mean(), "row_loss": per_row.detach()}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        right = self(batch["image"]).argmax(1) == batch["label"]
        self._val += [int(right.sum()), len(right)]

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.val_history.append(self._val[0] / self._val[1])
        self._val = np.zeros(2)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        right = (self(batch["image"]).argmax(1) == batch["label"]).numpy()
        labels = batch["label"].numpy()
        np.add.at(self.test_by_class[0], labels, right)
        np.add.at(self.test_by_class[1], labels, 1)


def train(uri: str, root: str, *, seed: int, epochs: int, curriculum: bool, floor: float) -> CurriculumMLP:
    """Fits a fresh model on the digits table, uniformly or with the curriculum; tests it."""
    weights: dict[str, Any] = {}
    callbacks: list[pl.Callback] = []
    if curriculum:
        # as many draws an epoch as train rows (uniform reads each once): the weights pick which
        weights = dict(weight_column="w", weight_replacement=True, table_updates="next_epoch")
        callbacks = [RowValueWriter(column="w", key="id", output="row_loss", transform=lambda loss: loss + floor)]
    data = LanceDataModule(
        uri,
        "digits",
        columns=["id", "image", "label"],
        splits=SPLITS,
        batch_size=64,
        seed=seed,
        staging="off",  # 1,797 small rows: read straight from the table
        **weights,
    )
    pl.seed_everything(seed, verbose=False)
    model = CurriculumMLP(in_features=64, num_classes=CLASSES, input_key="image", label_key="label")
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        reload_dataloaders_every_n_epochs=1 if curriculum else 0,
        callbacks=callbacks,
        default_root_dir=root,
    )
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    return model


def epochs_to(history: list[float], target: float) -> float:
    """The first epoch (1-based) whose val accuracy reaches ``target``; NaN if none."""
    reached = [epoch + 1 for epoch, acc in enumerate(history) if acc >= target]
    return float(reached[0]) if reached else float("nan")


def main(epochs: int = 10, seeds: int = 1, floor: float = 0.1, target: float = 0.95) -> dict[str, Any]:
    """Both runs for each seed ``0 .. seeds - 1`` (a fresh table each, ``w`` = 1); prints the means."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")
    names = ("uniform", "curriculum")
    correct = {name: np.zeros((seeds, 2, CLASSES)) for name in names}  # [seed, correct/total, class]
    to_target = {name: np.zeros(seeds) for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            uri = f"{tmp}/db{seed}"
            write_digits(uri)
            for name in names:
                model = train(uri, tmp, seed=seed, epochs=epochs, curriculum=name == "curriculum", floor=floor)
                correct[name][seed] = model.test_by_class
                to_target[name][seed] = epochs_to(model.val_history, target)
    accuracy = {name: c[:, 0].sum(1) / c[:, 1].sum(1) for name, c in correct.items()}  # by seed
    by_class = {name: c[:, 0].sum(0) / c[:, 1].sum(0) for name, c in correct.items()}  # over seeds
    hardest = int(np.argmin(by_class["uniform"]))

    def spread(values: np.ndarray) -> str:
        return f"{values.mean():.3f}" + (f" ±{values.std():.3f}" if len(values) > 1 else "")

    def reached(values: np.ndarray) -> str:
        hit = values[~np.isnan(values)]
        mean = f"{hit.mean():.1f}" if len(hit) else "never"
        return mean if len(hit) == len(values) else f"{mean} ({len(hit)}/{len(values)})"

    print(f"digits, {epochs} epochs, {seeds} seed(s); curriculum weight = last loss + {floor}")
    print(f"{'':38}{'uniform':>14}{'curriculum':>14}")
    print(f"{'test accuracy (all classes)':38}{spread(accuracy['uniform']):>14}{spread(accuracy['curriculum']):>14}")
    row = f"test accuracy on class {hardest} (hardest)"
    print(f"{row:38}{by_class['uniform'][hardest]:>14.3f}{by_class['curriculum'][hardest]:>14.3f}")
    row = f"epochs to val accuracy >= {target}"
    print(f"{row:38}{reached(to_target['uniform']):>14}{reached(to_target['curriculum']):>14}")
    mean = {name: float(a.mean()) for name, a in accuracy.items()}
    print(f"test accuracy {mean['curriculum']:.3f} with the curriculum (uniform: {mean['uniform']:.3f})")
    return {"accuracy": mean, "hardest": hardest, "hardest_accuracy": {n: by_class[n][hardest] for n in names}}


if __name__ == "__main__":  # DataLoader workers (num_workers > 0) start with forkserver: keep this guard
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=1, help="repeat both runs for seeds 0 .. N-1; print means")
    parser.add_argument("--floor", type=float, default=0.1, help="added to each loss: every weight stays > 0")
    parser.add_argument("--target", type=float, default=0.95, help="the val accuracy counted in epochs-to-target")
    args = parser.parse_args()
    main(args.epochs, args.seeds, args.floor, args.target)
