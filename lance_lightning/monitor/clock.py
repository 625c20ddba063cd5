"""The clocks of :class:`~lance_lightning.monitor.LoaderMonitor`: per-stage windows of wait / step time and
rows, rows in a batch, and the wrapping of a Lightning loop's fetch hooks (see :mod:`lance_lightning.monitor`
for what a step and a wait are)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

_FETCH_HOOKS = ("_on_before_fetch", "_on_after_fetch")


@dataclass
class Window:
    """Sums over some steps: how long the loop waited, how long the steps took, rows consumed."""

    steps: int = 0
    wait_s: float = 0.0
    wall_s: float = 0.0
    rows: int = 0

    def add(self, wait_s: float, wall_s: float, rows: int) -> None:
        self.steps += 1
        self.wait_s += wait_s
        self.wall_s += wall_s
        self.rows += rows

    def merge(self, other: Window) -> None:
        self.steps += other.steps
        self.wait_s += other.wait_s
        self.wall_s += other.wall_s
        self.rows += other.rows

    @property
    def wait_fraction(self) -> float:
        return self.wait_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s > 0 else 0.0


class _StageClock:
    """One stage's clocks (see the module docstring for what a step and a wait are)."""

    def __init__(self) -> None:
        self.window = Window()  # steady steps since the last log
        self.total = Window()  # steady steps of the run
        self.startup = Window()  # first steps of epochs / evaluation runs read by workers
        self.last_first = Window()  # the latest first step: logged when a window has nothing else
        self.hooked = False
        self.logged = _Means()  # the logged (reduced) wait and transform shares, over the steps they cover
        self.timing_seen = (0.0, 0.0)  # the dataset's (load_s, transform_s) at the last log
        self.restart()

    def restart(self, workers: bool = False) -> None:
        """A new epoch or evaluation run; with ``workers``, its first step is start-up."""
        self.pause()
        self._first = workers

    def pause(self) -> None:
        """The next step starts at its fetch (what came before is not this stage's step)."""
        self._mark: float | None = None
        self._fetch_at: float | None = None
        self._pending = 0.0

    def fetch_start(self) -> None:
        now = perf_counter()
        self._fetch_at = now
        if self._mark is None:
            self._mark = now

    def fetch_end(self) -> None:
        if self._fetch_at is not None:
            self._pending += perf_counter() - self._fetch_at
            self._fetch_at = None

    def batch_start(self) -> None:
        if self.hooked:
            return
        now = perf_counter()  # no fetch hooks: the gap since the last step is the wait
        if self._mark is None:
            self._mark = now
        else:
            self._pending += now - self._mark

    def batch_end(self, rows: int) -> None:
        now = perf_counter()
        if self._mark is None:
            self._mark = now
            return
        wall = now - self._mark
        wait = min(self._pending, wall)
        if self._first:
            self._first = False
            self.last_first = Window()
            self.last_first.add(wait, wall, rows)
            self.startup.add(wait, wall, rows)
        else:
            self.window.add(wait, wall, rows)
        self._mark, self._pending = now, 0.0

    def take_window(self) -> Window:
        """The steps since the last call (the latest first step when there were none)."""
        window = self.window if self.window.steps else self.last_first
        self.total.merge(self.window)
        self.window, self.last_first = Window(), Window()
        return window


class _Means:
    """Step-weighted means of logged ``(steps, wait share, transform share or None)`` entries."""

    def __init__(self, entries: Any = ()) -> None:
        self.steps = self.wait = self.share_steps = self.share = 0.0
        for entry in entries:
            self.add(*entry)

    def add(self, steps: int, wait: float, share: float | None) -> None:
        self.steps += steps
        self.wait += steps * wait
        if share is not None:
            self.share_steps += steps
            self.share += steps * share

    def means(self) -> tuple[float | None, float | None]:
        wait = self.wait / self.steps if self.steps else None
        return wait, (self.share / self.share_steps if self.share_steps else None)


def batch_rows(batch: Any) -> int:
    """Rows in a batch: the first dimension of its first tensor (dict values, list/tuple items)."""
    if type(batch) is dict and batch:  # the common case, without isinstance's ABC checks
        first = next(iter(batch.values()))
        if type(first) is torch.Tensor:
            return first.shape[0] if first.ndim else 1
    for _ in range(8):
        if isinstance(batch, (torch.Tensor, np.ndarray)):
            return int(batch.shape[0]) if batch.ndim else 1
        if isinstance(batch, Mapping):
            if not batch:
                return 0
            batch = next(iter(batch.values()))
        elif isinstance(batch, (list, tuple)):
            if not batch or not isinstance(batch[0], (torch.Tensor, np.ndarray, Mapping, list, tuple)):
                return len(batch)
            batch = batch[0]
        else:
            return 1
    return 0


def _should_log(trainer: pl.Trainer) -> bool:
    """Whether Lightning writes to its loggers after this training step: its own test
    (``LoggerConnector.should_update_logs``), read straight from the fit loop's step counter."""
    every = trainer.log_every_n_steps
    if not every:
        return False
    stepped = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", None)
    if stepped is None:  # another Lightning: ask it (slower)
        return bool(trainer._logger_connector.should_update_logs)
    # `+ 1`: the counter moves on after this hook, before Lightning's own test of this step
    return (stepped + 1) % every == 0 or trainer.should_stop


def _wrap_fetch(loop: Any, clock: _StageClock) -> bool:
    """Time the loop's fetches: wrap its ``_on_before_fetch``/``_on_after_fetch`` on the instance."""
    before, after = (getattr(loop, name, None) for name in _FETCH_HOOKS)
    if not callable(before) or not callable(after):
        return False
    if getattr(before, "_lance_monitor", None) is clock:
        return True

    def on_before_fetch() -> None:
        before()
        clock.fetch_start()

    def on_after_fetch() -> None:
        clock.fetch_end()
        after()

    on_before_fetch._lance_monitor = on_after_fetch._lance_monitor = clock  # type: ignore[attr-defined]
    loop._on_before_fetch, loop._on_after_fetch = on_before_fetch, on_after_fetch
    return True


def _unwrap_fetch(loop: Any) -> None:
    for name in _FETCH_HOOKS:
        if getattr(vars(loop).get(name), "_lance_monitor", None) is not None:
            delattr(loop, name)


def _ranks(world_size: int) -> str:
    return f"the slowest of {world_size} ranks; " if world_size > 1 else ""


def _has_workers(loaders: Any) -> bool:
    """Whether any of the stage's DataLoaders reads in worker processes."""
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return any(_has_workers(loader) for loader in loaders)
    return bool(getattr(loaders, "num_workers", 0))


def _loops(trainer: pl.Trainer) -> dict[str, list[Any]]:
    fit = getattr(trainer, "fit_loop", None)
    epoch = getattr(fit, "epoch_loop", None)
    return {
        "train": [epoch],
        "val": [getattr(epoch, "val_loop", None), getattr(trainer, "validate_loop", None)],
        "test": [getattr(trainer, "test_loop", None)],
        "predict": [getattr(trainer, "predict_loop", None)],
    }
