r"""``lance-lightning-cli``: the same job through Lightning's own ``LightningCLI`` (jsonargparse).

For users who prefer jsonargparse to Hydra: every ``LanceDataModule`` argument is a
``--data.*`` flag, the model is any ``LightningModule`` given by class path. Needs the ``cli``
extra (``pip install 'lance-lightning[cli]'``). With the demo table (``lance-lightning-demo``
builds ``data/demo``), from the directory that holds ``data/``::

    lance-lightning-cli fit --data.uri data/demo --data.table digits \
        --data.columns '[image, label]' --model MLPClassifier --trainer.max_epochs 1

The splits default to ``{train: 0.8, val: 0.1, test: 0.1}``; any other is one flag, e.g.
``--data.splits '{train: 0.9, val: 0.1}'``. ``--data.batch_keys '[image, label]'`` hands a
model that unpacks ``x, y = batch`` its tuples. The table and columns are checked as soon as the
datamodule is built, before the Trainer starts, and reported as one line
(``LANCE_LIGHTNING_FULL_ERROR=1`` for the traceback). The global seed is 42 (as the Hydra job's) unless
``--seed_everything N``; the datamodule's ``seed`` (None) follows it.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch as pl

from ..datamodule import LanceDataModule
from ..options import DEFAULT_SPLITS
from .callbacks import ShardPlanLogger
from .errors import reported_errors
from .models import MLPClassifier  # noqa: F401 - lets `--model MLPClassifier` resolve by name

INSTALL_HINT = "pip install 'lance-lightning[cli]'"
DEFAULT_JOB_SEED = 42
CLI_FULL_ERROR_ENV = "LANCE_LIGHTNING_FULL_ERROR"
"""Set to 1 for the traceback of a configuration error (printed as one line otherwise)."""


class MissingCliExtra(ImportError):
    """jsonargparse (the ``cli`` extra) is not installed."""


def lightning_cli_class() -> type:
    """Lightning's ``LightningCLI``, checking the datamodule's table once it is built; raises
    :class:`MissingCliExtra` naming the extra when jsonargparse is missing."""
    try:
        import jsonargparse  # noqa: F401
        from lightning.pytorch import cli as lightning_cli
    except ImportError as err:
        raise MissingCliExtra(f"lance-lightning-cli needs jsonargparse ({err}): {INSTALL_HINT}") from None
    available = getattr(lightning_cli, "_JSONARGPARSE_SIGNATURES_AVAILABLE", True)
    if not available:
        raise MissingCliExtra(f"lance-lightning-cli needs jsonargparse[signatures] ({available}): {INSTALL_HINT}")

    class LanceLightningCLI(lightning_cli.LightningCLI):
        def add_arguments_to_parser(self, parser: Any) -> None:
            # jsonargparse wants a plain dict where the signature's default is a read-only mapping
            parser.set_defaults({"data.splits": dict(DEFAULT_SPLITS)})

        def instantiate_classes(self) -> None:
            super().instantiate_classes()
            if isinstance(self.datamodule, LanceDataModule):
                self.datamodule.check_table()  # a wrong table or column: now, not inside fit

    return LanceLightningCLI


def cli_main(args: Any = None, **kwargs: Any) -> Any:
    """Build and run the ``LightningCLI`` (``args`` as on the command line; None: ``sys.argv``).

    A :class:`~lance_lightning.app.callbacks.ShardPlanLogger` is always added, as in the Hydra job,
    so the logged hyperparameters say how each rank's batches were cut.
    """
    # LightningCLI's own default draws a random global seed each run, and the data seed follows it
    # (split and order): 42 instead, as the Hydra job's `seed`; --seed_everything N for another
    kwargs.setdefault("seed_everything_default", DEFAULT_JOB_SEED)
    trainer_defaults = dict(kwargs.pop("trainer_defaults", None) or {})
    callbacks = trainer_defaults.get("callbacks") or []
    trainer_defaults["callbacks"] = [*callbacks, ShardPlanLogger()]
    return lightning_cli_class()(
        pl.LightningModule,
        LanceDataModule,
        subclass_mode_model=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        trainer_defaults=trainer_defaults,
        **kwargs,
    )


def main() -> None:
    """The ``lance-lightning-cli`` console script: one line, no traceback, when the extra is missing."""
    try:
        cli_class = lightning_cli_class()
    except MissingCliExtra as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    del cli_class
    with reported_errors("lance-lightning-cli", full_error_env=CLI_FULL_ERROR_ENV):
        cli_main()


if __name__ == "__main__":
    main()
