"""Settings that used to change behaviour silently: each is refused with the setting named.

One test per finding of issue 12 item 7, on a real table (and a real Trainer for the cases
that used to train 0 steps). Each of them failed before ``lance_lightning/options.py``.
"""

from __future__ import annotations

import math
import os
import pathlib

import lightning.pytorch as pl
import numpy as np
import pytest

from lance_lightning import LanceDataModule, LanceSourceError, SplitSpecError
from tests.helpers import Recorder


def fit(dm: LanceDataModule, tmp_path) -> Recorder:
    model = Recorder()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    return model


# -- fits that used to train 0 steps -----------------------------------------------------------


def test_fit_without_a_train_split_names_the_stage_and_the_splits(make_table, tmp_path):
    uri, _ = make_table("toy", 40)
    dm = LanceDataModule(uri, "toy", splits={"trian": 0.8, "val": 0.2}, batch_size=8)
    message = (
        r"the fit stage reads split 'train', which is not among the splits \['trian', 'val'\] of table 'toy'.*"
        r"stage_splits=\{'train': "
    )
    with pytest.raises(SplitSpecError, match=message):
        fit(dm, tmp_path)
    # the message says which names the train stage accepts and how to map another one
    with pytest.raises(SplitSpecError, match=r"The train stage reads a split named 'train'"):
        dm.setup("fit")
    # mapped with stage_splits, the same splits train
    mapped = LanceDataModule(
        uri, "toy", splits={"trian": 0.8, "val": 0.2}, batch_size=8, stage_splits={"train": "trian"}
    )
    assert len(fit(mapped, tmp_path).seen) == 4


def test_other_stages_without_their_split_still_get_no_dataloader(make_table):
    uri, _ = make_table("toy", 40)
    dm = LanceDataModule(uri, "toy", splits={"train": 0.8, "holdout": 0.2}, batch_size=8)
    dm.setup("fit")  # no "val" split: no validation, as before
    assert dm.val_dataloader() == [] and dm.test_dataloader() == []
    evaluation = LanceDataModule(uri, "toy", splits={"trian": 0.8, "val": 0.2}, batch_size=8)
    evaluation.setup("validate")  # only fit needs a train split
    assert len(list(evaluation.val_dataloader())) == 1


def test_drop_last_that_would_drop_every_row_is_refused(make_table, tmp_path):
    uri, _ = make_table("toy", 40)
    dm = LanceDataModule(uri, "toy", splits={"train": 0.5, "val": 0.5}, batch_size=32, drop_last=True)
    message = (
        r"the train split 'train' has 20 rows, fewer than batch_size 32 × 1 rank\(s\) = 32: "
        r"drop_last=True would drop every row"
    )
    with pytest.raises(SplitSpecError, match=message):
        fit(dm, tmp_path)


def test_drop_last_counts_the_ranks(make_table):
    uri, _ = make_table("toy", 40)
    dm = LanceDataModule(uri, "toy", splits={"train": 0.75, "val": 0.25}, batch_size=16, drop_last=True)
    # A real 2-process DDP Trainer, not launched: it reports world size 2 to the datamodule.
    dm.trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    with pytest.raises(SplitSpecError, match=r"30 rows, fewer than batch_size 16 × 2 rank\(s\) = 32"):
        dm.setup("fit")


# -- booleans and paths, by type --------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("cache", False, r"cache must be a directory path \(a non-empty str or os.PathLike\) or None, got False"),
        ("cache", "", r"cache must be a directory path \(a non-empty str or os.PathLike\) or None, got ''"),
        ("in_memory", "false", r"in_memory must be True or False, got 'false' \(str\)"),
        ("drop_last", "false", r"drop_last must be True or False, got 'false' \(str\)"),
        ("persistent_workers", "no", r"persistent_workers must be True or False, got 'no' \(str\)"),
        ("pin_memory", 1, r"pin_memory must be True or False, got 1"),
        ("num_workers", True, r"num_workers must be an integer >= 0, got True \(bool\)"),
    ],
)
def test_booleans_and_paths_are_checked_by_type(setting, value, message):
    with pytest.raises(ValueError, match=message):
        LanceDataModule("/unused", "toy", **{setting: value})


def test_cache_false_writes_nothing(make_table, tmp_path, monkeypatch):
    uri, _ = make_table("toy", 20)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="cache must be"):
        LanceDataModule(uri, "toy", cache=False).setup()
    assert not os.path.exists(tmp_path / "False")


def test_cache_takes_a_pathlike(make_table, tmp_path):
    uri, _ = make_table("toy", 20)
    dm = LanceDataModule(uri, "toy", cache=pathlib.Path(tmp_path / "cache"), splits={"train": 1.0}, batch_size=4)
    dm.setup("fit")
    assert dm.options.cache == str(tmp_path / "cache") and os.listdir(tmp_path / "cache")


# -- integers through operator.index ------------------------------------------------------------

INTEGER_SETTINGS = {
    "batch_size": 8,
    "eval_batch_size": 4,
    "seed": 3,
    "num_workers": 1,
    "block_size": 4,
    "window_blocks": 2,
    "memory_budget_bytes": 10**6,
    "cache_max_bytes": 10**6,
    "prefetch_factor": 2,
    "read_ahead": 3,
    "read_group_rows": 64,
    "version": 1,
}


@pytest.mark.parametrize("setting", sorted(INTEGER_SETTINGS))
def test_numpy_integers_are_integers(setting):
    value = np.int64(INTEGER_SETTINGS[setting])
    dm = LanceDataModule("/unused", "toy", **{setting: value})
    stored = dm.table_version if setting == "version" else getattr(dm.options, setting)
    assert stored == value and type(stored) is int


def test_numpy_batch_size_and_seed_train(make_table, tmp_path):
    uri, _ = make_table("toy", 40)
    dm = LanceDataModule(uri, "toy", splits={"train": 0.8, "val": 0.2}, batch_size=np.int64(8), seed=np.uint64(7))
    assert len(fit(dm, tmp_path).seen) == 4
    assert dm.hparams["data_batch_size"] == 8 and type(dm.hparams["data_batch_size"]) is int


@pytest.mark.parametrize(("setting", "value"), [("prefetch_factor", True), ("version", True), ("version", 1.0)])
def test_bools_and_floats_are_not_integers(setting, value):
    with pytest.raises(ValueError, match=rf"{setting} must be an integer >= 1, got {value}"):
        LanceDataModule("/unused", "toy", **{setting: value})


# -- one finding each -----------------------------------------------------------------------------


def test_columns_as_one_string_is_refused():
    with pytest.raises(ValueError, match=r"columns must be a list of column names.*pass a list: columns=\['id'\]"):
        LanceDataModule("/unused", "toy", columns="id")


def test_version_as_a_string_is_refused():
    with pytest.raises(ValueError, match=r"version must be an integer >= 1, got '1' \(str\)"):
        LanceDataModule("/unused", "toy", version="1")


def test_uri_that_is_a_file_says_so(make_table, tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("id\n1\n")
    with pytest.raises(LanceSourceError, match=r"data.csv' is a file, not a LanceDB database directory"):
        LanceDataModule(str(path), "toy").setup()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_fraction_that_is_not_finite_names_the_split(bad):
    message = rf"split fractions must be numbers >= 0; got val={bad} \(NaN and infinities are not fractions\)"
    with pytest.raises(SplitSpecError, match=message):
        LanceDataModule("/unused", "toy", splits={"train": 0.5, "val": bad})


def test_seed_beyond_64_bits_is_refused():
    message = r"seed must be an integer >= 0 and < 2\*\*64 \(what lancedb.s split seed takes\), got 1844674407370955161"
    with pytest.raises(ValueError, match=message):
        LanceDataModule("/unused", "toy", seed=2**64)


def test_largest_seed_trains(make_table, tmp_path):
    uri, _ = make_table("toy", 40)
    dm = LanceDataModule(uri, "toy", splits={"train": 0.8, "val": 0.2}, batch_size=8, seed=2**64 - 1)
    dm.setup("fit")
    assert sum(len(b["id"]) for b in dm.train_dataloader()) == 32


@pytest.mark.parametrize("table", [5, ["toy"], b"toy"])
def test_table_of_another_type_says_what_it_must_be(table):
    with pytest.raises(ValueError, match=r"`table` must be a table name \(a non-empty str\) or an open lancedb Table"):
        LanceDataModule(table=table)


# -- found by tests/integration/test_options_fuzz.py ---------------------------------------------


def test_a_block_window_past_int64_is_refused():
    # 4096 × 2**51 rows a window overflowed NumPy's int64 at the first batch (OverflowError)
    with pytest.raises(ValueError, match=r"block_size × window_blocks \(the rows of one shuffle window\) must be"):
        LanceDataModule("/unused", "toy", shuffle="block", window_blocks=2**51)
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1 and < 2\*\*48 \(rows\)"):
        LanceDataModule("/unused", "toy", batch_size=2**62)


@pytest.mark.parametrize("interval", [-1, math.nan, math.inf, 1e300, "soon"])
def test_read_consistency_interval_is_checked(make_table, interval):
    # -1 panicked in lancedb's runtime (RustPanic), 1e300 and inf raised OverflowError
    uri, _ = make_table("toy", 20)
    dm = LanceDataModule(uri, "toy", connect_kwargs={"read_consistency_interval": interval})
    with pytest.raises(LanceSourceError, match=r"read_consistency_interval must be seconds >= 0"):
        dm.setup()


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        # discard_weight 2**64 raised OverflowError in lancedb; weights past 2**64 in all wrapped
        # around there and silently put every row in one split
        (
            {"kind": "hash", "columns": ["id"], "weights": {"train": 3, "val": 1}, "discard_weight": 2**64},
            r"add up to 18446744073709551620; they must add up to less than 2\*\*63",
        ),
        (
            {"kind": "hash", "columns": ["id"], "weights": {"train": 2**63 - 1, "val": 2**63 - 1, "test": 2**63 - 1}},
            r"they must add up to less than 2\*\*63",
        ),
        (
            {"kind": "hash", "columns": ["id"], "weights": {"train": 3, "val": 1}, "discard_weight": True},
            r"discard_weight must be an integer >= 0, got True",
        ),
    ],
)
def test_hash_weights_are_bounded(splits, message):
    with pytest.raises(SplitSpecError, match=message):
        LanceDataModule("/unused", "toy", splits=splits)


def test_numpy_split_counts_are_counts(make_table):
    uri, _ = make_table("toy", 40)
    dm = LanceDataModule(uri, "toy", splits={"train": np.int64(30), "val": np.int64(10)})  # were read as fractions
    dm.setup()
    assert {name: len(rows) for name, rows in dm.splits.items()} == {"train": 30, "val": 10}


def test_storage_option_values_must_be_strings_and_are_not_quoted():
    with pytest.raises(
        ValueError,
        match=r"storage_options must be a mapping of option name to value \(str\); "
        r"not valid: 'aws_secret_access_key': a value of type int$",
    ):
        LanceDataModule("/unused", "toy", storage_options={"aws_secret_access_key": 123456789})
