"""Validate a mixture per source under real DDP: ``python mixture_eval_ddp.py <uri> <out>``.

Launched by tests/distributed/test_mixture_eval_ddp.py in a fresh process (Lightning's launcher
re-runs this script for the other rank; CPU, gloo, 2 ranks). Tables ``rows``, ``more`` and
``more_val`` are made by the test. Every validation step gathers a number from every rank (a
per-step collective: a rank with one batch fewer would hang the other). Every rank writes
``<out>/rank<r>.json``: each validation batch's loader, ids and sources; rank 0 also the metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

MIX = {
    "even": {"proportion": 0.5, "filter": "id % 2 = 0"},
    "odd": {"proportion": 0.2, "filter": "id % 2 = 1"},
    "more": {"proportion": 0.3, "table": "more", "val_table": "more_val"},
}


def main(uri: str, out: str) -> None:
    import lightning.pytorch as pl
    import torch

    from lance_lightning import LanceDataModule
    from tests.helpers import quiet_trainer

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.read: list[dict[str, Any]] = []

        def training_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
            return self.layer(batch["x"]).pow(2).mean()

        def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
            self.all_gather(torch.tensor(len(batch["id"])))  # every rank must reach every step
            ids, sources = batch["id"].tolist(), batch["source"].tolist()
            self.read.append({"loader": dataloader_idx, "ids": ids, "sources": sources})
            name = self.trainer.datamodule.source_name(dataloader_idx)
            # sums, not a mean: Lightning's synced mean divides by the ranks' row counts averaged as an
            # integer (10 for 11 and 10 rows), which is not exact when ranks hold different counts
            total, rows = batch["x"][:, 0].sum(), float(len(batch["id"]))
            for key, value in ((f"val/{name}/x0_sum", total), (f"val/{name}/rows", rows)):
                self.log(key, value, reduce_fx="sum", sync_dist=True, add_dataloader_idx=False, batch_size=len(ids))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = LanceDataModule(
        uri,
        "rows",
        columns=["id", "x"],
        splits={"kind": "sql", "predicates": {"train": "id < 160", "val": "id >= 160"}},
        batch_size=8,
        eval_batch_size=4,
        seed=3,
        mix=MIX,
        eval_by_source=True,
        cache=str(Path(out) / "stages"),
    )
    model = Model()
    trainer = quiet_trainer(
        out,
        devices=2,
        strategy="ddp",
        max_epochs=1,
        limit_train_batches=2,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val/")}
    rank, world = trainer.global_rank, trainer.world_size
    record = {"global_rank": rank, "world_size": world, "read": model.read, "metrics": metrics}
    (Path(out) / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
