"""What every epoch order is, and the seeding they share.

An epoch order is a permutation of a split's positions ``0..n-1``. Holding it as an array costs
8 bytes a row in every rank (800 MB for a 100M-row split); an order answers
``order.positions(indices)`` for just the slice a rank is about to read. Orders are pure
functions of their arguments, the same in every process; the only randomness is
:func:`seed_sequence` of ``(seed, epoch, ...)``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

SEQUENTIAL_READ_ROWS = 16_384
"""Rows an unshuffled read covers in one range scan (several batches at once): a scan of 16,384
rows runs near the speed of a sequential scan."""


def seed_sequence(seed: int, epoch: int, *stream: int) -> np.random.SeedSequence:
    """Entropy from (seed, epoch, stream...) only: never global state."""
    return np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, epoch, *stream])


def rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(seed_sequence(seed, epoch, *stream))


class EpochOrder:
    """One epoch's order of ``num_rows`` positions; subclasses say how it is made and read.

    A subclass sets :attr:`name` (the ``shuffle=`` value that selects it), :attr:`shuffles`,
    :attr:`contiguous` and :attr:`settings`, implements :meth:`create` and :meth:`positions`, and overrides
    :meth:`group_batches` when its batches are worth reading several at a time. It is then
    registered in :mod:`lance_lightning.orders`.
    """

    name: ClassVar[str]
    """The ``shuffle`` setting that selects this order."""
    shuffles: ClassVar[bool] = True
    """False only for table order (Lightning is told the loader is not shuffled)."""
    contiguous: ClassVar[bool] = False
    """True: the rows a worker reads together are a few contiguous runs of the table (range
    scans); False: scattered rows (one take a batch)."""
    settings: ClassVar[tuple[str, ...]] = ()
    """The settings (fields of :class:`~lance_lightning.options.DataOptions`) besides ``seed`` that
    this order's positions depend on. A checkpoint records them while this order is the ``shuffle``,
    and a resume that changes one is refused (it would continue the epoch in another order)."""

    weighted: ClassVar[bool] = False
    """True: the order draws rows by a weight a row (``create(..., weights=...)``), and an epoch holds
    as many rows as it draws, not the split's row count."""

    made_ahead: ClassVar[bool] = False
    """True: the order is made whole when created (a sort, a shuffle), so the sampler makes the
    next epoch's on a background thread while this one is read."""
    mixes: ClassVar[bool] = False
    """True: the order draws from several sources (``create(..., mixture=...)``, a
    :class:`~.mixture.MixturePlan`); positions number the sources' rows one after another, and an
    epoch holds the rows the plan says, not the sources' row count."""

    num_rows: int
    """Rows of the epoch (what ``positions`` takes indices below); the split's row count, except
    for a weighted order (its draws)."""
    nbytes: int = 0
    """Bytes the order holds (reported by the datamodule's memory report)."""

    @classmethod
    def create(
        cls,
        num_rows: int,
        *,
        seed: int,
        epoch: int,
        block_size: int,
        window_blocks: int,
        streams: int,
        batch_size: int,
        weights: np.ndarray | None = None,
        samples: int | None = None,
        replacement: bool = False,
        mixture: Any = None,
        whole: bool = False,
        before: EpochOrder | None = None,
    ) -> EpochOrder:
        """Epoch ``epoch``'s order; every order gets every setting and uses the ones it needs.

        ``whole``: the order is made ahead of its epoch and :meth:`complete` follows at once, so
        one that defers work (sorts as the epoch reaches them) may do it all now instead; the same
        order either way.

        ``weights`` (one a split row), ``samples`` and ``replacement``: the draws of a
        :attr:`weighted` order (see :class:`~.weighted.WeightedOrder`); the others get None.
        ``mixture``: the sources of a :attr:`mixes` order (:class:`~.mixture.MixturePlan`).

        ``before``: another epoch's order of the same sampler where one is at hand (the epoch before,
        as the sampler makes the next epoch's order): an order may take work from it that it would
        otherwise do again (a mixture takes a source's pass that runs over the boundary), never
        anything that changes its rows; it may leave ``before`` without that work.

        ``streams`` and ``batch_size`` are the world size and per-rank batch size the epoch is
        dealt for (an order may deal rows per rank, as :class:`~.block.BlockOrder` does).
        """
        raise NotImplementedError

    @classmethod
    def group_batches(cls, batch_size: int, *, block_size: int, window_blocks: int) -> int:
        """Consecutive batches a worker reads together (one read, range scans where rows are
        contiguous); 1: a batch at a time."""
        return 1

    def complete(self) -> None:
        """Finish whatever the order leaves for later (sorts done as the epoch reaches them), so that
        reading it costs lookups only: called by the thread that makes an order ahead of its epoch."""

    def positions(self, indices: np.ndarray) -> np.ndarray:
        """Positions in the split (``int64``) of the epoch's rows ``indices`` (each in ``[0, num_rows)``)."""
        raise NotImplementedError
