"""``LoaderMonitor``: does the training loop wait for data? Logged as it trains, without a profiler.

What is measured, and where (Lightning 2.x loops):

* **wait**: the time the loop spends inside ``next()`` on its data fetcher. Every Lightning loop
  brackets that call with its ``_on_before_fetch`` / ``_on_after_fetch`` methods (the profiler's
  ``train_dataloader_next`` row); the monitor wraps those two methods on the loop objects at
  ``setup`` and takes the time in between. Lightning's ``_PrefetchDataFetcher`` only reads ahead
  for loaders without a length; ``LanceDataModule``'s loaders have one, so each ``next()`` fetches
  the batch it returns. For a loader without a length, ``next()`` returns the batch fetched one
  step earlier and fetches the next: the time is still time the loop was blocked on data, one
  step shifted, which a window does not see. Were the hooks ever missing (another Lightning), the
  wait falls back to the gap between one batch's end and the next batch's start.
* **step**: from the end of the previous step to the end of this one (``on_*_batch_end``), so
  wait + compute + everything else the loop does in between. Validation inside ``fit`` is no
  part of a train step: after it, the next step starts at its fetch. With DataLoader workers, the
  first step of each epoch or evaluation run waits for them to start (or, when persistent, to read
  their first batches) and is kept apart: the summary shows it as start-up time, and it enters a
  logged window only when a window has no other step. Without workers every step counts, the
  first too (it may read a whole group of batches: block windows, table-order ranges).
* ``data/wait_fraction`` = sum of waits / sum of step times, and ``data/rows_per_s`` = rows / sum
  of step times, over the steps since the last log. Logged every ``log_every_n_steps`` steps,
  exactly when Lightning writes to its loggers (its own test of the step), to the Trainer's
  loggers, at Lightning's step number. The logged wait is the largest of the ranks', rows/s the
  smallest: one ``trainer.strategy.reduce(..., reduce_op="max")`` of the three numbers, which is
  the collective ``self.log(..., sync_dist=True, reduce_fx="max")`` would make, but once for all
  of them, and without ``self.log``'s own cost (it deep-copies the metric's metadata on every
  call: ~0.1-1 ms, measured ~1 ms on the benchmark machine, more than everything else the monitor
  does in 10 steps). A single process reduces nothing. Validation and test log
  ``data/{val,test}_wait_fraction`` and ``..._rows_per_s`` once an evaluation run, reduced the
  same way (every rank ends each run once, whatever its batch count). The progress bar shows
  ``data/wait_fraction`` (Lightning's progress bar dict, which keeps a value between logs).
* **read vs transform**: ``LanceDataModule``'s datasets get a :class:`~lance_lightning.timing.LoaderTiming`
  (``dataset.timing``), which sums, per process (DataLoader workers included), the time of each
  ``dataset[index]`` and of the transform inside it. With a transform, ``data/transform_fraction``
  (the transform's share of the time to make a batch, since the last log; the largest among the
  ranks) is logged with the rest, and the warning says whether the transform or the read dominates.

The wait is host time blocked in ``next()``. On an accelerator whose kernels run asynchronously
the host loop runs ahead of it; when the accelerator is the bottleneck the host blocks in the
copy to the device or in ``.item()``, both outside the fetch: they count as compute, as they should.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..timing import LoaderTiming
from .advice import _ranks, _timing, advice, read_path
from .clock import (
    Window,
    _has_workers,
    _loops,
    _Means,
    _should_log,
    _StageClock,
    _unwrap_fetch,
    _wrap_fetch,
    batch_rows,
)

__all__ = ["LoaderBottleneckWarning", "LoaderMonitor", "batch_rows", "read_path"]

_STAGES_OF = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


def wait_key(stage: str) -> str:
    return "data/wait_fraction" if stage == "train" else f"data/{stage}_wait_fraction"


def rows_key(stage: str) -> str:
    return "data/rows_per_s" if stage == "train" else f"data/{stage}_rows_per_s"


def source_share_key(name: str) -> str:
    """The logged share of the train rows read from mixture source ``name`` (since the last log)."""
    return f"data/source_share/{name}"


def transform_key(stage: str) -> str:
    return "data/transform_fraction" if stage == "train" else f"data/{stage}_transform_fraction"


class LoaderBottleneckWarning(UserWarning):
    """The training loop waited for data more than the threshold share of its time."""


class LoaderMonitor(pl.Callback):
    """Logs how much of each step the loop waited for data, rows/s, and warns when the loader is the bottleneck.

    Logs ``data/wait_fraction`` (shown in the progress bar) and ``data/rows_per_s`` every
    ``log_every_n_steps`` training steps, through the Trainer's loggers, as the worst rank's
    value; ``data/{val,test}_wait_fraction`` and ``..._rows_per_s`` once an evaluation run. When the
    logged wait share averages ``threshold`` or more over the last ``warn_after_steps`` training
    steps, rank 0 warns once (:class:`LoaderBottleneckWarning`) naming what the
    :class:`~lance_lightning.LanceDataModule` can change: its shuffle mode and how it reads,
    ``num_workers``, ``batch_size``, and the transform when it takes most of the time to make a
    batch (measured). At the end of ``fit``/``validate``/``test``/``predict`` rank 0 prints a
    one-line summary (``summary=False``: none); :meth:`summary` returns it. See
    :mod:`lance_lightning.monitor` for exactly what is timed.

    Args:
        threshold: the wait share that warns (None: never warn).
        warn_after_steps: how many training steps the share must hold for.
        prog_bar: show ``data/wait_fraction`` in the progress bar.
        summary: print the one-line summary at the end of each run.
    """

    def __init__(
        self, threshold: float | None = 0.5, warn_after_steps: int = 100, prog_bar: bool = True, summary: bool = True
    ) -> None:
        if threshold is not None and not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1] or None, got {threshold!r}")
        if not isinstance(warn_after_steps, int) or warn_after_steps < 1:
            raise ValueError(f"warn_after_steps must be an integer >= 1, got {warn_after_steps!r}")
        self.threshold = threshold
        self.warn_after_steps = warn_after_steps
        self.prog_bar = prog_bar
        self.print_summary = summary
        self.clocks = {stage: _StageClock() for stage in ("train", "val", "test", "predict")}
        # one entry a log (the latest 10,000): this rank's window and the values Lightning logged
        self.history: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.warning: str | None = None  # the warning's text, once given (on every rank)
        self._recent: deque[tuple[int, float, float | None]] = deque()
        self._datamodule: Any = None
        self._world_size = 1
        self._source_names: list[str] = []
        self._source_rows: np.ndarray | None = None  # train rows read from each mixture source since the last log

    # -- wiring ----------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._datamodule = trainer.datamodule
        self._world_size = trainer.world_size
        mix = getattr(getattr(trainer.datamodule, "options", None), "mix", None)
        self._source_names = [source.name for source in mix] if mix else []
        self._source_rows = np.zeros(len(self._source_names), dtype=np.int64) if mix else None
        for name in _STAGES_OF.get(stage, ()):
            self.clocks[name] = _StageClock()
        if stage == "fit":
            self._recent.clear()
            self.warning = None
        for name, loops in _loops(trainer).items():
            present = [loop for loop in loops if loop is not None]
            for loop in present:
                _unwrap_fetch(loop)  # left by a run that ended in an exception
            self.clocks[name].hooked = bool(present) and all([_wrap_fetch(loop, self.clocks[name]) for loop in present])
        # time the read and the transform inside the datasets (before any worker starts: Lightning
        # creates the loaders and their iterators after the setup hooks)
        for dataset in (getattr(trainer.datamodule, "datasets", None) or {}).values():
            if hasattr(type(dataset), "timing") and getattr(dataset, "timing", None) is None:
                dataset.timing = LoaderTiming()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for loops in _loops(trainer).values():
            for loop in loops:
                if loop is not None:
                    _unwrap_fetch(loop)
        if self.print_summary and trainer.is_global_zero:
            line = self.summary(_STAGES_OF.get(stage, ()))
            if line:
                rank_zero_info(line)

    # -- training --------------------------------------------------------------------------

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clocks["train"].restart(_has_workers(trainer.train_dataloader))

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.clocks["train"].batch_start()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        clock = self.clocks["train"]
        clock.batch_end(batch_rows(batch))
        self._count_sources(batch)
        if not _should_log(trainer):
            return
        # Every rank takes this branch at the same steps (Lightning's cadence), so the reduce in
        # _log pairs up across ranks like the sync of any metric logged with sync_dist=True.
        window = clock.take_window()
        entry = (window.steps, *self._log(trainer, "train", window))
        clock.logged.add(*entry)
        self._recent.append(entry)
        if self.prog_bar:
            self._show(trainer, pl_module, wait_key("train"), entry[1])
        self._maybe_warn(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clocks["train"].pause()  # validation inside fit is no part of the next train step

    # -- evaluation and prediction ---------------------------------------------------------

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clocks["val"].restart(_has_workers(trainer.val_dataloaders))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.clocks["val"].batch_start()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self.clocks["val"].batch_end(batch_rows(batch))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_epoch_end(trainer, "val")

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clocks["test"].restart(_has_workers(trainer.test_dataloaders))

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.clocks["test"].batch_start()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.clocks["test"].batch_end(batch_rows(batch))

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_epoch_end(trainer, "test")

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clocks["predict"].restart(_has_workers(trainer.predict_dataloaders))

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.clocks["predict"].batch_start()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.clocks["predict"].batch_end(batch_rows(batch))

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clocks["predict"].take_window()  # Lightning has no logging in predict: the summary shows it

    # -- the work --------------------------------------------------------------------------

    def _transform_share(self, stage: str) -> float | None:
        """The share of the dataset's time spent in the transform since the last log; None when
        there is no transform or nothing times it (the same on every rank: the same settings)."""
        dm = self._datamodule
        timing = getattr((getattr(dm, "datasets", None) or {}).get(stage), "timing", None)
        if getattr(dm, "transform", None) is None or not isinstance(timing, LoaderTiming):
            return None
        totals = timing.totals()
        clock = self.clocks[stage]
        load, transform = totals["load_s"] - clock.timing_seen[0], totals["transform_s"] - clock.timing_seen[1]
        clock.timing_seen = (totals["load_s"], totals["transform_s"])
        return min(transform / load, 1.0) if load > 0 else 0.0

    def _log(self, trainer: pl.Trainer, stage: str, window: Window) -> tuple[float, float | None]:
        """Reduce ``window`` over the ranks (max wait and transform shares, min rows/s) and hand it to
        the Trainer's loggers at Lightning's own step; return the reduced wait and transform shares.

        One ``strategy.reduce`` of three numbers: the collective ``self.log(..., sync_dist=True)``
        makes, once instead of once per metric, and without ``self.log``'s own cost (~0.1-1 ms a call).
        """
        share = self._transform_share(stage)
        local = [window.wait_fraction, -window.rows_per_s, -1.0 if share is None else share]
        reduced = local
        if trainer.world_size > 1:  # every rank gets here at the same step (see the callers)
            strategy = trainer.strategy
            values = torch.tensor(local, dtype=torch.float32, device=strategy.root_device)
            reduced = strategy.reduce(values, reduce_op="max").tolist()
        wait, rows = reduced[0], -reduced[1]
        share = reduced[2] if share is not None else None
        metrics = {wait_key(stage): wait, rows_key(stage): rows}
        if share is not None:
            metrics[transform_key(stage)] = share
        if stage == "train":
            metrics.update(self._source_shares(trainer))
        # what Lightning's LoggerConnector.log_metrics does with its own metrics at this point
        metrics["epoch"] = trainer.current_epoch
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self.history.append(
            {
                "stage": stage,
                "step": step,
                "steps": window.steps,
                "wait_fraction": local[0],
                "rows_per_s": -local[1],
                "transform_fraction": share if share is None else local[2],
                "logged_wait_fraction": wait,
                "logged_rows_per_s": rows,
                "logged_transform_fraction": share,
            }
        )
        return wait, share

    def _count_sources(self, batch: Any) -> None:
        """Add a mixture batch's rows to the count of rows read from each source."""
        sources = batch.get("source") if isinstance(batch, dict) and self._source_rows is not None else None
        if isinstance(sources, torch.Tensor) and sources.numel():
            self._source_rows += np.bincount(sources.cpu().numpy(), minlength=len(self._source_rows))[
                : len(self._source_rows)
            ]

    def _source_shares(self, trainer: pl.Trainer) -> dict[str, float]:
        """Each mixture source's share of the train rows read since the last log, over all ranks."""
        if self._source_rows is None:
            return {}
        counts = self._source_rows
        if trainer.world_size > 1:  # reached at the same steps on every rank (see _log's callers)
            strategy = trainer.strategy
            values = torch.tensor(counts, dtype=torch.float64, device=strategy.root_device)
            counts = strategy.reduce(values, reduce_op="sum").cpu().numpy()
        total = float(counts.sum())
        self._source_rows = np.zeros_like(self._source_rows)
        if not total:
            return {}
        return {source_share_key(name): float(n) / total for name, n in zip(self._source_names, counts)}

    def _show(self, trainer: pl.Trainer, pl_module: pl.LightningModule, key: str, value: float) -> None:
        """Put ``key`` in the progress bar (Lightning's dict of its values, which it keeps between logs)."""
        shown = getattr(getattr(trainer, "_logger_connector", None), "_progress_bar_metrics", None)
        if isinstance(shown, dict):
            shown[key] = value
        else:  # another Lightning: the public way, at the cost of a self.log call
            pl_module.log(key, value, prog_bar=True, logger=False, on_step=True, on_epoch=False)

    def _eval_epoch_end(self, trainer: pl.Trainer, stage: str) -> None:
        if trainer.sanity_checking:
            return
        # every rank runs this hook once a run, whatever its batch count: the reduce pairs up
        window = self.clocks[stage].take_window()
        self.clocks[stage].logged.add(window.steps, *self._log(trainer, stage, window))

    def _maybe_warn(self, trainer: pl.Trainer) -> None:
        if self.warning is not None or self.threshold is None:
            return
        covered = sum(entry[0] for entry in self._recent)
        while self._recent and covered - self._recent[0][0] >= self.warn_after_steps:
            covered -= self._recent.popleft()[0]
        if covered < self.warn_after_steps:
            return
        mean, share = _Means(self._recent).means()
        if mean is None or mean < self.threshold:
            return
        lines = "\n".join(
            f"  - {line}" for line in advice(self._datamodule, "train", share, world_size=trainer.world_size)
        )
        self.warning = (
            f"the training loop waited for data {mean:.0%} of the time over the last {covered} steps "
            f"({_ranks(trainer.world_size)}warning threshold {self.threshold:.0%}). "
            f"Read path: {read_path(self._datamodule, 'train')}. "
            f"What to change:\n{lines}"
        )
        rank_zero_warn(self.warning, category=LoaderBottleneckWarning)

    def summary(self, stages: tuple[str, ...] | list[str] = ("train", "val", "test", "predict")) -> str:
        """One line: per stage, the mean wait share, rows/s and steps; the read path of the first stage."""
        parts = []
        for stage in stages:
            clock = self.clocks[stage]
            total = Window()
            total.merge(clock.total)
            total.merge(clock.window)
            if not total.steps and not clock.startup.steps:
                continue
            worst, _ = clock.logged.means()
            wait = worst if worst is not None else total.wait_fraction
            ranks = f" (the slowest of {self._world_size} ranks)" if worst is not None and self._world_size > 1 else ""
            here = " on rank 0" if self._world_size > 1 else ""
            parts.append(
                f"{stage} waited {wait:.0%} of the step time{ranks}, {total.rows_per_s:,.0f} rows/s{here} over "
                f"{total.steps} steps"
                + (f" (+{clock.startup.wall_s:.2f} s of worker start-up)" if clock.startup.steps else "")
            )
        if not parts:
            return ""
        first = next(s for s in stages if self.clocks[s].total.steps or self.clocks[s].startup.steps)
        line = f"loader: {'; '.join(parts)}; read path ({first}): {read_path(self._datamodule, first)}"
        _, share = self.clocks[first].logged.means()
        totals = _timing(self._datamodule, first)
        if share is None and totals and totals["load_s"] > 0:
            share = totals["transform_s"] / totals["load_s"]
        if share is not None and getattr(self._datamodule, "transform", None) is not None:
            line += f", transform {share:.0%} of batch making"
        return line
