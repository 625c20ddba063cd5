"""What LoaderMonitor costs a training step, on the benchmark table (``throughput_<rows>``).

Run by hand::

    python benchmarks/bench_monitor.py                      # 200k rows, 3 modes, 200 steps, 2 repeats (~6 min)
    python benchmarks/bench_monitor.py --rows 1000000 --steps 500 --repeats 5 --modes uniform

Real Trainers fit an ``MLPClassifier`` on ``emb``/``label`` of the table that ``bench_throughput.py``
writes (made here when missing), batch 1024, num_workers=0, a CSVLogger, ``log_every_n_steps=10``
(the main job's), in three modes: ``uniform`` (128 -> 256 -> 1000, a take from the table a batch),
``in_memory`` (the same model, a gather from memory a batch) and ``in_memory_linear`` (128 -> 1000,
no hidden layer: the shortest step here, where the monitor's fixed cost weighs most). Three
figures per mode:

* **in situ**: every hook of the monitor wrapped with a timer during a real fit: the time spent in
  the monitor's own code, per step, everything included (its ``self.log`` calls every 10th step,
  the first of which registers the metrics with Lightning, and ``setup``), over the median step.
* **added per step, measured apart**: what the monitor adds where it cannot be timed in place: its
  wrappers of the loop's two fetch hooks (a no-op pair called 200k times, wrapped vs not), the
  dataset's :class:`~lance_lightning.timing.LoaderTiming` (``dataset[i]`` of a no-op dataset,
  timed vs not), and Lightning calling one more callback's hooks (a fit step's ~12 hook calls of an
  empty ``Callback``, measured by calling ``_call_callback_hooks`` with and without it).
* **A/B**: CPU time of the training process per step, fits with and without the monitor
  alternating, ``--repeats`` each; median of each arm. On a shared machine this is the noisiest
  figure (±several %): it checks the other two for something missed, it cannot resolve 1%.

The overhead figure is in situ + added; the script prints it per mode and as a share of the
median step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_throughput import DM_SPLITS, THROUGHPUT_COLUMNS, ensure_table  # noqa: E402

from lance_lightning.app.models import MLPClassifier  # noqa: E402
from lance_lightning.datamodule import LanceDataModule  # noqa: E402
from lance_lightning.monitor.callback import LoaderMonitor, _StageClock, _wrap_fetch  # noqa: E402
from lance_lightning.timing import LoaderTiming  # noqa: E402

warnings.filterwarnings("ignore")
HOOKS = [name for name, value in vars(LoaderMonitor).items() if name.startswith(("on_", "setup", "teardown"))]


class StepClock(pl.Callback):
    """Wall time of each training step (batch end to batch end), to take the median of."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None

    def on_train_batch_end(self, *args: Any) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now


def timed_monitor() -> tuple[LoaderMonitor, dict[str, float]]:
    """A monitor whose every hook adds its duration to ``spent["s"]``."""
    monitor, spent = LoaderMonitor(summary=False, threshold=None), {"s": 0.0}
    for name in HOOKS:
        hook = getattr(monitor, name)

        def timed(*args: Any, _hook: Any = hook, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _hook(*args, **kwargs)
            finally:
                spent["s"] += time.perf_counter() - start

        setattr(monitor, name, timed)
    return monitor, spent


def fit(uri: str, table: str, mode: str, steps: int, with_monitor: bool, out: str) -> dict[str, float]:
    dm = LanceDataModule(
        uri, table, columns=THROUGHPUT_COLUMNS, splits=DM_SPLITS, batch_size=1024, seed=0,
        shuffle="uniform", in_memory=mode.startswith("in_memory"),
    )  # fmt: skip
    hidden = [] if mode.endswith("_linear") else [256]
    model = MLPClassifier(in_features=128, num_classes=1000, hidden_dims=hidden, input_key="emb", label_key="label")
    clock = StepClock()
    callbacks: list[pl.Callback] = [clock]
    spent = {"s": 0.0}
    if with_monitor:
        monitor, spent = timed_monitor()
        callbacks.append(monitor)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0,
        log_every_n_steps=10, logger=pl.loggers.CSVLogger(out, name="bench"), callbacks=callbacks,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    cpu0 = time.process_time()
    trainer.fit(model, datamodule=dm)
    cpu = time.process_time() - cpu0
    return {
        "median_step_s": statistics.median(clock.times),
        "cpu_per_step_s": cpu / steps,
        "monitor_per_step_s": spent["s"] / steps,
        "steps": steps,
    }


def per_call(fn: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def added_apart(n: int = 200_000) -> dict[str, float]:
    """Seconds the monitor adds per step outside its hooks (best of 5 each)."""

    class Loop:
        def _on_before_fetch(self) -> None:
            pass

        def _on_after_fetch(self) -> None:
            pass

    plain, wrapped = Loop(), Loop()
    _wrap_fetch(wrapped, _StageClock())

    def pair(loop: Loop) -> Any:
        return lambda: (loop._on_before_fetch(), loop._on_after_fetch())

    fetch = min(per_call(pair(wrapped), n) - per_call(pair(plain), n) for _ in range(5))

    class Dataset:
        timing: LoaderTiming | None = None

        def _getitem(self, i: int) -> int:
            return i

        def __getitem__(self, i: int) -> int:
            return self._getitem(i) if self.timing is None else self.timing.load(self._getitem, i)

    untimed, timed = Dataset(), Dataset()
    timed.timing = LoaderTiming()
    dataset = min(per_call(lambda: timed[0], n) - per_call(lambda: untimed[0], n) for _ in range(5))

    # Lightning calls every callback's hooks, overridden or not: one more callback costs this
    from lightning.pytorch.trainer import call

    trainer = pl.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False
    )
    hooks = [
        "on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
        "on_before_zero_grad", "on_train_batch_end",
    ]  # fmt: skip
    args = {
        "on_train_batch_start": (None, 0),
        "on_before_backward": (torch.zeros(()),),
        "on_after_backward": (),
        "on_before_optimizer_step": (None,),
        "on_before_zero_grad": (None,),
        "on_train_batch_end": (None, None, 0),
    }

    def step_hooks() -> None:
        for hook in hooks:
            call._call_callback_hooks(trainer, hook, *args[hook])

    trainer.callbacks = []
    without = min(per_call(step_hooks, n // 20) for _ in range(5))
    trainer.callbacks = [pl.Callback()]
    with_one = min(per_call(step_hooks, n // 20) for _ in range(5))
    return {
        "fetch_hooks": max(fetch, 0.0),
        "dataset_timing": max(dataset, 0.0),
        "callback_calls": max(with_one - without, 0.0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", default="uniform,in_memory,in_memory_linear")
    parser.add_argument("--dir", default="/tmp/lance_lightning_bench")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    table, made = ensure_table(args.dir, "throughput", args.rows)
    print(f"table {table} at {args.dir} ({f'made in {made:.1f} s' if made else 'reused'})")
    apart = added_apart()
    added = sum(apart.values())
    print(
        "added per step, measured apart: "
        + ", ".join(f"{k} {v * 1e6:.2f} us" for k, v in apart.items())
        + f" = {added * 1e6:.2f} us"
    )
    with tempfile.TemporaryDirectory() as out:
        fit(args.dir, table, "in_memory", 20, True, out)  # warm-up: imports, first table reads
        for mode in args.modes.split(","):
            runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
            for _ in range(args.repeats):
                for with_monitor in (False, True):
                    runs[with_monitor].append(fit(args.dir, table, mode, args.steps, with_monitor, out))
            step = statistics.median(r["median_step_s"] for r in runs[False] + runs[True])
            in_situ = statistics.median(r["monitor_per_step_s"] for r in runs[True])
            cpu_off = statistics.median(r["cpu_per_step_s"] for r in runs[False])
            cpu_on = statistics.median(r["cpu_per_step_s"] for r in runs[True])
            total = in_situ + added
            print(
                f"{mode}: median step {step * 1e3:.2f} ms; monitor in situ {in_situ * 1e6:.1f} us/step + added "
                f"{added * 1e6:.1f} us = {total * 1e6:.1f} us/step = {total / step:.3%} of a step; "
                f"A/B CPU per step {cpu_off * 1e3:.2f} ms without, {cpu_on * 1e3:.2f} ms with "
                f"({cpu_on / cpu_off - 1:+.1%}, noise included; {args.repeats} runs x {args.steps} steps each)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
