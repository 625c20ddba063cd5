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
20 ns a row of the epoch's shuffle and of each pass permuted) and held, 4 bytes a row (8 above 2**31
rows of all sources): 40 MB for an epoch of 10M rows. The draws are written once, in place, and
shuffled there. A source's pass that the epoch ends inside is kept (4 bytes a row of that source)
until the next epoch's order is made, which starts with it instead of permuting it again. Computing each
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

    def __init__(
        self,
        plan: MixturePlan,
        *,
        seed: int,
        epoch: int,
        batch_size: int,
        streams: int,
        before: MixtureOrder | None = None,
    ) -> None:
        """``before``: the order of the epoch before (where at hand): a source's pass that runs over
        the boundary is taken from it instead of being permuted again (it hands it over: see
        :attr:`open_passes`). The same order with or without it."""
        self.plan = plan
        self.seed = seed
        self.epoch = epoch
        self.counts = plan.counts(batch_size=batch_size, world_size=streams)
        self.num_rows = int(self.counts.sum())
        self.bases = plan.bases
        self.open_passes: dict[int, tuple[int, np.ndarray]] = {}
        """Each source's last pass where this epoch ends inside it (``{source: (number, rows)}``): the
        next epoch's order starts there. Handed over to that order when it is made (and dropped
        here), so that at most one epoch's open passes are held: 4 bytes a row of such a source."""
        carried = self._take_open_passes(before)
        # the epoch's draws, source after source, as mixture positions: written once, in place
        drawn = np.empty(self.num_rows, dtype=_dtype(int(self.bases[-1])))
        at = 0
        for source, count in enumerate(self.counts.tolist()):
            self._draw_into(drawn[at : at + count], source, count * epoch, carried)
            at += count
        if plan.batching == "mixed":
            rng(seed, epoch, MIX_STREAM, 0).shuffle(drawn)  # in place: the same permutation as of a copy
            held = drawn
        elif plan.batching == "source":
            chunks = drawn.reshape(-1, batch_size)
            held = chunks[rng(seed, epoch, MIX_STREAM, 0).permutation(len(chunks))].ravel()
        else:
            held = self._stratified(drawn, batch_size * streams)
        self.held = held

    @property
    def nbytes(self) -> int:
        """Bytes held: the epoch's positions and the passes left open for the next epoch."""
        return self.held.nbytes + sum(rows.nbytes for _, rows in self.open_passes.values())

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
        before: EpochOrder | None = None,
        **_: Any,
    ) -> MixtureOrder:
        """Epoch ``epoch`` of the mixture ``mixture`` (``num_rows``: the sources' rows together)."""
        assert mixture is not None, "a mixture order needs its plan"
        assert num_rows == int(sum(mixture.sizes)), f"{num_rows} rows for sources of {mixture.sizes}"
        previous = before if isinstance(before, MixtureOrder) else None
        return cls(mixture, seed=seed, epoch=epoch, batch_size=batch_size, streams=streams, before=previous)

    def _take_open_passes(self, before: MixtureOrder | None) -> dict[int, tuple[int, np.ndarray]]:
        """``before``'s open passes where they are this mixture's (same seed, same source sizes);
        ``before`` no longer holds them."""
        if before is None or before.seed != self.seed or before.plan.sizes != self.plan.sizes:
            return {}
        carried, before.open_passes = before.open_passes, {}
        return carried

    def _draw_into(self, out: np.ndarray, source: int, start: int, carried: dict[int, tuple[int, np.ndarray]]) -> None:
        """``out[k]``: the mixture position of the source's stream draw ``start + k`` (its passes cut
        in slices, each slice added to the source's base in one pass)."""
        size, base, count = self.plan.sizes[source], int(self.bases[source]), len(out)
        if not count:
            return
        first, last = start // size, (start + count - 1) // size
        at = 0
        for number in range(first, last + 1):
            held = carried.get(source)
            rows = held[1] if held is not None and held[0] == number else self._pass(source, number)
            lo = max(start, number * size) - number * size
            hi = min(start + count, (number + 1) * size) - number * size
            np.add(rows[lo:hi], base, out=out[at : at + hi - lo], casting="unsafe")  # < bases[-1]: fits
            at += hi - lo
            if number == last and hi < size:  # the next epoch starts inside this pass
                self.open_passes[source] = (number, rows)

    def source_rows(self, source: int, draws: np.ndarray) -> np.ndarray:
        """Rows (in the source) of the source's stream draws ``draws`` (counted from its first pass;
        consecutive, as an epoch takes them)."""
        draws = np.asarray(draws, dtype=np.int64)
        out = np.empty(len(draws), dtype=np.int64)
        if len(draws):
            self._draw_into(out, source, int(draws[0]), {})
            out -= self.bases[source]
        return out

    def _pass(self, source: int, number: int) -> np.ndarray:
        """The source's pass ``number``: a permutation of its rows keyed by ``(seed, source, number)``
        (shuffled in place in its final dtype: the same permutation as ``Generator.permutation``'s)."""
        rows = np.arange(self.plan.sizes[source], dtype=_dtype(self.plan.sizes[source]))
        rng(self.seed, number, MIX_STREAM, 1, source).shuffle(rows)
        return rows

    def _stratified(self, drawn: np.ndarray, step: int) -> np.ndarray:
        """The epoch's positions, each global step of ``step`` rows holding each source's share;
        ``drawn``: the epoch's draws, source after source."""
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
        shuffler.permuted(whole, axis=1, out=whole)  # in place: the same as into a copy
        last = np.repeat(np.arange(sources, dtype=np.int16), tail)
        labels = np.concatenate([whole.ravel(), shuffler.permutation(last)])
        del whole
        held = np.empty(n, dtype=drawn.dtype)
        at = 0
        for source, count in enumerate(counts.tolist()):  # each source's draws, in order, where its labels fall
            held[labels == source] = drawn[at : at + count]
            at += count
        return held

    def positions(self, indices: np.ndarray) -> np.ndarray:
        return self.held[np.asarray(indices, dtype=np.int64)].astype(np.int64)
