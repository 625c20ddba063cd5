"""2-process DDP: a model that only does ``x, y = batch`` trains with ``batch_keys``; seed from Lightning.

``python batch_keys_ddp.py <uri> <out_dir> <num_workers>``: Lightning's launcher re-runs this
script for rank 1. Each rank seeds with ``seed_everything(11 + LOCAL_RANK)`` (a per-rank seed, as
some projects do for augmentations) and builds the datamodule with ``seed=None``: both must read
rank 0's seed (11). Each rank writes ``<out>/rank<r>.json``: the row ids it trained on (``x[:, 0]``)
and the data seed it used.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> None:
    import lightning.pytorch as pl
    import torch

    from lance_lightning import LanceDataModule
    from tests.helpers import quiet_trainer

    class Unpacking(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 3)
            self.ids: list[int] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            self.ids += x[:, 0].long().tolist()
            return torch.nn.functional.cross_entropy(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    uri, out, workers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    pl.seed_everything(11 + int(os.environ.get("LOCAL_RANK", 0)))
    dm = LanceDataModule(
        uri, "rows", columns=["x", "y"], splits={"train": 64, "val": 16}, batch_size=8, num_workers=workers,
        batch_keys=["x", "y"],
    )  # fmt: skip
    model = Unpacking()
    trainer = quiet_trainer(
        out,
        devices=2,
        strategy="ddp",
        max_epochs=1,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=dm)
    record = {"ids": model.ids, "seed": dm.options.seed, "seed_from": dm.hparams["data_seed_from"]}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
