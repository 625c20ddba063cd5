"""Callbacks that record what a run read, next to its metrics."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from .report import shard_plan


class ShardPlanLogger(pl.Callback):
    """Logs the shard plan of a :class:`~lance_lightning.LanceDataModule` as a hyperparameter.

    At the start of fit and test, every logger gets ``{"shard_plan": {stage: {...}}}`` (see
    :func:`lance_lightning.app.report.shard_plan`: split, rows, batch size, batches and rows per
    rank, padded and dropped rows) for the stages set up so far, at the Trainer's real world
    size. With the datamodule's own ``table_version`` and ``split_rows`` hyperparameters this
    says exactly which rows each rank read. Other datamodules are ignored.
    """

    def __init__(self) -> None:
        self.plan: dict[str, dict[str, Any]] = {}

    def _log(self, trainer: pl.Trainer) -> None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "samplers") or not hasattr(dm, "split_for_stage"):
            return
        self.plan.update(shard_plan(dm, trainer.world_size))
        for logger in trainer.loggers:
            logger.log_hyperparams({"shard_plan": self.plan})

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer)
