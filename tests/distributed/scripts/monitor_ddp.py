"""2-process DDP fit with a LoaderMonitor, where rank 1's loader is slow and rank 0's is not.

``python monitor_ddp.py <uri> <table> <out>``: Lightning's launcher re-runs this script for
rank 1. The transform sleeps ``SLOW_S`` a batch on rank 1 only (``num_workers=0``: it runs in the
rank's own process), so rank 1 waits for data most of each step, while rank 0 waits in the
gradient all-reduce for rank 1 (compute, not data). Each rank writes ``<out>/monitor-rank<r>.json``:
its own windows as the monitor measured them, the value Lightning logged for each, and the
LoaderBottleneckWarnings it emitted. Rank 0's CSVLogger writes ``<out>/csv/metrics.csv``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

SLOW_S = 0.2


def slow_on_rank_1(batch):
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_rank() == 1:
        time.sleep(SLOW_S)
    return batch


def main(uri: str, table: str, out: str) -> None:
    import lightning.pytorch as pl
    import torch
    import torch.distributed as dist
    from lightning.pytorch.loggers import CSVLogger

    from lance_lightning import LanceDataModule, LoaderMonitor
    from lance_lightning.monitor import LoaderBottleneckWarning
    from tests.helpers import quiet_trainer

    class Linear(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 3)

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self.layer(batch["x"]), batch["y"])

        def validation_step(self, batch, batch_idx):
            self.log("val/loss", torch.nn.functional.cross_entropy(self.layer(batch["x"]), batch["y"]), sync_dist=True)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    dm = LanceDataModule(
        uri, table, columns=["id", "x", "y"], splits={"train": 151, "val": 33, "test": 19}, batch_size=8, seed=7,
        transform=slow_on_rank_1,
        read_ahead=0,  # each batch read when its step asks: the waits this test compares are the reads'
    )  # fmt: skip
    monitor = LoaderMonitor(threshold=0.5, warn_after_steps=4)
    trainer = quiet_trainer(
        out,
        devices=2,
        strategy="ddp",
        max_epochs=1,
        log_every_n_steps=2,
        num_sanity_val_steps=0,
        logger=CSVLogger(out, name="csv", version=""),
        callbacks=[monitor],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Linear(), datamodule=dm)
    record = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "history": list(monitor.history),
        "warning": monitor.warning,
        "warnings_emitted": [str(w.message) for w in caught if issubclass(w.category, LoaderBottleneckWarning)],
    }
    Path(out, f"monitor-rank{trainer.global_rank}.json").write_text(json.dumps(record))
    if dist.is_available() and dist.is_initialized():  # leave the group together (see ddp_run.py)
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
