"""``python -m lance_lightning.app.cli``: the same job through Lightning's own ``LightningCLI``.

For users who prefer jsonargparse to Hydra: every ``LanceDataModule`` argument is a
``--data.*`` flag, the model is any ``LightningModule`` given by class path, e.g.::

    python -m lance_lightning.app.cli fit --data.uri data/demo --data.table digits \\
        --data.columns '[image, label]' --model MLPClassifier --trainer.max_epochs 5
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.cli import ArgsType, LightningCLI

from ..datamodule import LanceDataModule
from .callbacks import ShardPlanLogger
from .models import MLPClassifier  # noqa: F401 - lets `--model MLPClassifier` resolve by name


def cli_main(args: ArgsType = None, **kwargs: Any) -> LightningCLI:
    """Build and run the ``LightningCLI`` (``args`` as on the command line; None: ``sys.argv``).

    A :class:`~lance_lightning.app.callbacks.ShardPlanLogger` is always added, as in the Hydra job,
    so the logged hyperparameters say how each rank's batches were cut.
    """
    trainer_defaults = dict(kwargs.pop("trainer_defaults", None) or {})
    callbacks = trainer_defaults.get("callbacks") or []
    trainer_defaults["callbacks"] = [*callbacks, ShardPlanLogger()]
    return LightningCLI(
        pl.LightningModule,
        LanceDataModule,
        subclass_mode_model=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        trainer_defaults=trainer_defaults,
        **kwargs,
    )


def main() -> None:
    cli_main()


if __name__ == "__main__":
    main()
