"""Embed a LanceDB table with a trained model, index the embeddings, and search them.

The workflow LanceDB is used for, end to end:

1. train a small model on the table (``LanceDataModule``, any split kind);
2. run it over every row and store its output beside the row: ``trainer.predict`` with a
   ``LancePredictionWriter(column="embedding")`` adds a ``fixed_size_list<float32>[16]`` column,
   in one new table version, however many ranks predict;
3. build a vector index on the new column with lancedb (IVF-PQ: partitions must not outnumber
   the rows; ``num_partitions=4`` trains on this small table);
4. query it: the nearest neighbours of each test row vote for its label.

The table (1,500 synthetic items in 6 classes, ``features`` a noisy 32-float vector) lives in
a temporary directory. Run: ``python examples/embed_table.py``.
"""

from __future__ import annotations

import tempfile
from collections import Counter

import lancedb
import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import torch
from lancedb.index import IvfPq
from torch import nn

from lance_lightning import LanceDataModule, LancePredictionWriter

FEATURES, EMBEDDING, CLASSES, ROWS, NEIGHBOURS = 32, 16, 6, 1500, 5


def write_items(uri: str, *, seed: int = 0) -> None:
    """``items``: ``id`` int64, ``features`` fixed_size_list<float32>[32], ``label`` int64."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLASSES, FEATURES)).astype(np.float32)
    labels = rng.integers(0, CLASSES, ROWS)
    features = centres[labels] + 1.5 * rng.standard_normal((ROWS, FEATURES)).astype(np.float32)
    table = pa.table(
        {
            "id": np.arange(ROWS, dtype=np.int64),
            "features": pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), FEATURES),
            "label": labels.astype(np.int64),
        }
    )
    lancedb.connect(uri).create_table("items", table)


class Embedder(pl.LightningModule):
    """``features -> 16-d embedding -> class logits``; predict returns the unit-length embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, EMBEDDING))
        self.head = nn.Linear(EMBEDDING, CLASSES)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.head(self.embed(batch["features"])), batch["label"])

    def predict_step(self, batch, batch_idx):
        return nn.functional.normalize(self.embed(batch["features"]), dim=1)  # [B, 16] float32

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def trainer(tmp: str, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp,
        **kwargs,
    )


def main() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"{tmp}/db"
        write_items(uri)
        splits = {"kind": "hash", "columns": ["id"], "weights": {"train": 8, "test": 2}}
        pl.seed_everything(0, verbose=False)
        model = Embedder()
        trainer(tmp, max_epochs=5).fit(model, datamodule=LanceDataModule(uri, "items", splits=splits, batch_size=64))

        # 2. every row's embedding into the table: the predict stage reads the whole table in table order
        writer = LancePredictionWriter(column="embedding")
        everything = LanceDataModule(uri, "items", columns=["features"], splits=None, eval_batch_size=256)
        trainer(tmp, callbacks=[writer]).predict(model, datamodule=everything, return_predictions=False)
        table = lancedb.connect(uri).open_table("items")
        field = table.schema.field("embedding")
        print(f"wrote {writer.result['rows']} embeddings: table version {table.version}, column {field}")

        # 3. a vector index on the new column
        table.create_index("embedding", config=IvfPq(distance_type="cosine", num_partitions=4, num_sub_vectors=4))
        print(f"indexes: {[(i.name, i.index_type) for i in table.list_indices()]}")

        # 4. nearest-neighbour queries: each test row's label by the vote of its neighbours
        test_ids = LanceDataModule(uri, "items", splits=splits)
        test_ids.setup("test")
        test = table.search().where(f"id IN ({', '.join(map(str, split_ids(test_ids)))})").to_arrow()
        hits = 0
        for query_id, vector, label in zip(test["id"].to_pylist(), test["embedding"].to_pylist(), test["label"]):
            found = (
                table.search(vector, vector_column_name="embedding")
                .distance_type("cosine")
                .where(f"id != {query_id}", prefilter=True)
                .limit(NEIGHBOURS)
                .select(["id", "label", "_distance"])  # naming _distance keeps lance from warning once a query
                .to_arrow()
            )
            vote = Counter(found["label"].to_pylist()).most_common(1)[0][0]
            hits += vote == label.as_py()
        first = table.search(test["embedding"][0].as_py(), vector_column_name="embedding").limit(3).to_arrow()
        print(f"nearest to id {test['id'][0]}: ids {first['id'].to_pylist()} labels {first['label'].to_pylist()}")
        accuracy = hits / test.num_rows
        print(f"test accuracy {accuracy:.3f} ({NEIGHBOURS}-nearest-neighbour vote over {test.num_rows} test rows)")
        return accuracy


def split_ids(data: LanceDataModule) -> list[int]:
    """The ids of the test split's rows."""
    dataset = data.datasets["test"]
    return dataset[np.arange(len(dataset))]["id"].tolist()


if __name__ == "__main__":
    main()
