"""The predict job: ``lance-lightning-predict`` / ``python -m lance_lightning.app.predict``.

``predict(cfg)`` loads the model from ``ckpt_path`` (its class is the ``model`` group's
``_target_``; its arguments come from the checkpoint), instantiates the datamodule, the callbacks
(at least one :class:`~lance_lightning.LancePredictionWriter`: ``callbacks=writer``, the
default) and the Trainer, and runs ``trainer.predict`` without keeping the predictions in
memory: the writer puts them into the table. ``main()`` only wraps it in ``@hydra.main`` with
``conf/predict.yaml``. Tests call ``predict(cfg)`` with a config from ``hydra.compose``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.config_store import ConfigStore
from hydra.utils import get_class, instantiate
from omegaconf import MISSING, DictConfig

from ..writer import LancePredictionWriter
from .config import JobConfig, check_config
from .demo import ensure_demo
from .errors import reported_errors
from .train import CONFIG_PATH, _one_job_of_many, _pin_argv_to_this_job, build_datamodule, instantiate_group

CONFIG_NAME = "predict"


@dataclass
class PredictConfig(JobConfig):
    """The predict job's top level: the config groups plus the run's own settings."""

    task_name: str = "predict"
    seed: int | None = 42  # null: no global seeding
    ckpt_path: str = MISSING  # the checkpoint to predict with
    build_demo: bool = True  # build the demo table when data names it and it is missing


ConfigStore.instance().store(name="predict_schema", node=PredictConfig)


def load_model(cfg: DictConfig) -> pl.LightningModule:
    """The model of ``cfg.ckpt_path``, as the class the ``model`` group names."""
    model_class = get_class(cfg.model._target_)
    return model_class.load_from_checkpoint(cfg.ckpt_path, map_location="cpu")


def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    """Predict as ``cfg`` says; return what each writer wrote (table, version, columns, rows)."""
    check_config(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    if cfg.get("build_demo", True):
        ensure_demo(cfg.data.uri, cfg.data.table)
    callbacks = instantiate_group(cfg.get("callbacks"))
    writers = [c for c in callbacks if isinstance(c, LancePredictionWriter)]
    if not writers:
        raise ValueError(
            "the predict job writes its predictions with a LancePredictionWriter, and the callbacks have none: "
            "use callbacks=writer (conf/callbacks/writer.yaml)"
        )
    datamodule = build_datamodule(cfg.data)
    model = load_model(cfg)
    loggers = instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    trainer.predict(model, datamodule=datamodule, return_predictions=False)
    results = [w.result for w in writers if w.result is not None]
    if trainer.is_global_zero:
        for written in results:
            print(
                f"predictions written: {written['rows']:,} rows of {', '.join(written['columns'])} in table "
                f"{written['table']!r}, version {written['version']}"
            )
    return results


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> None:
    """The ``lance-lightning-predict`` console script."""
    _pin_argv_to_this_job()
    with reported_errors("lance-lightning-predict"), _one_job_of_many():
        predict(cfg)


if __name__ == "__main__":
    main()
