"""The one owner of the training data position: where the next batch comes from, and what data it is.

A :class:`TrainPosition` is shared by the datamodule (which saves and restores it) and the
train sampler (which reads it at ``iter()`` and moves it at ``set_epoch``). Nothing else holds
the position, so a checkpoint and the batches that follow it cannot disagree.

Two facts of Lightning shape it (lightning 2.4-2.6, ``fit_loop.py`` / ``training_epoch_loop.py``):

* on a resume, ``FitLoop.setup_data`` calls ``iter()`` on the train loader *before*
  ``on_advance_start`` calls ``set_epoch``; with workers, torch then asks the sampler for its
  first batches at once. So the position must already name the epoch and row to continue from
  when the loader is made, and a finished epoch is saved as "the next epoch, row 0";
* the epoch number Lightning passes to ``set_epoch`` is ``epoch_progress.current.processed``,
  which after a resume from a ``max_steps`` stop is one ahead of the epoch it continues (its
  ``current_epoch``, the label the model sees, is right); and a resume from a checkpoint written
  after the last batch of an epoch first closes that epoch (no batch, ``set_epoch`` with its
  number) before the next. So the position follows Lightning's ``current_epoch`` where it can
  read it (:attr:`TrainPosition.epoch_label`), and after a resume ignores epochs before the one
  it resumes.

:class:`DataState` is what a checkpoint stores (``format`` 2); format 1 (lance-lightning up to
commit faa4ade) is read too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

STATE_FORMAT = 2
READABLE_FORMATS = (1, 2)


@dataclass
class TrainPosition:
    """Where the train split's reading stands: epoch ``epoch``, after ``start_row`` rows of its order.

    ``order_world_size`` / ``order_batch_size``: what the current epoch's order was dealt for
    (the block order depends on them); they follow the sampler's own at each new epoch.
    """

    epoch: int = 0
    start_row: int = 0
    order_world_size: int | None = None
    order_batch_size: int | None = None
    resumed: bool = False
    """True from a resume until Lightning enters the resumed epoch."""
    epoch_label: Callable[[], int | None] | None = field(default=None, repr=False, compare=False)
    """Lightning's ``trainer.current_epoch`` when a trainer is attached (the datamodule sets it)."""

    def resume(self, epoch: int, start_row: int, *, order_world_size: int | None, order_batch_size: int | None) -> None:
        """Continue ``epoch`` after ``start_row`` rows of its order."""
        self.epoch, self.start_row = epoch, start_row
        self.order_world_size, self.order_batch_size = order_world_size, order_batch_size
        self.resumed = True

    def enter_epoch(self, lightning_epoch: int) -> bool:
        """Lightning's ``set_epoch(lightning_epoch)``; True when a new epoch starts from its first row."""
        label = self.epoch_label() if self.epoch_label is not None else None
        epoch = lightning_epoch if label is None else label
        if self.resumed:
            if epoch < self.epoch:
                return False  # Lightning closes the checkpoint's finished epoch (no batch) first
            self.resumed = False
        if epoch == self.epoch:
            return False
        self.epoch, self.start_row = epoch, 0
        self.order_world_size = self.order_batch_size = None
        return True


@dataclass(frozen=True)
class DataState:
    """A checkpoint's data entry: what was read (identity) and where reading stands (position)."""

    identity: dict[str, Any]
    """What decides which row is in which split: table, split spec, filter, seed."""
    table_version: int | None
    table_version_time: str | None
    """When the pinned version was committed: tells a recreated table (its versions restart at 1)."""
    world_size: int
    train: dict[str, Any] | None = None
    """``epoch``, ``start_row`` (rows of that epoch's order already read), ``split_rows``,
    ``order_world_size``, ``order_batch_size``, ``batch_size``, ``batches_done``."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> DataState:
        """Read a checkpoint's entry (format 1 or 2); raises ValueError for an unknown format."""
        fmt = state.get("format")
        if fmt not in READABLE_FORMATS:
            raise ValueError(
                f"the checkpoint's lance-lightning data state has format {fmt!r}; this version reads formats "
                f"{list(READABLE_FORMATS)}. Resume with the lance-lightning version that wrote it, or pass "
                "resume='fresh' to start the data afresh."
            )
        if fmt == 2:
            return cls(**{k: v for k, v in state.items() if k != "format"})
        return cls._from_format_1(state)

    @classmethod
    def _from_format_1(cls, state: dict[str, Any]) -> DataState:
        """Format 1 kept the epoch being read even when it was finished; normalised here."""
        identity = {key: state.get(key) for key in ("table", "splits", "filter", "seed")}
        train = None
        if "epoch" in state:
            rows, consumed = state["train_split_rows"], state["train_rows_consumed"]
            epoch, start = (state["epoch"] + 1, 0) if consumed >= rows else (state["epoch"], consumed)
            train = {
                "epoch": epoch,
                "start_row": start,
                "split_rows": rows,
                "order_world_size": state.get("train_order_world_size") if start else None,
                "order_batch_size": state.get("train_order_batch_size") if start else None,
                "batch_size": state.get("train_order_batch_size"),
                "batches_done": state.get("train_batches_done", 0) if start else 0,
            }
        return cls(
            identity=identity,
            table_version=state.get("table_version"),
            table_version_time=None,
            world_size=state.get("world_size", 1),
            train=train,
        )
