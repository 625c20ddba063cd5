"""The main job: ``lance-lightning-train`` / ``python -m lance_lightning.app.train``.

``train(cfg)`` instantiates the datamodule, model, callbacks, loggers and Trainer from a
composed config, fits, tests, and returns the test metrics; ``main()`` only wraps it in
``@hydra.main`` with the configs in the repository's ``conf/``. Tests call ``train(cfg)``
directly with a config from ``hydra.compose``.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, read_write

from ..datamodule import LanceDataModule
from .callbacks import ShardPlanLogger
from .config import check_config  # importing config registers the schemas in Hydra's ConfigStore
from .demo import ensure_demo
from .errors import reported_errors

# The repository's conf/, found from this file (``../conf``). An absolute path: Hydra would
# read a relative one as a Python package ("lance_lightning/../conf") under a console script.
CONFIG_PATH = str(Path(__file__).parent / "conf")  # a link to the repository's conf/, copied into the wheel
CONFIG_NAME = "config"


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate each entry of a ``callbacks``/``logger`` group that has a ``_target_``."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def build_datamodule(node: DictConfig) -> Any:
    """The ``data`` node instantiated; a :class:`LanceDataModule`'s table and columns checked now,
    in the main job, so a wrong name is reported before any Trainer or worker starts."""
    datamodule = instantiate(node)
    if isinstance(datamodule, LanceDataModule):
        datamodule.check_table()
    return datamodule


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit then test as ``cfg`` says; return the test metrics (``{"test/acc": ..., ...}``)."""
    check_config(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    if cfg.get("build_demo", True):
        ensure_demo(cfg.data.uri, cfg.data.table)
    # The demo reads in the main process on purpose (worker start-up costs more than it saves).
    warnings.filterwarnings("ignore", ".*does not have many workers.*")

    datamodule = build_datamodule(cfg.data)
    model = instantiate(cfg.model)
    callbacks = instantiate_group(cfg.get("callbacks"))
    if not any(isinstance(c, ShardPlanLogger) for c in callbacks):
        callbacks.append(ShardPlanLogger())
    loggers = instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics: dict[str, float] = {}
    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        ckpt_path = (best or None) if cfg.get("train", True) else cfg.get("ckpt_path")
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
    if trainer.is_global_zero:
        shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
        print(f"test metrics: {shown or '(none: test=false)'}")
        if log_dir:
            print(f"logs: {log_dir}")
    return metrics


def _pin_argv_to_this_job() -> None:
    """In a ``-m`` sweep, make DDP's re-launched ranks run this job, not the whole sweep again.

    Lightning starts ranks 1.. by re-running ``sys.argv`` (plus ``hydra.run.dir``); in a
    multirun that command would start a new sweep in every rank. This job's own overrides
    name exactly its config, and its output directory is the one the ranks should share.
    """
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def _one_job_of_many() -> Iterator[None]:
    """Leave no DDP state behind, so the next job of a sweep starts its own ranks.

    Lightning's launcher exports ``LOCAL_RANK`` & co. into this process and keeps the process
    group; the next job would take them for an external launcher's and join dead peers.
    """
    saved = {k: os.environ.get(k) for k in _DDP_ENV}
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> None:
    """The ``lance-lightning-train`` console script."""
    _pin_argv_to_this_job()
    with reported_errors("lance-lightning-train"), _one_job_of_many():
        train(cfg)


if __name__ == "__main__":
    main()
