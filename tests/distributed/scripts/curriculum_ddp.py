"""Fit with a RowValueWriter under real DDP: ``python curriculum_ddp.py <uri> <out>``.

Launched by tests/distributed/test_curriculum_ddp.py in a fresh process (Lightning's launcher
re-runs this script for rank 1; CPU, gloo). Table ``rows`` (``id``, ``x``, ``w``) is made by the
test. The model returns ``id + 1 + 1000 * epoch`` as each row's ``row_loss``; every rank writes
``<out>/rank<r>.json`` with the ids it trained on, epoch by epoch, and the versions the writer made.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def main(uri: str, out: str) -> None:
    import lightning.pytorch as pl
    import torch

    from lance_lightning import LanceDataModule, RowValueWriter
    from tests.helpers import quiet_trainer

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.seen: dict[int, list[int]] = {}

        def training_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
            ids = batch["id"]
            self.seen.setdefault(self.current_epoch, []).extend(ids.tolist())
            loss = self.layer(batch["x"]).pow(2).mean()
            return {"loss": loss, "row_loss": (ids + 1 + 1000 * self.current_epoch).double()}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = LanceDataModule(
        uri,
        "rows",
        columns=["id", "x"],
        splits={"kind": "hash", "columns": ["id"], "weights": {"train": 1}},
        batch_size=8,
        seed=3,
        weight_column="w",
        table_updates="next_epoch",
        cache=str(Path(out) / "stages"),
    )
    writer = RowValueWriter(column="w", key="id", output="row_loss")
    model = Model()
    trainer = quiet_trainer(
        out,
        devices=2,
        strategy="ddp",
        max_epochs=2,
        limit_val_batches=0,
        reload_dataloaders_every_n_epochs=1,
        callbacks=[writer],
    )
    trainer.fit(model, datamodule=dm)
    record = {
        "global_rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "seen": {str(epoch): ids for epoch, ids in model.seen.items()},
        "versions": writer.versions,
    }
    (Path(out) / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
