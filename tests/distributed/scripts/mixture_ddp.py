"""Fit a mixture under real DDP: ``python mixture_ddp.py <uri> <out> <devices> <batch_size> <batching>``.

Launched by tests/distributed/test_mixture_ddp.py in a fresh process (Lightning's launcher re-runs
this script for the other ranks; CPU, gloo). Tables ``rows`` and ``more`` are made by the test.
Every rank writes ``<out>/rank<r>.json``: each training batch's ids and sources, step by step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

MIX = {
    "even": {"proportion": 0.5, "filter": "id % 2 = 0"},
    "low_odd": {"proportion": 0.2, "filter": "id % 2 = 1 AND id < 120"},
    "more": {"proportion": 0.3, "table": "more"},
}


def main(uri: str, out: str, devices: int, batch_size: int, batching: str) -> None:
    import lightning.pytorch as pl
    import torch

    from lance_lightning import LanceDataModule
    from tests.helpers import quiet_trainer

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.steps: list[dict[str, Any]] = []

        def training_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
            self.steps.append(
                {"epoch": self.current_epoch, "ids": batch["id"].tolist(), "sources": batch["source"].tolist()}
            )
            return self.layer(batch["x"]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = LanceDataModule(
        uri,
        "rows",
        columns=["id", "x"],
        splits={"train": 1.0},
        batch_size=batch_size,
        seed=3,
        mix=MIX,
        mix_batching=batching,
        num_workers=2 if devices > 1 else 0,
        cache=str(Path(out) / "stages"),
    )
    model = Model()
    trainer = quiet_trainer(
        out,
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=2,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=dm)
    record = {"global_rank": trainer.global_rank, "world_size": trainer.world_size, "steps": model.steps}
    (Path(out) / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
