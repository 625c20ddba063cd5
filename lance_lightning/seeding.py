"""The data seed: ``seed=None`` follows Lightning's ``seed_everything``, else a fixed default.

``seed_everything(N)`` exports ``PL_GLOBAL_SEED=N`` in its process (Lightning's own samplers read
it the same way), so a seed sweep (``seed=1,2,3``) changes the data order too instead of silently
reusing one. Without it the seed is :data:`DEFAULT_SEED`, so an unseeded run is still
reproducible. Each DDP rank runs ``seed_everything`` itself; the datamodule then takes rank 0's
resolved seed on every rank (a rank seeded differently, e.g. ``seed_everything(42 + rank)`` for
augmentations, still reads its own shard of one order).

Pure: imports nothing of lancedb, torch or Lightning.
"""

from __future__ import annotations

import os

from .options import SettingError, as_seed

DEFAULT_SEED = 0
"""The data seed when neither ``seed`` nor ``seed_everything`` gives one."""
SEED_ENV = "PL_GLOBAL_SEED"
"""Where ``lightning.seed_everything`` leaves its seed (in this process and the ones it starts)."""


def resolve_seed(seed: int | None) -> tuple[int, str]:
    """``(the seed, where it came from)``: ``seed`` itself when given, else ``PL_GLOBAL_SEED``,
    else :data:`DEFAULT_SEED`."""
    if seed is not None:
        return seed, "seed"
    value = os.environ.get(SEED_ENV)
    if value is None:
        return DEFAULT_SEED, "default"
    try:
        return as_seed(SEED_ENV, int(value)), "seed_everything"
    except ValueError:
        raise SettingError(
            f"seed=None follows seed_everything, but {SEED_ENV}={value!r} is not an integer >= 0: "
            "pass seed=<int> to the datamodule"
        ) from None
