"""Fit with ``neighbors=`` under real DDP: ``python neighbors_ddp.py <uri> <out>``.

Launched by tests/distributed/test_neighbors_ddp.py in a fresh process (Lightning's launcher re-runs
this script for rank 1; CPU, gloo). Every rank writes ``<out>/rank<r>.json``: each row it trained on
with its neighbours' ids, and the directory of the lists it read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def main(uri: str, out: str) -> None:
    import lightning.pytorch as pl
    import torch

    from lance_lightning import LanceDataModule
    from tests.helpers import quiet_trainer

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.seen: list[tuple[int, list[int]]] = []

        def training_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
            found = batch["neighbors"]
            ids = torch.where(found["mask"], found["id"], torch.full_like(found["id"], -1))
            self.seen += list(zip(batch["id"].tolist(), ids.tolist()))
            return self.layer(batch["x"]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = LanceDataModule(
        uri,
        "rows",
        columns=["id", "x", "y"],
        splits={"train": 1.0},
        batch_size=8,
        seed=3,
        num_workers=2,
        neighbors={"column": "x", "k": 3, "exclude_same": "y"},
        cache=str(Path(out) / "stages"),
    )
    trainer = quiet_trainer(
        out,
        devices=2,
        strategy="ddp",
        max_epochs=1,
        limit_val_batches=0,
    )
    model = Model()
    trainer.fit(model, datamodule=dm)
    record = {"global_rank": trainer.global_rank, "seen": model.seen, "lists": str(dm.neighbor_lists)}
    (Path(out) / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
