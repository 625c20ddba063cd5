"""Run Trainer.fit/validate/test/predict on a LanceDataModule and record, per rank, every id read.

Launched by tests/distributed/ as a standalone script, either directly (``python ddp_run.py
spec.json``: Lightning's own launcher re-runs this script once per extra local rank) or under
``torchrun`` (Lightning then detects TorchElastic and launches nothing). The spec, a JSON file
written by the test, lists runs executed one after another in the same processes (a second
Trainer reuses the launched processes and their process group), which keeps the start-up
cost of importing torch and Lightning to once per process.

For each run, each rank writes ``<out>/<tag>-rank<global_rank>.json`` with the Trainer's
topology, the sampler the loaders really use, the ids of every batch per stage and epoch,
and for evaluation the torchmetrics values (synchronised across ranks by torchmetrics).

The table is created by the test, never here: DataLoader workers start with ``forkserver``,
which imports this module (without running ``main``) in every worker process.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any

# Only the standard library at module level: DataLoader workers (forkserver) import this
# script, and should not pay for torch, Lightning and torchmetrics a second time.

# Integer weights and integer-valued inputs: every prediction, squared error and sum below is
# an exactly representable float32 value, so the order in which ranks' partial sums are added
# cannot change the result and the DDP metric must equal the single-process one bit for bit.
REG_WEIGHT = [[1.0, -2.0, 0.0, 1.0]]
CLS_WEIGHT = [[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, -1.0], [-1.0, 1.0, 1.0, 0.0]]


def make_recorder(hold_s: float = 0.0, marker_dir: str | None = None) -> Any:
    """A tiny regressor + classifier LightningModule that records the ids of every batch.
    ``hold_s``: each training step also sleeps that long, and the first writes this rank's pid to
    ``<marker_dir>/training-rank<global_rank>.pid`` (a test then knows the rank is mid-fit)."""
    import time

    import lightning.pytorch as pl
    import torch
    from torch import nn
    from torchmetrics import MeanSquaredError, SumMetric
    from torchmetrics.classification import MulticlassAccuracy

    class Recorder(pl.LightningModule):
        """A tiny regressor + classifier that records the ids of every batch it is given."""

        def __init__(self) -> None:
            super().__init__()
            self.reg = nn.Linear(4, 1)
            self.cls = nn.Linear(4, 3)
            with torch.no_grad():
                self.reg.weight.copy_(torch.tensor(REG_WEIGHT))
                self.reg.bias.fill_(0.5)
                self.cls.weight.copy_(torch.tensor(CLS_WEIGHT))
                self.cls.bias.zero_()
            self.mse = MeanSquaredError()
            self.acc = MulticlassAccuracy(num_classes=3, average="micro")
            self.id_sum = SumMetric()
            self.seen: dict[str, dict[str, list[list[int]]]] = {}
            self.samplers: dict[str, dict[str, Any]] = {}
            self.metrics: dict[str, dict[str, float]] = {}

        def _record(self, stage: str, batch: dict[str, torch.Tensor]) -> None:
            epoch = str(self.current_epoch) if stage in ("train", "val") else "0"
            self.seen.setdefault(stage, {}).setdefault(epoch, []).append(batch["id"].tolist())

        def _loader_sampler(self, stage: str, loaders: Any) -> None:
            loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
            sampler = loader.sampler
            ours = self.trainer.datamodule.samplers[stage]
            self.samplers[stage] = {
                "type": type(sampler).__name__,
                "is_datamodule_sampler": sampler is ours,
                "rank": ours.rank,
                "num_replicas": ours.num_replicas,
                "len": len(ours),
            }

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.reg(x).squeeze(-1), self.cls(x)

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            if hold_s:
                marker = Path(marker_dir) / f"training-rank{self.global_rank}.pid"
                if not marker.exists():
                    marker.write_text(str(os.getpid()))
                time.sleep(hold_s)
            self._record("train", batch)
            pred, logits = self(batch["x"])
            return nn.functional.mse_loss(pred, batch["y"].float()) + nn.functional.cross_entropy(logits, batch["y"])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=1e-3)

        def on_train_epoch_start(self) -> None:
            self._loader_sampler("train", self.trainer.train_dataloader)

        def _evaluate(self, stage: str, batch: dict[str, torch.Tensor]) -> None:
            self._record(stage, batch)
            pred, logits = self(batch["x"])
            self.mse.update(pred, batch["y"].float())
            self.acc.update(logits, batch["y"])
            self.id_sum.update(batch["id"].double())

        def _evaluation_end(self, stage: str) -> None:
            # compute() gathers every rank's state: all ranks must get here, however many batches
            # they had, or this hangs.
            key = f"{stage}/{self.current_epoch}" if stage == "val" else stage
            self.metrics[key] = {
                "mse": self.mse.compute().item(),
                "accuracy": self.acc.compute().item(),
                "id_sum": self.id_sum.compute().item(),
            }
            for metric in (self.mse, self.acc, self.id_sum):
                metric.reset()

        def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
            self._evaluate("val", batch)

        def on_validation_epoch_start(self) -> None:
            self._loader_sampler("val", self.trainer.val_dataloaders)

        def on_validation_epoch_end(self) -> None:
            self._evaluation_end("val")

        def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
            self._evaluate("test", batch)

        def on_test_epoch_start(self) -> None:
            self._loader_sampler("test", self.trainer.test_dataloaders)

        def on_test_epoch_end(self) -> None:
            self._evaluation_end("test")

        def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            self._record("predict", batch)
            return batch["id"]

        def on_predict_epoch_start(self) -> None:
            self._loader_sampler("predict", self.trainer.predict_dataloaders)

    return Recorder()


def run_one(spec: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """One Trainer call as described by ``run``; returns (and writes) this rank's record."""
    data = {**spec["data"], **run.get("data", {})}
    from lance_lightning import LanceDataModule
    from tests.helpers import quiet_trainer

    dm = LanceDataModule(spec["uri"], spec["table"], columns=["id", "x", "y"], **data)
    model = make_recorder(run.get("hold_s", 0.0), spec["out"])
    devices, num_nodes = run.get("devices", 1), run.get("num_nodes", 1)
    trainer = quiet_trainer(
        spec["out"],
        devices=devices,
        num_nodes=num_nodes,
        strategy="ddp" if devices * num_nodes > 1 else "auto",
        use_distributed_sampler=run.get("use_distributed_sampler", True),
        max_epochs=run.get("epochs", 2),
        num_sanity_val_steps=0,
    )
    action = run["action"]
    if action == "fit":
        trainer.fit(model, datamodule=dm)
    else:
        getattr(trainer, action)(model, datamodule=dm)
    record = {
        "tag": run["tag"],
        "global_rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "node_rank": trainer.node_rank,
        "local_rank": trainer.local_rank,
        "env": {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE")},
        "strategy": type(trainer.strategy).__name__,
        "cluster_environment": type(trainer.strategy.cluster_environment).__name__
        if hasattr(trainer.strategy, "cluster_environment")
        else None,
        "samplers": model.samplers,
        "seen": model.seen,
        "metrics": model.metrics,
    }
    out = Path(spec["out"]) / f"{run['tag']}-rank{trainer.global_rank}.json"
    out.write_text(json.dumps(record))
    return record


def main(argv: list[str]) -> None:
    # Speed only: CPython 3.11 never preloads ``__main__`` into the forkserver (it looks up the
    # key "main_path" where spawn writes "init_main_from_path"), so every DataLoader worker
    # imports what it needs itself. Preload torch, which is fork-safe and every worker needs;
    # lancedb is deliberately not preloaded (forking after importing it is what lancedb warns about).
    multiprocessing.set_forkserver_preload(["torch"])
    spec = json.loads(Path(argv[1]).read_text())
    for run in spec["runs"]:
        run_one(spec, run)
    _close_process_group()


def _close_process_group() -> None:
    """Leave the process group together: exiting with gloo's threads still up can abort a rank."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv)
