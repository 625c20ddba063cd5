"""LoaderMonitor with real Trainers on real tables: what it logs, when it warns, what it says."""

from __future__ import annotations

import csv
import logging
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lance_lightning import LanceDataModule, LoaderMonitor
from lance_lightning.monitor import LoaderBottleneckWarning, batch_rows
from lance_lightning.timing import LoaderTiming

SLEEP_S = 0.2  # far above what a step of this tiny model costs, even on 2 busy cores (5-120 ms seen)


def sleepy_transform(batch):
    """A transform that costs ``SLEEP_S`` a batch (importable: workers resolve it by path)."""
    time.sleep(SLEEP_S)
    return batch


class Sleeper(pl.LightningModule):
    """A linear classifier whose training step takes at least ``step_sleep`` seconds."""

    def __init__(self, step_sleep: float = 0.0) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)
        self.step_sleep = step_sleep

    def _loss(self, batch):
        return torch.nn.functional.cross_entropy(self.layer(batch["x"]), batch["y"])

    def training_step(self, batch, batch_idx):
        if self.step_sleep:
            time.sleep(self.step_sleep)
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._loss(batch))

    def test_step(self, batch, batch_idx):
        self.log("test/loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(tmp_path: Path, monitor: LoaderMonitor, **kwargs) -> pl.Trainer:
    options = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        log_every_n_steps=2,
        logger=CSVLogger(tmp_path, name="csv", version=""),
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


def logged(tmp_path: Path, key: str) -> list[float]:
    with (tmp_path / "csv" / "metrics.csv").open() as fh:
        return [float(row[key]) for row in csv.DictReader(fh) if row.get(key)]


def fit(tmp_path, dm, model, monitor, **kwargs) -> list[LoaderBottleneckWarning]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, monitor, **kwargs).fit(model, datamodule=dm)
    return [w for w in caught if issubclass(w.category, LoaderBottleneckWarning)]


def test_a_slow_transform_is_logged_and_warned_once_with_what_to_change(make_table, tmp_path, caplog):
    uri, _ = make_table("toy", 400)  # train: 320 rows = 10 batches of 32
    # read from the table (staging='off'): the read path this test describes; a staged read is near free.
    # read_ahead=0: each batch read when the step asks (read ahead, the first steps find theirs ready)
    dm = LanceDataModule(
        uri, "toy", columns=["id", "x", "y"], batch_size=32, transform=sleepy_transform, staging="off", read_ahead=0
    )
    monitor = LoaderMonitor(threshold=0.5, warn_after_steps=4)
    with caplog.at_level(logging.INFO):
        caught = fit(tmp_path, dm, Sleeper(), monitor)

    waits = logged(tmp_path, "data/wait_fraction")
    assert len(waits) == 5  # steps 2, 4, ..., 10
    assert min(waits) >= 0.5, waits
    rows = logged(tmp_path, "data/rows_per_s")
    assert len(rows) == 5 and all(0 < r < 32 / SLEEP_S for r in rows), rows  # a batch takes > SLEEP_S
    assert logged(tmp_path, "data/val_wait_fraction")  # validation: once an epoch
    assert logged(tmp_path, "data/val_rows_per_s")

    assert len(caught) == 1, [str(w.message) for w in caught]  # at step 6, not again at 8 or 10
    message = str(caught[0].message)
    assert message == monitor.warning
    for setting in ("shuffle='uniform'", "shuffle='block'", "cache_max_bytes", "num_workers=0", "batch_size=32"):
        assert setting in message, setting
    # the transform is measured and named as what dominates
    assert "transform=" in message and "sleepy_transform takes" in message
    share = int(message.split("sleepy_transform takes ")[1].split("%")[0])
    assert share >= 90, message
    timing = dm.datasets["train"].timing
    assert isinstance(timing, LoaderTiming) and timing.totals()["items"] == 10

    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loader: ")]
    assert len(summary) == 1, summary
    assert "train waited" in summary[0] and "val waited" in summary[0] and "rank" not in summary[0]
    assert "read path (train): shuffle='uniform' from the table: each batch is one take" in summary[0]
    assert "transform 9" in summary[0]  # 9x% of batch making


def test_in_memory_with_a_slow_model_step_waits_little_and_does_not_warn(make_table, tmp_path):
    uri, _ = make_table("toy", 400)
    dm = LanceDataModule(uri, "toy", columns=["id", "x", "y"], batch_size=32, in_memory=True)
    monitor = LoaderMonitor(threshold=0.5, warn_after_steps=4)
    caught = fit(tmp_path, dm, Sleeper(step_sleep=SLEEP_S / 2), monitor, limit_val_batches=0)

    waits = logged(tmp_path, "data/wait_fraction")
    assert len(waits) == 5 and max(waits) <= 0.2, waits
    assert caught == [] and monitor.warning is None
    assert "from the split's node-local stage (pre-faulted: in_memory=True): each batch is a gather" in (
        monitor.summary(["train"])
    )


def test_the_progress_bar_shows_the_wait_share(make_table, tmp_path):
    uri, _ = make_table("toy", 200)
    dm = LanceDataModule(uri, "toy", columns=["id", "x", "y"], batch_size=16)
    monitor = LoaderMonitor(summary=False)
    run = trainer(tmp_path, monitor, logger=False, max_steps=6)
    run.fit(Sleeper(), datamodule=dm)
    assert "data/wait_fraction" in run.progress_bar_metrics
    assert "data/rows_per_s" not in run.progress_bar_metrics
    # the fetch hooks are the loops' own again after the run
    for loop in (run.fit_loop.epoch_loop, run.fit_loop.epoch_loop.val_loop, run.test_loop):
        assert "_on_before_fetch" not in vars(loop) and "_on_after_fetch" not in vars(loop)


def test_test_stage_is_logged_and_summarised(make_table, tmp_path, caplog):
    uri, _ = make_table("toy", 400)
    dm = LanceDataModule(uri, "toy", columns=["id", "x", "y"], batch_size=8)
    monitor = LoaderMonitor()
    with caplog.at_level(logging.INFO):
        trainer(tmp_path, monitor).test(Sleeper(step_sleep=0.005), datamodule=dm)
    assert len(logged(tmp_path, "data/test_wait_fraction")) == 1
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loader: ")]
    assert line.startswith("loader: test waited") and "over 5 steps" in line  # 40 rows, no workers: all count
    assert "read path (test): table order (evaluation) from the table: range scans of up to" in line


@pytest.mark.slow
def test_transform_time_is_measured_inside_workers(make_table, tmp_path):
    """With a worker, the transform runs in another process: its time still reaches the warning."""
    uri, _ = make_table("toy", 400)
    dm = LanceDataModule(
        uri, "toy", columns=["id", "x", "y"], batch_size=32, num_workers=1, staging="off",
        transform="tests.integration.test_monitor.sleepy_transform",
    )  # fmt: skip
    monitor = LoaderMonitor(threshold=0.5, warn_after_steps=4)
    caught = fit(tmp_path, dm, Sleeper(), monitor, limit_val_batches=0)
    assert min(logged(tmp_path, "data/wait_fraction")) >= 0.5
    (warning,) = caught
    assert "num_workers=1: more workers" in str(warning.message)
    totals = dm.datasets["train"].timing.totals()
    assert totals["items"] >= 10 and totals["transform_s"] / totals["load_s"] >= 0.9, totals


def test_batch_rows():
    x = torch.zeros(7, 3)
    assert batch_rows({"x": x, "y": torch.zeros(7)}) == 7
    assert batch_rows((x, torch.zeros(7))) == 7
    assert batch_rows({"name": ["a", "b"]}) == 2
    assert batch_rows({"nested": {"x": x}}) == 7
    assert batch_rows({}) == 0


def test_settings_are_checked():
    with pytest.raises(ValueError, match="threshold"):
        LoaderMonitor(threshold=1.5)
    with pytest.raises(ValueError, match="warn_after_steps"):
        LoaderMonitor(warn_after_steps=0)


def test_the_main_job_logs_it_and_ends_with_the_summary(digits_db, tmp_path, caplog):
    from hydra import compose, initialize_config_dir

    from lance_lightning.app.train import CONFIG_PATH, train

    uri, table = digits_db(200)
    overrides = [f"data.uri={uri}", f"data.table={table}", f"paths.output_dir={tmp_path / 'run'}", "trainer=cpu",
                 "trainer.max_epochs=1", "data.batch_size=16", "trainer.log_every_n_steps=2",
                 "trainer.enable_progress_bar=false"]  # fmt: skip
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    assert cfg.callbacks.loader_monitor._target_ == "lance_lightning.monitor.LoaderMonitor"
    with caplog.at_level(logging.INFO):
        train(cfg)
    assert len(logged(tmp_path / "run", "data/wait_fraction")) == 5  # 160 train rows: 10 steps
    assert len(logged(tmp_path / "run", "data/test_wait_fraction")) == 1
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loader: ")]
    assert [line.split(" waited")[0] for line in lines] == ["loader: train", "loader: test"]


def test_a_mixture_s_source_shares_are_logged(make_table, tmp_path):
    """Each mixture source's share of the train rows read since the last log, by name: a third
    of the rows are ids < 30 (source 'low'), the rest the train split's other rows."""
    uri, _ = make_table("toy", 90)
    mix = {"high": {"proportion": 2, "filter": "id >= 30"}, "low": {"proportion": 1, "filter": "id < 30"}}
    dm = LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=10, mix=mix, cache=str(tmp_path / "s"))
    fit(tmp_path, dm, Sleeper(), LoaderMonitor(threshold=None, summary=False), limit_val_batches=0)
    high, low = logged(tmp_path, "data/source_share/high"), logged(tmp_path, "data/source_share/low")
    assert len(high) == len(low) == 4  # 9 batches, a log every 2 steps
    assert all(h + lo == pytest.approx(1) for h, lo in zip(high, low))
    assert sum(low) / len(low) == pytest.approx(1 / 3, abs=0.1)  # 20-row windows of a 60/30 epoch
