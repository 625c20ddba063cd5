"""``mix=[...]``: one epoch drawn from several sources at set proportions, exactly.

The sources' rows are numbered one after another: source ``s`` holds the mixture's positions
``bases[s] .. bases[s] + sizes[s] - 1``. Everything here is a pure function of the sizes, the
proportions, ``(seed, epoch)`` and the batch layout the epoch is dealt for.

**How many rows of each source an epoch holds** (:func:`mixture_counts`): with
``samples_per_epoch`` set, that many rows apportioned by the proportions (largest remainder: each
count is its exact share rounded down or up, and they sum to ``samples_per_epoch``); unset, one
pass over the first source (its ``sizes[0]`` rows) and ``round(sizes[0] * p_s / p_0)`` of each
other. With ``batching="source"`` the counts are whole batches, and the batch count a multiple of
the world size, so that every batch holds one source.

**Which rows of a source** (:meth:`MixtureOrder.source_rows`): each source reads an endless
stream of passes, each pass a fresh uniform permutation of its rows keyed by ``(seed, source,
pass)``; epoch ``e`` takes the stream's rows ``e * count .. (e + 1) * count - 1``. A source drawn
below its size therefore continues with rows it has not yet given before any repeats (its pass
goes on in the next epoch); one drawn above its size repeats, each repeat in a new order.

**Where in the epoch** (``batching``):

* ``mixed`` (default): the epoch's rows are a uniform permutation of all sources' draws.
* ``stratified``: every global step (``batch_size × world size`` rows) holds each source's share
  of it rounded down or up (within one row); the rows of a step are in random order, so each rank
  gets a mix.
* ``source``: every batch (each rank's) holds rows of one source; batches in random order.

**Cost.** The epoch's positions are made at its start with NumPy's permutations (C loops: about
30 ns a row here) and held, 4 bytes a row (8 above 2**31 rows), with each source's current pass
(4 bytes a source row) while they are made: 40 MB for an epoch of 10M rows. Computing each
position on its own, as the uniform order does, cost two keyed permutations a row (~100 ns) and
per-source bookkeeping a batch: a mixture read 0.4x as fast as one split at 0 workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import EpochOrder, rng

MIX_BATCHING = ("mixed", "stratified", "source")
"""The ways a mixture's sources are laid out in its batches."""
MIX_STREAM = 3
"""The ``seed_sequence(seed, ..., 3, ...)`` streams of the mixture (other orders use 0, 1 and 2)."""


def largest_remainder(total: int, shares: Sequence[float]) -> np.ndarray:
    """``total`` apportioned by ``shares`` (> 0, any scale): each part is its exact quota rounded
    down or up, the parts sum to ``total``; the remainders' ties go to the earlier share."""
    weights = np.asarray(shares, dtype=np.float64)
    quotas = weights * (total / weights.sum())
    parts = np.floor(quotas).astype(np.int64)
    left = int(total - parts.sum())
    if left > 0:
        parts[np.argsort(-(quotas - parts), kind="stable")[:left]] += 1
    return parts


def mixture_counts(
    sizes: Sequence[int],
    proportions: Sequence[float],
    *,
    samples: int | None,
    batching: str = "mixed",
    batch_size: int = 1,
    world_size: int = 1,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Rows of each source in an epoch (see the module docstring). Pure. ``names``: the
    sources' names, for the error.

    Raises ValueError when ``batching="source"`` leaves a source without a single batch.
    """
    shares = np.asarray(proportions, dtype=np.float64)
    if samples is None:
        counts = np.floor(sizes[0] * shares / shares[0] + 0.5).astype(np.int64)
        counts[0] = sizes[0]
    else:
        counts = largest_remainder(samples, shares)
    if batching != "source":
        return counts
    batches = int(counts.sum()) // batch_size if samples is not None else int(np.floor(counts.sum() / batch_size + 0.5))
    batches = max(world_size, batches // world_size * world_size)
    chunks = largest_remainder(batches, shares)
    if not chunks.all():
        empty = int(np.flatnonzero(chunks == 0)[0])
        name = names[empty] if names else empty
        raise ValueError(
            f"mix_batching='source' gives source {name!r} (proportion {shares[empty] / shares.sum():.4g}) no batch of "
            f"the epoch's {batches} batches of {batch_size} rows: raise samples_per_epoch or its proportion, or use "
            "mix_batching='mixed' or 'stratified'"
        )
    return chunks * batch_size


@dataclass(frozen=True)
class MixturePlan:
    """The sources of a mixture as the order needs them: their row counts, proportions, the
    epoch's size rule and the batch layout."""

    sizes: tuple[int, ...]
    """Rows of each source (its split or filter, at its pinned version)."""
    proportions: tuple[float, ...]
    """Each source's share of an epoch (> 0; normalized over their sum)."""
    samples: int | None = None
    """Rows an epoch holds (``samples_per_epoch``); None: one pass over the first source."""
    batching: str = "mixed"
    """One of :data:`MIX_BATCHING`."""
    names: tuple[str, ...] | None = None
    """The sources' names (for messages only)."""

    def __post_init__(self) -> None:
        assert len(self.sizes) == len(self.proportions) >= 1, "one size and proportion a source"
        assert all(n > 0 for n in self.sizes) and all(p > 0 for p in self.proportions), "checked at setup"
        assert self.batching in MIX_BATCHING, self.batching

    @property
    def bases(self) -> np.ndarray:
        """The mixture position of each source's first row (and, last, the total)."""
        return np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    def counts(self, *, batch_size: int = 1, world_size: int = 1) -> np.ndarray:
        """Rows of each source in an epoch dealt for ``batch_size`` × ``world_size``."""
        return mixture_counts(
            self.sizes,
            self.proportions,
            samples=self.samples,
            batching=self.batching,
            batch_size=batch_size,
            world_size=world_size,
            names=self.names,
        )

    def source_of(self, positions: np.ndarray) -> np.ndarray:
        """The source each mixture position belongs to."""
        return np.searchsorted(self.bases[1:], positions, side="right")


def _dtype(rows: int) -> type:
    return np.int32 if rows < 2**31 else np.int64


class MixtureOrder(EpochOrder):
    """One epoch of a mixture (see the module docstring): positions are mixture positions."""

    name = "mixture"
    mixes = True
    made_ahead = True

    def __init__(self, plan: MixturePlan, *, seed: int, epoch: int, batch_size: int, streams: int) -> None:
        self.plan = plan
        self.seed = seed
        self.epoch = epoch
        self.counts = plan.counts(batch_size=batch_size, world_size=streams)
        self.num_rows = int(self.counts.sum())
        self.bases = plan.bases
        draws = [self.source_rows(s, int(c) * epoch + np.arange(int(c))) for s, c in enumerate(self.counts)]
        if plan.batching == "mixed":
            held = np.concatenate([base + d for base, d in zip(self.bases, draws)]).astype(_dtype(self.num_rows))
            rng(seed, epoch, MIX_STREAM, 0).shuffle(held)
        elif plan.batching == "source":
            chunks = np.concatenate([(base + d).reshape(-1, batch_size) for base, d in zip(self.bases, draws)]).astype(
                _dtype(self.num_rows)
            )
            held = chunks[rng(seed, epoch, MIX_STREAM, 0).permutation(len(chunks))].ravel()
        else:
            held = self._stratified(draws, batch_size * streams)
        self.held = held
        self.nbytes = held.nbytes

    @classmethod
    def create(
        cls,
        num_rows: int,
        *,
        seed: int,
        epoch: int,
        streams: int,
        batch_size: int,
        mixture: MixturePlan | None = None,
        **_: Any,
    ) -> MixtureOrder:
        """Epoch ``epoch`` of the mixture ``mixture`` (``num_rows``: the sources' rows together)."""
        assert mixture is not None, "a mixture order needs its plan"
        assert num_rows == int(sum(mixture.sizes)), f"{num_rows} rows for sources of {mixture.sizes}"
        return cls(mixture, seed=seed, epoch=epoch, batch_size=batch_size, streams=streams)

    def source_rows(self, source: int, draws: np.ndarray) -> np.ndarray:
        """Rows (in the source) of the source's stream draws ``draws`` (counted from its first pass;
        consecutive, as an epoch takes them)."""
        size = self.plan.sizes[source]
        draws = np.asarray(draws, dtype=np.int64)
        if not len(draws):
            return draws
        first, last = int(draws[0]) // size, int(draws[-1]) // size
        stream = np.concatenate([self._pass(source, number) for number in range(first, last + 1)])
        return stream[draws - first * size].astype(np.int64)

    def _pass(self, source: int, number: int) -> np.ndarray:
        """The source's pass ``number``: a permutation of its rows keyed by ``(seed, source, number)``."""
        size = self.plan.sizes[source]
        return rng(self.seed, number, MIX_STREAM, 1, source).permutation(size).astype(_dtype(size))

    def _stratified(self, draws: list[np.ndarray], step: int) -> np.ndarray:
        """The epoch's positions, each global step of ``step`` rows holding each source's share."""
        counts, n = self.counts, self.num_rows
        sources = len(counts)
        full = n // step
        per_step = np.zeros((full, sources), dtype=np.int64)
        if full:
            in_full = largest_remainder(full * step, counts)  # each source's rows in the whole steps
            base, extra = np.divmod(in_full, full)
            per_step[:] = base
            # source s adds one row in extra[s] distinct steps: lay the extras out one after another and
            # deal them round the steps (consecutive runs shorter than `full` land on distinct steps)
            owners = np.repeat(np.arange(sources), extra)
            steps = rng(self.seed, self.epoch, MIX_STREAM, 2).permutation(full)[np.arange(len(owners)) % full]
            np.add.at(per_step, (steps, owners), 1)
            tail = counts - in_full
        else:
            tail = counts
        shuffler = rng(self.seed, self.epoch, MIX_STREAM, 3)
        whole = np.repeat(np.tile(np.arange(sources, dtype=np.int16), full), per_step.ravel()).reshape(full, step)
        last = np.repeat(np.arange(sources, dtype=np.int16), tail)
        labels = np.concatenate([shuffler.permuted(whole, axis=1).ravel(), shuffler.permutation(last)])
        del whole
        held = np.empty(n, dtype=_dtype(n))
        for source in range(sources):  # each source's draws, in order, where its labels fall
            held[labels == source] = self.bases[source] + draws[source]
        return held

    def positions(self, indices: np.ndarray) -> np.ndarray:
        return self.held[np.asarray(indices, dtype=np.int64)].astype(np.int64)
