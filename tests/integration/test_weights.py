"""Per-row weights on real tables and Trainers: ``weight_column``, ``balance_column``,
``samples_per_epoch`` and ``weight_replacement`` (the ``weighted`` shuffle)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from lance_lightning import LanceDataModule
from lance_lightning.state import ResumeRefusedError
from lance_lightning.weights import WeightError
from tests.conftest import toy_table
from tests.helpers import Preempted, Recorder, SaveThenStop, quiet_trainer

ROWS = 100
P = 1e-3


def weighted_table(num_rows: int = ROWS, **columns: np.ndarray | list) -> pa.Table:
    """``toy_table`` plus ``w`` = id % 4 (a quarter of the rows weigh 0) and ``columns``."""
    table = toy_table(num_rows).append_column("w", pa.array(np.arange(num_rows) % 4, pa.float64()))
    for name, values in columns.items():
        table = table.append_column(name, pa.array(values))
    return table


def datamodule(uri: str, tmp_path: Path, **kwargs) -> LanceDataModule:
    settings = {"splits": {"train": 1.0}, "batch_size": 8, "seed": 5, "columns": ["id", "x", "y"]}
    settings.update(kwargs)
    if settings.get("staging") != "off":
        settings.setdefault("cache", str(tmp_path / "stages"))
    return LanceDataModule(uri, "toy", **settings)


def trainer(tmp_path: Path, **kwargs):
    return quiet_trainer(tmp_path, limit_val_batches=0, **{"max_epochs": 2, **kwargs})


def epochs(seen: list[list[int]], batches_an_epoch: int) -> list[list[int]]:
    """The ids read, epoch by epoch."""
    cuts = range(0, len(seen), batches_an_epoch)
    return [[i for batch in seen[e : e + batches_an_epoch] for i in batch] for e in cuts]


def test_fit_reads_each_row_of_weight_above_zero_once_an_epoch_in_one_order_however_read(make_table, tmp_path):
    uri, _ = make_table("toy", weighted_table())
    positive = sorted(i for i in range(ROWS) if i % 4)  # 75 rows: 10 batches of 8 (the last of 3)
    runs = {}
    for workers in (0, 2):
        for staging in ("auto", "off"):
            recorder = Recorder()
            dm = datamodule(uri, tmp_path, weight_column="w", num_workers=workers, staging=staging)
            trainer(tmp_path).fit(recorder, datamodule=dm)
            assert dm.options.shuffle == "weighted" and len(dm.samplers["train"]) == 10
            assert (dm.samplers["train"].num_rows, dm.samplers["train"].split_rows) == (75, 100)
            runs[(workers, staging)] = recorder.seen
    reference = runs[(0, "auto")]
    for key, seen in runs.items():
        assert seen == reference, f"workers, staging = {key} read another order"
    first, second = epochs(reference, 10)
    assert sorted(first) == sorted(second) == positive  # each once, weight 0 never
    assert first != second


def test_the_order_follows_the_weights_through_the_loader(make_table, tmp_path):
    # the first row of each epoch: id with probability w / sum(w) (a chi-square test over 600 epochs)
    weights = np.r_[np.zeros(4), [1.0, 2.0, 4.0, 8.0]]
    uri, _ = make_table("toy", weighted_table(8, v=weights))
    dm = datamodule(uri, tmp_path, weight_column="v", batch_size=4, staging="off")
    dm.setup("fit")
    loader = dm.train_dataloader()
    sampler = dm.samplers["train"]
    firsts = np.zeros(8, dtype=np.int64)
    for epoch in range(600):
        sampler.set_epoch(epoch)
        first_batch = next(iter(loader))["id"].tolist()
        firsts[first_batch[0]] += 1
    assert firsts[:4].sum() == 0
    expected = weights[4:] / weights.sum() * 600
    assert stats.chisquare(firsts[4:], expected).pvalue > P


def test_balance_column_draws_every_label_as_often(make_table, tmp_path):
    labels = np.where(np.arange(ROWS) < 80, "common", np.where(np.arange(ROWS) < 95, "rare", "rarest"))
    uri, _ = make_table("toy", weighted_table(label=labels.tolist()))
    dm = datamodule(
        uri,
        tmp_path,
        balance_column="label",
        samples_per_epoch=300,
        weight_replacement=True,
        columns=["id", "label"],
        batch_size=50,
    )
    dm.setup("fit")
    assert len(dm.samplers["train"]) == 6
    counts = {"common": 0, "rare": 0, "rarest": 0}
    for epoch in range(4):
        dm.samplers["train"].set_epoch(epoch)
        for batch in dm.train_dataloader():
            for label in batch["label"]:
                counts[label] += 1
    assert sum(counts.values()) == 1200
    for n in counts.values():  # each label a third of the draws (5 rows of 'rarest' drawn 400 times)
        assert stats.binomtest(n, 1200, 1 / 3).pvalue > P


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([1.0, float("nan"), 2.0, float("nan")] * 25, r"'w' of table 'toy' has 50 NaN weight\(s\) .* row address 1 "),
        ([1.0, -1.0, 2.0, 3.0] * 25, r"'w' of table 'toy' has 25 negative weight\(s\) .* row address 1 .* -1\.0"),
        ([1.0, float("inf"), 2.0, 3.0] * 25, r"has 25 infinite weight\(s\) in the train split \(of 100 rows\)"),
        ([None, 1.0, 2.0, 3.0] * 25, r"'w' of table 'toy' has 25 null weight\(s\) .* row address 0 "),
        ([0.0] * 100, r"'w' of table 'toy': all 100 weights of the train split are 0"),
    ],
    ids=["nan", "negative", "inf", "null", "all-zero"],
)
def test_bad_weights_are_refused_at_setup_naming_the_column_count_and_a_row(make_table, tmp_path, values, message):
    uri, _ = make_table("toy", toy_table(ROWS).append_column("w", pa.array(values, pa.float64())))
    dm = datamodule(uri, tmp_path, weight_column="w")
    with pytest.raises(WeightError, match=message):
        dm.setup("fit")


def test_a_weight_column_that_is_missing_or_not_numeric_is_refused(make_table, tmp_path):
    uri, _ = make_table("toy", weighted_table())
    with pytest.raises(WeightError, match=r"column 'weight' is not in table 'toy'; its columns are id, x, y, name, w"):
        datamodule(uri, tmp_path, weight_column="weight").setup("fit")
    with pytest.raises(WeightError, match=r"weight_column 'name' of table 'toy' is of type string"):
        datamodule(uri, tmp_path, weight_column="name").setup("fit")


def test_a_balance_column_that_holds_no_labels_is_refused_naming_it(make_table, tmp_path):
    uri, _ = make_table("toy", weighted_table())
    with pytest.raises(
        WeightError, match=r"balance_column 'x' of table 'toy' is of type fixed_size_list.*one label a row"
    ):
        datamodule(uri, tmp_path, balance_column="x").setup("fit")


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize(
    "weights",
    [{"weight_column": "w"}, {"weight_column": "w", "samples_per_epoch": 60, "weight_replacement": True}],
    ids=["permutation", "replacement"],
)
def test_resume_mid_epoch_reads_what_an_uninterrupted_run_reads(make_table, tmp_path, num_workers, weights):
    uri, _ = make_table("toy", weighted_table())
    reference = Recorder()
    trainer(tmp_path).fit(reference, datamodule=datamodule(uri, tmp_path, **weights))
    settings = {"num_workers": num_workers, **weights}
    first = Recorder()
    ckpt = tmp_path / "mid.ckpt"
    with pytest.raises(Preempted):
        trainer(tmp_path, callbacks=[SaveThenStop(4, ckpt)]).fit(
            first, datamodule=datamodule(uri, tmp_path, **settings)
        )
    second = Recorder()
    trainer(tmp_path).fit(second, datamodule=datamodule(uri, tmp_path, **settings), ckpt_path=ckpt)
    assert first.seen + second.seen == reference.seen


@pytest.mark.parametrize(
    ("first", "second", "named"),
    [
        ({"weight_column": "w"}, {"weight_column": "id"}, r"weight_column: the checkpoint's 'w', now 'id'"),
        ({"weight_column": "w"}, {}, r"shuffle: the checkpoint's 'weighted', now 'uniform'.*weight_column: the "),
        (
            {"weight_column": "w", "samples_per_epoch": 40},
            {"weight_column": "w", "samples_per_epoch": 50, "weight_replacement": True},
            r"samples_per_epoch: the checkpoint's 40, now 50 .*weight_replacement: the checkpoint's False, now True",
        ),
    ],
    ids=["column", "weights-dropped", "samples-and-replacement"],
)
def test_resume_with_changed_weight_settings_is_refused_naming_each(make_table, tmp_path, first, second, named):
    uri, _ = make_table("toy", weighted_table())
    ckpt = tmp_path / "mid.ckpt"
    with pytest.raises(Preempted):
        trainer(tmp_path, callbacks=[SaveThenStop(2, ckpt)]).fit(
            Recorder(), datamodule=datamodule(uri, tmp_path, **first)
        )
    with pytest.raises(ResumeRefusedError, match=named):
        trainer(tmp_path).fit(Recorder(), datamodule=datamodule(uri, tmp_path, **second), ckpt_path=ckpt)


def test_a_weighted_epoch_that_drop_last_would_empty_is_refused(make_table, tmp_path):
    from lance_lightning.splits import SplitSpecError

    uri, _ = make_table("toy", weighted_table())
    dm = datamodule(uri, tmp_path, weight_column="w", samples_per_epoch=5, drop_last=True)
    with pytest.raises(SplitSpecError, match=r"draws 5 rows \(samples_per_epoch=5; 75 rows of weight > 0\)"):
        dm.setup("fit")


class ReweighAfterEpoch(pl.Callback):
    """At the end of epoch 0, writes new weights into the table (a new version): rows 0-49 keep
    their weight, rows 50-99 weigh 0, as a curriculum callback that writes last epoch's losses would."""

    def __init__(self, table) -> None:
        self.table = table

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            self.table.update(where="id >= 50", values={"w": 0.0})


HASH = {"kind": "hash", "columns": ["id"], "weights": {"train": 1}}


@pytest.mark.parametrize("table_updates", ["pin", "next_epoch"])
def test_weights_written_between_epochs_steer_the_next_epoch_only_when_followed(make_table, tmp_path, table_updates):
    """The curriculum loop: weights re-read at the epoch boundary at the new version with
    ``table_updates="next_epoch"`` (never mid-epoch), the pinned ones kept with ``"pin"``."""
    rows = weighted_table()
    uri, table = make_table("toy", rows.set_column(rows.schema.get_field_index("w"), "w", pa.array(np.ones(ROWS))))
    recorder = Recorder()
    dm = datamodule(uri, tmp_path, splits=HASH, weight_column="w", table_updates=table_updates)
    run = trainer(tmp_path, callbacks=[ReweighAfterEpoch(table)], reload_dataloaders_every_n_epochs=1)
    run.fit(recorder, datamodule=dm)
    first = [i for batch in recorder.seen[:13] for i in batch]
    later = [i for batch in recorder.seen[13:] for i in batch]
    assert sorted(first) == list(range(ROWS))  # epoch 0: the weights it started with, every row once
    assert sorted(later) == (list(range(50)) if table_updates == "next_epoch" else list(range(ROWS)))
