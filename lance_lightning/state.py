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

from .options import resume_rules

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
    """The value of every setting a resume must not change (those declared ``refused`` in
    :mod:`.options`: table, splits, filter, seed, shuffle...), by name; :meth:`.DataOptions.identity`."""
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

    def check_same_table(self, source: Any) -> None:
        """Refuse to resume on a table that was dropped and recreated under the same name (or
        replaced by a copy): its version numbers restart at 1, its commit times do not."""
        then, now = self.table_version_time, source.version_time
        if then is None or now is None or then == now:
            return
        raise ValueError(
            f"table {source.name!r} at {source.uri!r} is not the table the checkpoint was written from: "
            f"its version {source.version} was committed at {now}, the checkpoint's at {then} (the table was "
            "dropped and recreated, or replaced by a copy: version numbers restart at 1). Resuming would read "
            "other rows as the rest of the interrupted epoch. Pass resume='fresh' to train on this table from the "
            "start of the checkpoint's epoch."
        )

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
        read = cls(**{k: v for k, v in state.items() if k != "format"}) if fmt == 2 else cls._from_format_1(state)
        if "version" not in read.identity:  # written before the identity recorded it: the version read then
            read.identity["version"] = read.table_version
        return read

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


class ResumeRefusedError(ValueError):
    """A resume with a setting changed that decides which rows are read or in what order: it
    would silently read rows twice and others never. The message names each setting, the
    checkpoint's value and this run's, and the ways out."""


def _quoted(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _sources_changed(then: Any, now: Any) -> str | None:
    """How two recorded lists of named records (``mix``'s sources) differ, source by source and key
    by key; None where either is not such a list."""

    def named(value: Any) -> dict[str, dict[str, Any]] | None:
        if not isinstance(value, list) or not all(isinstance(v, dict) and "name" in v for v in value):
            return None
        return {v["name"]: v for v in value}

    old, new = named(then), named(now)
    if old is None or new is None:
        return None
    out = [f"source {name!r} removed" for name in old if name not in new]
    out += [f"source {name!r} added ({_quoted(new[name])})" for name in new if name not in old]
    for name in (n for n in new if n in old):
        out += [
            f"source {name!r} {key}: the checkpoint's {_quoted(old[name].get(key))}, now {_quoted(new[name].get(key))}"
            for key in sorted(set(old[name]) | set(new[name]))
            if old[name].get(key) != new[name].get(key)
        ]
    if not out and list(old) != list(new):
        out.append(f"sources reordered: the checkpoint's {list(old)}, now {list(new)}")
    return ", ".join(out)


def _change(name: str, then: Any, now: Any, *, unused: bool) -> str:
    sources = None if unused else _sources_changed(then, now)
    if sources is not None:
        return sources
    was = "unused by the checkpoint's run" if unused else f"the checkpoint's {_quoted(then)}"
    return f"{was}, now {_quoted(now)}"


def refuse_changed_settings(
    state: DataState, identity: dict[str, Any], *, follows: frozenset[str] = frozenset()
) -> None:
    """Raise :class:`ResumeRefusedError` if this run's ``identity`` differs from the checkpoint's.

    A setting the checkpoint does not record (it was written before lance-lightning recorded it)
    is not compared: a rank-0 warning names those. ``follows``: settings this run leaves to the
    checkpoint (``version=None``), never a difference.
    """
    rules = resume_rules()
    unrecorded = [name for name in identity if name not in state.identity and name not in follows]
    if unrecorded:
        rank_zero_warn(
            f"the checkpoint's data state does not record {', '.join(unrecorded)} (written by an older "
            "lance-lightning): a change of these since it was written cannot be detected; resume with the values "
            "it was written with"
        )
    changed = [
        name
        for name, now in identity.items()
        if name in state.identity and name not in follows and state.identity[name] != now
    ]
    if not changed:
        return
    train = state.train
    if train is not None and train["start_row"]:
        where = (
            f" The checkpoint stands in epoch {train['epoch']} after {train['start_row']} of its "
            f"{train['split_rows']} train rows: continuing there with the new value(s) would read some of the "
            "epoch's rows twice and others never."
        )
    elif train is not None:
        where = (
            f" The checkpoint stands at the start of epoch {train['epoch']}: the run would go on with other splits "
            "or another order than it started with."
        )
    else:
        where = ""

    def unused(name: str) -> bool:  # recorded as None: the checkpoint's run did not use it (block_size of uniform)
        return state.identity[name] is None and name in rules and rules[name].recorded is not None

    settings = "; ".join(
        f"{name}: {_change(name, state.identity[name], identity[name], unused=unused(name))} "
        f"({rules[name].why if name in rules else 'which rows are read'})"
        for name in changed
    )
    old = ", ".join(
        f"{name}={_quoted(state.identity[name])}"
        + (" or None" if name in rules and rules[name].follows_checkpoint else "")
        for name in changed
        if not unused(name)
    ) or ", ".join(f"{name} left out" for name in changed)
    keep = state.table_version is not None and "version" not in changed
    pin = f" (with version={state.table_version} to keep reading the checkpoint's table version)" if keep else ""
    raise ResumeRefusedError(
        f"cannot resume with changed setting(s) that decide which rows are read or in what order: {settings}."
        f"{where} Resume with the checkpoint's value(s) ({old}), or pass resume='fresh'{pin} to keep the new "
        "value(s) and start the data afresh: the checkpoint's data position is then ignored, and the epoch "
        "Lightning resumes is read from its first row."
    )


def rank_zero_warn(message: str) -> None:
    """Lightning's warning on rank 0, imported on use: this module reaches DataLoader workers
    (through the package's imports), which must not pay for importing Lightning."""
    from lightning.pytorch.utilities import rank_zero_warn as warn

    warn(message)


NO_DATA_STATE = (
    "the checkpoint holds no lance-lightning data state (written before it existed, or by another "
    "datamodule): the interrupted epoch starts afresh from its first row"
)


def lightning_epoch_batches(trainer: Any, length: int) -> int:
    """Batches Lightning runs of a train epoch of ``length`` batches under ``limit_train_batches``
    (its ``_parse_num_batches``: an int caps, a float is a share)."""
    limit = trainer.limit_train_batches
    return min(length, limit) if isinstance(limit, int) else int(length * limit)


class TrainState:
    """The one owner of the train data position and of what a checkpoint says about it.

    Holds the :class:`TrainPosition` the train sampler follows, writes the checkpoint's
    :class:`DataState` (:meth:`state_dict`), checks and keeps the one it resumes from
    (:meth:`load_state_dict`), positions a new train sampler there (:meth:`apply`), and once the
    resumed run asks for its loader makes Lightning's batch index agree (:meth:`align_lightning`).
    """

    def __init__(self, epoch_label: Callable[[], int | None] | None = None) -> None:
        self.position = TrainPosition(epoch_label=epoch_label)
        self.resumed_from: DataState | None = None
        self.loaded = False
        self._align_pending = self._afresh = False

    # -- saving ------------------------------------------------------------------------------

    def state_dict(
        self,
        *,
        identity: dict[str, Any],
        source: Any,
        world_size: int,
        sampler: Any,
        trainer: Any,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The checkpoint's data entry. A finished epoch (every batch Lightning will run of it
        consumed, ``limit_train_batches`` included) is saved as the next epoch at row 0, since
        the loader of the resumed run is made before Lightning says which epoch it runs."""
        train = None
        if sampler is not None:
            done = sampler.batches_before_start if trainer is None else self.batches_consumed(trainer, sampler)
            consumed = sampler.rows_consumed_after(done)
            per_epoch = (lightning_epoch_batches(trainer, len(sampler)) if trainer is not None else 0) or len(sampler)
            finished = consumed >= sampler.num_rows or done >= per_epoch
            epoch, start = (sampler.epoch + 1, 0) if finished else (sampler.epoch, consumed)
            train = {
                "epoch": epoch,
                "start_row": start,
                "split_rows": sampler.num_rows,
                "order_world_size": sampler.order_world_size if start else None,
                "order_batch_size": sampler.order_batch_size if start else None,
                "batch_size": sampler.batch_size,
                "batches_done": done if start else 0,
            }
        return DataState(
            identity=identity,
            table_version=source.version,
            table_version_time=source.version_time,
            world_size=world_size,
            train=train,
            extra=dict(extra or {}),
        ).to_dict()

    @staticmethod
    def batches_consumed(trainer: Any, sampler: Any) -> int:
        """Batches of the current epoch the model has consumed (prefetched ones do not count)."""
        return min(trainer.fit_loop.epoch_loop.batch_progress.current.processed, len(sampler))

    # -- loading -----------------------------------------------------------------------------

    def load_state_dict(
        self,
        state_dict: dict[str, Any],
        *,
        identity: dict[str, Any],
        fresh: bool,
        follows: frozenset[str] = frozenset(),
    ) -> DataState | None:
        """The checkpoint's data state, checked against this run's ``identity`` (``follows``: the
        settings this run leaves to the checkpoint, see :func:`refuse_changed_settings`); None
        (and the epoch read afresh) when it holds none or ``fresh`` (``resume='fresh'``)."""
        self.loaded = True
        if not state_dict or "format" not in state_dict:
            rank_zero_warn(NO_DATA_STATE)
            self.start_afresh()
            return None
        if fresh:
            rank_zero_warn("resume='fresh': ignoring the checkpoint's data state; its epoch starts afresh")
            self.start_afresh()
            return None
        state = DataState.from_dict(state_dict)
        refuse_changed_settings(state, identity, follows=follows)
        return state

    def resume_from(self, state: DataState, sampler: Any, *, table_name: str) -> None:
        """Keep ``state`` (checked, its table version pinned) and position ``sampler`` there."""
        self.resumed_from = state
        self.apply(sampler, table_name=table_name)

    def apply(self, sampler: Any, *, table_name: str) -> None:
        """Position a (new) train sampler where the checkpoint being resumed says reading stands."""
        state = self.resumed_from
        if state is None or sampler is None or state.train is None:
            return
        train = state.train
        mixture = getattr(sampler, "mixture", None)
        if train["start_row"] and mixture is not None and mixture.batching == "source":
            then = train["order_batch_size"] or train["batch_size"]
            if then != sampler.batch_size:
                raise ResumeRefusedError(
                    f"cannot resume mid-epoch with batch_size={sampler.batch_size} and mix_batching='source': the "
                    f"checkpoint's epoch {train['epoch']} was dealt in batches of {then} rows, each of one source, and "
                    f"its {train['split_rows'] - train['start_row']} unread rows cut into batches of "
                    f"{sampler.batch_size} would mix sources in a batch. Resume with batch_size={then}, or pass "
                    "resume='fresh' to start the data afresh (the new batch size applies from the next epoch on "
                    "when resuming from a checkpoint written at an epoch's end)."
                )
        # the rows of an epoch dealt for the checkpoint's layout (a mixture's depend on it), not this run's
        rows = sampler.rows_dealt_for(
            batch_size=train["order_batch_size"] or train["batch_size"],
            world_size=train["order_world_size"] or state.world_size,
        )
        if train["split_rows"] != rows:
            raise ValueError(
                f"the checkpoint's train split of table {table_name!r} has {train['split_rows']} rows, this "
                f"one {rows} (same table version, splits, filter and seed): the split was built "
                "differently. Pass resume='fresh' to start the data afresh."
            )
        sampler.resume_at(
            epoch=train["epoch"],
            consumed_rows=train["start_row"],
            order_world_size=train["order_world_size"],
            order_batch_size=train["order_batch_size"],
        )
        self._align_pending = True

    def start_afresh(self) -> None:
        """No usable data state: the epoch Lightning resumes is read again from its first row."""
        self.resumed_from = None
        self._align_pending = self._afresh = True

    def epoch_over(self) -> None:
        """The resumed epoch is over: later samplers start new epochs from their first row."""
        self.resumed_from = None

    # -- Lightning's batch index -------------------------------------------------------------

    def align_lightning(self, trainer: Any, sampler: Any, *, split_name: str | None, world_size: int) -> None:
        """Once, when the resumed run asks for its train loader: make Lightning's batch index agree
        with the data position, so that an epoch ends (and validates) where a whole epoch does.

        With the checkpoint's batch size and world size the two agree by construction. With
        others, Lightning would count the rest of the epoch in the old batches: its index is moved
        to where the new batch count ends the epoch (a finished epoch: its last batch). Without a
        data state the epoch is read afresh and the index starts at 0. The data position wins.
        """
        if not self._align_pending or trainer is None or sampler is None:
            return
        self._align_pending = False
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        if self._afresh:
            self._afresh = False
            sampler.resume_at(epoch=trainer.fit_loop.epoch_progress.current.completed, consumed_rows=0)
            target = 0
        else:
            state = self.resumed_from
            train = state.train if state is not None else None
            then = state.world_size if state is not None else world_size
            if train is None or (train["batch_size"] == sampler.batch_size and then == world_size):
                return
            finished = train["start_row"] == 0
            target = lightning_epoch_batches(trainer, len(sampler)) if finished else sampler.batches_before_start
            rest = len(sampler) - sampler.batches_before_start
            rank_zero_warn(
                f"resuming split {split_name!r} with batch_size={sampler.batch_size} on {world_size} rank(s) "
                f"(the checkpoint: batch_size={train['batch_size']} on {then}): "
                + (
                    f"epoch {train['epoch']} starts afresh in the new batches."
                    if finished
                    else f"the {sampler.num_rows - train['start_row']} unread rows of epoch {train['epoch']} make "
                    f"{rest} batches, and the epoch's batch index continues at {sampler.batches_before_start} so "
                    "that it ends (and validates) where a whole epoch does. Rows are exact; batch boundaries "
                    "differ from an uninterrupted run's."
                )
            )
        shift = target - progress.processed
        if shift:
            # all four alike: Lightning's restart arithmetic (completed += 1 after a checkpoint
            # written in on_train_batch_end, then ready = processed = completed) is unchanged
            for attr in ("ready", "started", "processed", "completed"):
                setattr(progress, attr, getattr(progress, attr) + shift)
