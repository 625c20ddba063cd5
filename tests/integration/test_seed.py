"""``seed=None`` (the default) follows ``seed_everything`` (``PL_GLOBAL_SEED``), else 0.

Also the other first-contact traps of issue 30: an open Table passed positionally, fractions that
add up to less than 1, and the line announcing workers that take seconds to start.
"""

from __future__ import annotations

import logging

import lancedb
import lightning.pytorch as pl
import pytest
import torch

from lance_lightning import LanceDataModule
from lance_lightning.seeding import DEFAULT_SEED
from tests.helpers import Recorder, quiet_trainer

SPLITS = {"train": 0.8, "val": 0.2}


def order(uri: str, **settings) -> tuple[list[int], LanceDataModule]:
    """The ids of the first epoch's train batches, read through ``train_dataloader()``."""
    dm = LanceDataModule(uri, "toy", splits=SPLITS, batch_size=10, **settings)
    dm.setup("fit")
    return [i for batch in dm.train_dataloader() for i in batch["id"].tolist()], dm


def test_seed_everything_sets_the_data_order(make_table):
    uri, _ = make_table("toy", 100)
    pl.seed_everything(1)
    one, dm1 = order(uri)
    pl.seed_everything(2)
    two, dm2 = order(uri)
    assert one != two and sorted(one) != sorted(two)  # the order and the random split follow the seed
    assert (dm1.options.seed, dm2.options.seed) == (1, 2)
    assert one == order(uri, seed=1)[0] and two == order(uri, seed=2)[0]  # the same as an explicit seed
    assert dm2.hparams["data_seed"] == 2 and dm2.hparams["data_seed_from"] == "seed_everything"
    assert dm2._identity()["seed"] == 2  # the seed the checkpoint's data state holds


def test_without_seed_everything_the_seed_is_the_documented_default(make_table):
    uri, _ = make_table("toy", 100)
    default, dm = order(uri)
    assert DEFAULT_SEED == 0 and dm.options.seed == 0 and dm.hparams["data_seed_from"] == "default"
    assert default == order(uri, seed=0)[0]
    pl.seed_everything(5)
    assert order(uri, seed=0)[0] == default  # an explicit seed ignores seed_everything


def test_the_seed_is_in_the_checkpoint_and_a_resume_under_another_seed_is_refused(make_table, tmp_path):
    uri, _ = make_table("toy", 60)
    pl.seed_everything(4)
    dm = LanceDataModule(uri, "toy", splits=SPLITS, batch_size=8)
    trainer = quiet_trainer(tmp_path, max_epochs=1, enable_checkpointing=True)
    trainer.fit(Recorder(), datamodule=dm)
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)
    assert ckpt["LanceDataModule"]["identity"]["seed"] == 4 and ckpt["datamodule_hyper_parameters"]["data_seed"] == 4
    pl.seed_everything(9)
    again = LanceDataModule(uri, "toy", splits=SPLITS, batch_size=8)
    with pytest.raises(ValueError, match=r"seed: the checkpoint's 4, now 9"):
        best = trainer.checkpoint_callback.best_model_path
        quiet_trainer(tmp_path, max_epochs=2).fit(Recorder(), datamodule=again, ckpt_path=best)


def test_a_null_global_seed_in_a_config_is_the_default(make_table):
    """``seed: ${seed}`` with the usual ``seed: null``: no longer 'seed must be an integer'."""
    uri, _ = make_table("toy", 40)
    assert LanceDataModule(uri, "toy", seed=None).options.seed is None  # resolved at setup


def test_an_open_table_passed_positionally_is_the_table(make_table):
    uri, _ = make_table("toy", 40)
    table = lancedb.connect(uri).open_table("toy")
    dm = LanceDataModule(table, splits=SPLITS)
    dm.setup("fit")
    assert dm.source.name == "toy" and len(dm.split_rows("train")) == 32


def test_fractions_below_one_warn_naming_the_unused_share():
    with pytest.warns(UserWarning, match=r"add up to 0.7: 0.3 of the filtered table \(30% of its rows\)"):
        LanceDataModule("/unused", "toy", splits={"train": 0.5, "val": 0.2})


def test_table_reading_workers_are_announced_once(make_table, caplog):
    uri, _ = make_table("toy", 40)
    dm = LanceDataModule(uri, "toy", splits=SPLITS, num_workers=1, staging="off")
    dm.setup("fit")
    with caplog.at_level(logging.INFO):
        dm.train_dataloader()
        dm.train_dataloader()
    lines = [r.getMessage() for r in caplog.records if "DataLoader worker" in r.getMessage()]
    assert len(lines) == 1 and "read table 'toy' themselves (staging='off')" in lines[0], lines


def test_a_slow_split_build_is_announced_while_it_runs(make_table, caplog, monkeypatch):
    monkeypatch.setattr("lance_lightning.notice.SLOW_AFTER_S", 0.0)  # every step counts as slow
    uri, _ = make_table("toy", 40)
    dm = LanceDataModule(uri, "toy", splits=SPLITS, filter="id >= 0")
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
        dm.setup("validate")  # the splits are built once
    lines = [r.getMessage() for r in caplog.records if "building the" in r.getMessage()]
    assert len(lines) == 1 and "random splits of table 'toy' (version 1) where id >= 0" in lines[0], lines


def test_a_quick_split_build_says_nothing(make_table, caplog):
    uri, _ = make_table("toy", 40)
    with caplog.at_level(logging.INFO):
        LanceDataModule(uri, "toy", splits=SPLITS).setup("fit")
    assert not [r for r in caplog.records if "building the" in r.getMessage()]
