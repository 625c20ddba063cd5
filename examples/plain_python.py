"""Train on a LanceDB table from plain Python: no Hydra, no config files.

Writes scikit-learn's 8x8 digits into a LanceDB table in a temporary directory (the way images
are usually stored: a fixed-shape float32 tensor column plus an int64 label), then::

    trainer.fit(model, datamodule=LanceDataModule(uri, "digits", ...))

Run: ``python examples/plain_python.py [--epochs N]``.
"""

from __future__ import annotations

import argparse
import tempfile

import lancedb
import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
from sklearn.datasets import load_digits

from lance_lightning import LanceDataModule
from lance_lightning.app.models import MLPClassifier


def write_digits(uri: str) -> None:
    """A ``digits`` table: ``id`` int64, ``image`` fixed_shape_tensor<float32, [8, 8]>, ``label`` int64."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    table = pa.table(
        {
            "id": np.arange(len(images), dtype=np.int64),
            "image": pa.FixedShapeTensorArray.from_numpy_ndarray(images),
            "label": digits.target.astype(np.int64),
        }
    )
    lancedb.connect(uri).create_table("digits", table)


def main(epochs: int = 3) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"{tmp}/db"
        write_digits(uri)
        data = LanceDataModule(
            uri,
            "digits",
            columns=["image", "label"],
            splits={"train": 0.8, "val": 0.1, "test": 0.1},
            batch_size=64,
            seed=0,
        )
        pl.seed_everything(0, verbose=False)  # model init, dropout
        model = MLPClassifier(in_features=8 * 8, num_classes=10, input_key="image", label_key="label")
        trainer = pl.Trainer(
            max_epochs=epochs,
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
        print(f"table version {data.table_version}, splits {data.hparams['split_rows']}")
        print(f"test accuracy {metrics['test/acc']:.3f} after {epochs} epochs")
        return metrics


if __name__ == "__main__":  # DataLoader workers (num_workers > 0) start with forkserver: keep this guard
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    main(parser.parse_args().epochs)
