"""Epoch orders, one class a file, and the registry that the ``shuffle`` setting names them in.

* ``none`` (:class:`SequentialOrder`): table order.
* ``uniform`` (:class:`UniformOrder`): a keyed Feistel permutation, any position computed alone.
* ``block`` (:class:`BlockOrder`): shuffled blocks dealt per rank, rows mixed within windows.
* ``weighted`` (:class:`WeightedOrder`): rows drawn with probability proportional to a weight a
  row (``weight_column`` / ``balance_column``), with or without replacement; sorted as it is read.
* ``mixture`` (:class:`MixtureOrder`): several sources at set proportions (``mix``), exact per
  epoch; selected by setting ``mix``, not ``shuffle``.

Each order says how it is built (:meth:`~.base.EpochOrder.create`), how many batches a worker
reads together (:meth:`~.base.EpochOrder.group_batches`) and whether those reads are contiguous
runs of the table. Adding one: a file with an :class:`~.base.EpochOrder` subclass, and a
``register`` line below (or :func:`register` from your own code).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .base import SEQUENTIAL_READ_ROWS, EpochOrder, rng, seed_sequence
from .block import DEFAULT_BLOCK_SIZE, DEFAULT_WINDOW_BLOCKS, BlockOrder, window_rows
from .mixture import MIX_BATCHING, MixtureOrder, MixturePlan, mixture_counts
from .none import SequentialOrder
from .uniform import FEISTEL_ROUNDS, UniformOrder
from .weighted import WeightedOrder, epoch_draws, positive_rows

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_WINDOW_BLOCKS",
    "MIX_BATCHING",
    "FEISTEL_ROUNDS",
    "SEQUENTIAL_READ_ROWS",
    "SHUFFLE_MODES",
    "BlockOrder",
    "EpochOrder",
    "MixtureOrder",
    "MixturePlan",
    "SequentialOrder",
    "ShuffleMode",
    "UniformOrder",
    "WeightedOrder",
    "epoch_draws",
    "get_order",
    "mixture_counts",
    "order_for",
    "order_names",
    "positive_rows",
    "register",
    "rng",
    "seed_sequence",
    "window_rows",
]

ORDERS: dict[str, type[EpochOrder]] = {}
"""Every order by its ``shuffle`` name, in registration order."""


def register(order: type[EpochOrder]) -> type[EpochOrder]:
    """Make ``order`` selectable as ``shuffle=order.name`` (usable as a class decorator)."""
    if not (isinstance(order, type) and issubclass(order, EpochOrder) and isinstance(order.__dict__.get("name"), str)):
        raise TypeError(f"{order!r} must be an EpochOrder subclass with its own `name`")
    if ORDERS.get(order.name, order) is not order:
        raise ValueError(f"shuffle mode {order.name!r} is already registered by {ORDERS[order.name].__qualname__}")
    ORDERS[order.name] = order
    return order


register(SequentialOrder)
register(UniformOrder)
register(BlockOrder)
register(WeightedOrder)
register(MixtureOrder)

SHUFFLE_MODES: tuple[str, ...] = tuple(name for name, order in ORDERS.items() if not order.mixes)
"""The built-in shuffle modes (orders registered later are in :func:`order_names`); the mixture
order is selected by the ``mix`` setting instead."""
ShuffleMode = Literal[SHUFFLE_MODES]  # type: ignore[valid-type]  # Literal["none", "uniform", "block", "weighted"]


def order_names() -> tuple[str, ...]:
    """Every registered shuffle mode, those registered after import included (not the mixture,
    which ``mix`` selects)."""
    return tuple(name for name, order in ORDERS.items() if not order.mixes)


def get_order(name: str) -> type[EpochOrder]:
    """The order class of shuffle mode ``name``; a ValueError naming the valid modes if unknown."""
    order = ORDERS.get(name) if isinstance(name, str) else None
    if order is None:
        raise ValueError(f"unknown shuffle mode {name!r}; valid modes are {', '.join(ORDERS)}")
    return order


def order_for(
    num_rows: int,
    *,
    mode: str,
    seed: int,
    epoch: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
    window_blocks: int = DEFAULT_WINDOW_BLOCKS,
    streams: int = 1,
    batch_size: int = 1,
    weights: np.ndarray | None = None,
    samples: int | None = None,
    replacement: bool = False,
    mixture: MixturePlan | None = None,
) -> EpochOrder:
    """Epoch ``epoch``'s order of shuffle mode ``mode``: an object that computes any slice of it.

    ``streams`` (the world size) and ``batch_size`` are what the epoch is dealt for (the
    ``block`` order gives each rank its own blocks); orders that do not deal ignore them.
    ``weights``, ``samples``, ``replacement``: the ``weighted`` order's draws (``num_rows`` is then
    the split's row count, and the order's own ``num_rows`` the draws). ``mixture``: the
    ``mixture`` order's sources (``num_rows`` is then their rows together).
    """
    assert num_rows >= 0, f"num_rows must be >= 0, got {num_rows}"
    return get_order(mode).create(
        num_rows,
        seed=seed,
        epoch=epoch,
        block_size=block_size,
        window_blocks=window_blocks,
        streams=streams,
        batch_size=batch_size,
        weights=weights,
        samples=samples,
        replacement=replacement,
        mixture=mixture,
    )
