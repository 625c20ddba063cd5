"""``lance-lightning-inspect``: what a training run would read, printed before any training.

Takes the same config and overrides as ``lance-lightning-train`` and prints the table, its
version and schema with the tensor each selected column becomes, each split's row count and
label balance (``inspect.label_column``), and for the configured world size
(``trainer.devices x trainer.num_nodes``, or ``inspect.world_size``) each rank's batches
per epoch and the rows padded or dropped to keep ranks in step. Nothing is trained, no process
group is started, and no stage is filled (the splits are read from the table).
"""

from __future__ import annotations

import sys
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from .config import check_config
from .demo import ensure_demo
from .report import format_report, label_balance, resolve_world_size, shard_plan, split_sizes
from .train import CONFIG_NAME, CONFIG_PATH

READ_THE_TABLE = {"staging": "off", "cache": None, "in_memory": False, "num_workers": 0}
"""The data settings :func:`inspect` replaces: it fills no stage, starts no worker."""


def inspect(cfg: DictConfig) -> dict[str, Any]:
    """Set up the datamodule of ``cfg`` (no Trainer) and return what the report shows."""
    check_config(cfg)
    if cfg.get("build_demo", True):
        ensure_demo(cfg.data.uri, cfg.data.table)
    options = cfg.get("inspect") or {}
    world_size = options.get("world_size")
    if world_size is None:
        world_size = resolve_world_size(cfg.trainer)
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"inspect.world_size must be a whole number of ranks >= 1, got {world_size!r}")
    label_column = options.get("label_column")

    # a look, not a run: splits read from the table, so that no stage is filled (or evicted for
    # one) and no worker or fork server starts; the plan is the same however the rows are read
    dm = instantiate(cfg.data, **READ_THE_TABLE)
    dm.setup()  # no Trainer: rank 0 of 1; the plan below uses the configured world size
    table = dm.source.open()
    balance = None
    if label_column:
        try:
            balance = label_balance(dm, label_column)
        except KeyError as err:
            print(f"note: no label balance: {err.args[0]}")
            label_column = None
    return {
        "source": dm.source.describe(),
        "schema": table.schema,
        "tensors": dm.column_tensors(),
        "splits": split_sizes(dm),
        "label_column": label_column,
        "label_balance": balance,
        "world_size": world_size,
        "shard_plan": shard_plan(dm, world_size),
    }


def render(report: dict[str, Any]) -> str:
    """The printed form of :func:`inspect`'s result."""
    return format_report(
        source=report["source"],
        schema=report["schema"],
        tensors=report["tensors"],
        sizes=report["splits"],
        plan=report["shard_plan"],
        balance=report["label_balance"],
        label_column=report["label_column"],
    )


# A look, not a run: no output directory, no log file (the user's own overrides come later and win).
_NO_OUTPUTS = ("hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def _hydra_main(cfg: DictConfig) -> None:
    print(render(inspect(cfg)))


def main() -> None:
    """The ``lance-lightning-inspect`` console script."""
    sys.argv[1:1] = list(_NO_OUTPUTS)
    _hydra_main()


if __name__ == "__main__":
    main()
