"""Which rows of a split this rank reads, batch by batch, epoch by epoch.

:class:`LanceBatchSampler` subclasses ``DistributedSampler`` so that Lightning recognises it
as already distributed: it neither wraps it in a second ``DistributedSampler`` (whatever
``use_distributed_sampler`` says) nor forgets to call :meth:`set_epoch` on it. Each item it
yields is a whole batch (an array of positions in the split, in the epoch's order, which the
dataset maps to table offsets; or of the ``addresses`` given), or a
:class:`~.batches.BatchGroup` of consecutive batches that the dataset reads together.

All arithmetic is in :mod:`.sharding`, the orders in :mod:`.orders` (looked up by name in its
registry); this class only holds the values it needs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from .batches import BatchGroup
from .orders import DEFAULT_BLOCK_SIZE, DEFAULT_WINDOW_BLOCKS, EpochOrder, MixturePlan, epoch_draws, get_order
from .sharding import ShardPlan, plan_epoch, rank_batch_bounds, take_padded_many
from .state import TrainPosition

POSITIONS_A_CALL = 16_384
"""Rows of the epoch order computed at a time: per-call costs dominate below this."""


class LanceBatchSampler(DistributedSampler):
    """Yields this rank's batches of one split, the rows of each in the epoch's order.

    Args:
        addresses: what the dataset reads row ``i`` of the split by (table offsets, row
            addresses), in table order; or an ``int``: the split's row count, and batches are
            positions in the split.
        batch_size: rows per batch on this rank.
        num_replicas, rank: the world size and this process's global rank.
        shuffle: a registered order: ``"none"``, ``"uniform"``, ``"block"`` (see :mod:`.orders`).
        seed: with the epoch, the only input of the shuffle.
        drop_last: training only: drop the last partial global step instead of padding it.
        even: every rank yields the same number of batches (training); when False every
            row is read exactly once and ranks may differ by one batch (evaluation).
        balanced: evaluation (``even=False``) with the same number of batches on every rank
            (:func:`.sharding.plan_epoch`); each row still read once.
        block_size, window_blocks: the ``block`` shuffle (see :class:`.orders.BlockOrder`).
        group_batches: yield this many consecutive batches at a time as one
            :class:`~.batches.BatchGroup` (read together in range scans); 1 yields plain batches.
        weights, samples_per_epoch, replacement: the ``weighted`` shuffle's draws (see
            :class:`.orders.WeightedOrder`): one weight (>= 0, finite) a split row; an epoch is
            ``samples_per_epoch`` draws (None: every row of weight > 0), and :attr:`num_rows` is
            that count, not the split's.
        mixture: the sources of a mixture (``shuffle="mixture"``, :class:`.orders.MixturePlan`):
            positions number the sources' rows one after another (``addresses`` is their total),
            and an epoch holds the rows the plan gives each source.
    """

    def __init__(
        self,
        addresses: np.ndarray | int,
        *,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: str = "none",
        seed: int = 0,
        drop_last: bool = False,
        even: bool = True,
        block_size: int = DEFAULT_BLOCK_SIZE,
        window_blocks: int = DEFAULT_WINDOW_BLOCKS,
        group_batches: int = 1,
        position: TrainPosition | None = None,
        weights: np.ndarray | None = None,
        samples_per_epoch: int | None = None,
        replacement: bool = False,
        mixture: MixturePlan | None = None,
        balanced: bool = False,
    ) -> None:
        # The public entry point: what a caller can get wrong fails here, clearly; the orders
        # and lance_lightning.sharding below only assert (the datamodule's options are valid already).
        self.order_class = get_order(shuffle)  # unknown mode: a ValueError listing the valid ones
        for name, value in [("batch_size", batch_size), ("block_size", block_size), ("window_blocks", window_blocks)]:
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got rank={rank}")
        if group_batches < 1:
            raise ValueError(f"group_batches must be >= 1, got {group_batches}")
        weighted = weights is not None or samples_per_epoch is not None or replacement
        if weighted and not self.order_class.weighted:
            raise ValueError(
                f"weights, samples_per_epoch and replacement are settings of a weighted order (shuffle='weighted'), "
                f"not of shuffle={shuffle!r}"
            )
        # DistributedSampler.__init__ would query torch.distributed; set its fields directly.
        self.dataset = None
        if isinstance(addresses, (int, np.integer)):
            self.addresses, self._num_rows = None, int(addresses)
        else:
            self.addresses = np.asarray(addresses)
            self._num_rows = len(self.addresses)
        self.split_rows = self._num_rows
        """Rows of the split (what positions index); :attr:`num_rows` is the rows of an epoch."""
        self.weights = self.samples_per_epoch = None
        self.replacement = bool(replacement)
        if self.order_class.weighted:
            w = np.ones(self.split_rows) if weights is None else np.asarray(weights, dtype=np.float64)
            if w.ndim != 1 or len(w) != self.split_rows:
                raise ValueError(f"weights must be one a split row ({self.split_rows}), got shape {w.shape}")
            if not (np.all(np.isfinite(w)) and np.all(w >= 0)):
                raise ValueError("weights must be finite and >= 0 (see lance_lightning.weights.check_weights)")
            if samples_per_epoch is not None and (
                not isinstance(samples_per_epoch, (int, np.integer)) or samples_per_epoch < 0
            ):
                raise ValueError(f"samples_per_epoch must be an integer >= 0 or None, got {samples_per_epoch!r}")
            self.weights, self.samples_per_epoch = w, samples_per_epoch
            self._num_rows = epoch_draws(w, samples_per_epoch, self.replacement)
        if self.order_class.mixes != (mixture is not None):
            raise ValueError(
                "a mixture plan goes with shuffle='mixture' (and only with it)"
                if mixture is not None
                else f"shuffle={shuffle!r} needs its mixture plan (mixture=MixturePlan(...))"
            )
        if mixture is not None and sum(mixture.sizes) != self.split_rows:
            raise ValueError(
                f"the mixture's sources hold {sum(mixture.sizes)} rows, the sampler was given {self.split_rows}"
            )
        self.mixture = mixture
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle_mode = shuffle
        self.shuffle = self.order_class.shuffles
        self.seed = seed
        self.drop_last = drop_last
        self.even = even
        self.balanced = balanced
        self.block_size = block_size
        self.window_blocks = window_blocks
        self.group_batches = group_batches
        self.position = position if position is not None else TrainPosition()
        self._order: tuple[tuple[int, int, int], EpochOrder] | None = None
        self._ahead: tuple[tuple[int, int, int], threading.Thread, dict[str, Any]] | None = None

    # The position lives in one TrainPosition (lance_lightning/state.py), shared with the datamodule.
    @property
    def epoch(self) -> int:
        return self.position.epoch

    @property
    def start_row(self) -> int:
        return self.position.start_row

    @property
    def order_world_size(self) -> int:
        """The world size the current epoch's order was dealt for (the block shuffle depends on it)."""
        return self.position.order_world_size or self.num_replicas

    @property
    def order_batch_size(self) -> int:
        return self.position.order_batch_size or self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch; a new epoch starts from its first row.

        The first call after :meth:`resume_at` only anchors Lightning's epoch numbering to the
        resumed epoch (see :class:`~.state.TrainPosition`).
        """
        self.position.enter_epoch(epoch)

    def resume_at(
        self,
        *,
        epoch: int,
        consumed_rows: int,
        order_world_size: int | None = None,
        order_batch_size: int | None = None,
    ) -> None:
        """Continue ``epoch`` after the first ``consumed_rows`` rows of its order.

        ``order_world_size`` / ``order_batch_size``: what the interrupted epoch's order was
        dealt for (the block shuffle depends on them); default: this sampler's.
        """
        if not 0 <= consumed_rows <= self.num_rows:
            raise ValueError(f"consumed_rows must be in [0, {self.num_rows}], got {consumed_rows}")
        self.position.resume(epoch, consumed_rows, order_world_size=order_world_size, order_batch_size=order_batch_size)

    @property
    def batches_before_start(self) -> int:
        """Batches of the epoch counted as read before :attr:`start_row`: a whole epoch's count minus
        what is left, so that Lightning's batch index ends where a whole epoch ends."""
        if self.start_row == 0:
            return 0
        return self.whole_epoch_batches() - self.plan().batches_for_rank(self.rank)

    def whole_epoch_batches(self) -> int:
        """Batches this rank reads in a whole epoch (what ``len()`` reports)."""
        return plan_epoch(
            self.num_rows,
            world_size=self.num_replicas,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            even=self.even,
            balanced=self.balanced,
        ).batches_for_rank(self.rank)

    @property
    def num_rows(self) -> int:
        """Rows of an epoch: the split's, a weighted order's draws, or a mixture's rows (which
        depend on the batch layout the epoch is dealt for where each batch holds one source)."""
        return self.rows_dealt_for(batch_size=self.order_batch_size, world_size=self.order_world_size)

    def rows_dealt_for(self, *, batch_size: int, world_size: int) -> int:
        """Rows of an epoch dealt for ``batch_size`` × ``world_size``: a mixture's with
        ``mix_batching="source"`` are whole batches; every other order's do not depend on it."""
        if self.mixture is not None:
            return int(self.mixture.counts(batch_size=batch_size, world_size=world_size).sum())
        return self._num_rows

    def plan(self) -> ShardPlan:
        """The cut of the current epoch (from :attr:`start_row` on) into per-rank batches."""
        return plan_epoch(
            self.num_rows - self.start_row,
            world_size=self.num_replicas,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            even=self.even,
            balanced=self.balanced,
        )

    def epoch_order(self) -> EpochOrder:
        """This epoch's order (all ranks alike), evaluated slice by slice (the weighted and mixture
        orders hold the epoch's positions: :mod:`.orders.weighted`, :mod:`.orders.mixture`).

        An order made whole at its epoch's start (:attr:`.EpochOrder.made_ahead`) has the next
        epoch's made on a background thread while this one is read (NumPy's sorts and permutations
        release the GIL), so an epoch does not start by waiting for it; two epochs' orders are
        held meanwhile."""
        key = (self.epoch, self.order_world_size, self.order_batch_size)
        if self._order is None or self._order[0] != key:
            before = self._order[1] if self._order is not None else None
            order = self._made_ahead(key) or self._make_order(key, before=before)
            self._order = (key, order)
            if self.order_class.made_ahead and self.make_ahead:
                self._make_ahead((self.epoch + 1, self.num_replicas, self.batch_size), before=order)
        return self._order[1]

    make_ahead: bool = True
    """False: every epoch's order is made when its epoch asks for it, on the asking thread (the same
    order; what tests compare the orders made ahead with)."""

    def _make_order(
        self, key: tuple[int, int, int], *, whole: bool = False, before: EpochOrder | None = None
    ) -> EpochOrder:
        """The order of ``key``; ``before``: an order at hand (the previous epoch's), whose work the
        new one may reuse (:meth:`.EpochOrder.create`)."""
        epoch, world_size, batch_size = key
        return self.order_class.create(
            self.split_rows,
            seed=self.seed,
            epoch=epoch,
            block_size=self.block_size,
            window_blocks=self.window_blocks,
            streams=world_size,
            batch_size=batch_size,
            weights=self.weights,
            samples=self.samples_per_epoch,
            replacement=self.replacement,
            mixture=self.mixture,
            whole=whole,
            before=before,
        )

    def _make_ahead(self, key: tuple[int, int, int], *, before: EpochOrder) -> None:
        box: dict[str, Any] = {}

        def make() -> None:
            try:
                order = self._make_order(key, whole=True, before=before)
                order.complete()
                box["order"] = order
            except BaseException as err:  # raised where the order is asked for, not here
                box["error"] = err

        thread = threading.Thread(target=make, name="lance-lightning-next-order", daemon=True)
        thread.start()
        self._ahead = (key, thread, box)

    def _made_ahead(self, key: tuple[int, int, int]) -> EpochOrder | None:
        """The order of ``key`` if it was made ahead (waiting for it to be done), else None."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead[0] != key:
            return None
        _, thread, box = ahead
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["order"]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ahead": None}  # a thread does not pickle; made again if needed

    def rows_consumed_after(self, batches: int) -> int:
        """Rows of the epoch order consumed once every rank has read ``batches`` batches.

        ``batches`` counts from the start of the epoch, as ``len()`` and Lightning do.
        """
        batches -= self.batches_before_start
        plan = self.plan()
        full = min(batches, plan.full_steps)
        consumed = full * self.num_replicas * self.batch_size
        if batches > plan.full_steps:
            consumed += plan.tail_rows - plan.padded_rows
        return min(self.start_row + consumed, self.num_rows)

    def __iter__(self) -> Iterator[np.ndarray | BatchGroup]:
        order = self.epoch_order()
        if self.start_row >= self.num_rows:
            return
        # Bounds are relative to the resume point; padding wraps to the start of the whole
        # epoch order, so a resumed epoch pads with exactly the rows an uninterrupted one would.
        # A batch's rows come in the epoch's order, not sorted: neighbours in a batch are as far
        # apart in the table as the order makes them (the dataset reads sorted offsets and puts
        # the rows back in this order).
        offset = self.start_row
        bounds = [(offset + start, offset + stop) for start, stop in rank_batch_bounds(self.plan(), rank=self.rank)]
        batches = (
            self._addressed(positions)
            for chunk in range(0, len(bounds), self._batches_a_call)
            for positions in take_padded_many(order, bounds[chunk : chunk + self._batches_a_call], order.num_rows)
        )
        if self.group_batches == 1:
            yield from batches
            return
        # Groups follow global steps, so that after a resume at a whole step they still
        # coincide with the windows of the block order.
        step_rows = self.num_replicas * self.batch_size
        phase = (offset // step_rows) % self.group_batches if offset % step_rows == 0 else 0
        group, size = BatchGroup(), self.group_batches - phase
        for batch in batches:
            group.append(batch)
            if len(group) == size:
                yield group
                group, size = BatchGroup(), self.group_batches
        if group:
            yield group

    @property
    def _batches_a_call(self) -> int:
        """Batches whose positions are computed in one call to the order (~16k rows)."""
        return max(1, POSITIONS_A_CALL // self.batch_size)

    def _addressed(self, positions: np.ndarray) -> np.ndarray:
        return positions if self.addresses is None else self.addresses[positions]

    def __len__(self) -> int:
        """Batches in a whole epoch: what Lightning counts an epoch in (it reads ``len()`` once).

        A resumed epoch yields only what is left; Lightning's restored batch index (aligned by
        the datamodule to :attr:`batches_before_start`) makes up the rest.
        """
        return self.whole_epoch_batches()

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "start_row": self.start_row,
            "order_world_size": self.order_world_size,
            "order_batch_size": self.order_batch_size,
        }


class SequentialLanceBatchSampler(LanceBatchSampler, SequentialSampler):
    """A :class:`LanceBatchSampler` that never shuffles, and says so to Lightning.

    Lightning replaces any sampler that is not a ``SequentialSampler`` when it wants a fixed
    order (``Trainer(overfit_batches=...)``) and warns about shuffled evaluation loaders;
    this subclass keeps our batching and sharding in both cases.
    """

    def __init__(self, addresses: np.ndarray | int, **kwargs: Any) -> None:
        kwargs["shuffle"] = "none"
        super().__init__(addresses, **kwargs)
