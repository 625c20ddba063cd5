"""Classify embeddings stored in LanceDB: a ``fixed_size_list<float32>[32]`` vector column.

The usual LanceDB table (``id``, ``emb`` vector, ``label``), here 2,000 synthetic embeddings
around 4 class centres, made in a temporary directory. Shows a hash split (a row keeps its
split when rows are appended later), an SQL ``filter`` applied before splitting, and the
batch dict the model sees: ``{"emb": Tensor[float32, (batch, 32)], "label": Tensor[int64]}``.

Run: ``python examples/embeddings_classifier.py``.
"""

from __future__ import annotations

import tempfile

import lancedb
import lightning.pytorch as pl
import numpy as np
import pyarrow as pa

from lance_lightning import LanceDataModule
from lance_lightning.app.models import MLPClassifier

DIM, CLASSES, ROWS = 32, 4, 2000


def write_embeddings(uri: str, *, seed: int = 0) -> None:
    """``vectors``: ``id`` int64, ``emb`` fixed_size_list<float32>[DIM], ``label`` int64, ``quality`` float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLASSES, DIM)).astype(np.float32)
    labels = rng.integers(0, CLASSES, ROWS)
    emb = centres[labels] + 3.0 * rng.standard_normal((ROWS, DIM)).astype(np.float32)
    table = pa.table(
        {
            "id": np.arange(ROWS, dtype=np.int64),
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), DIM),
            "label": labels.astype(np.int64),
            "quality": rng.uniform(0, 1, ROWS).astype(np.float32),
        }
    )
    lancedb.connect(uri).create_table("vectors", table)


def main() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"{tmp}/db"
        write_embeddings(uri)
        data = LanceDataModule(
            uri,
            "vectors",
            columns=["emb", "label"],
            filter="quality > 0.1",  # SQL, applied before splitting
            splits={"kind": "hash", "columns": ["id"], "weights": {"train": 8, "val": 1, "test": 1}},
            batch_size=128,
        )
        pl.seed_everything(0, verbose=False)  # model init, dropout
        model = MLPClassifier(in_features=DIM, num_classes=CLASSES, hidden_dims=[64], input_key="emb")
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
        print(f"columns become {data.column_tensors()}")
        print(f"splits {data.hparams['split_rows']} (of {ROWS} rows, filter {data.options.filter!r})")
        print(f"test accuracy {metrics['test/acc']:.3f}")
        return metrics


if __name__ == "__main__":  # DataLoader workers (num_workers > 0) start with forkserver: keep this guard
    main()
