"""The pure validators of lance_lightning/options.py and the frozen DataOptions they fill."""

from __future__ import annotations

import dataclasses
import math
import pathlib
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lance_lightning.options import (
    FORK_REFUSED,
    DataOptions,
    SettingError,
    SettingTypeError,
    as_bool,
    as_choice,
    as_int,
    as_mapping,
    as_names,
    as_optional_int,
    as_path,
    as_rows,
    as_seed,
    as_str,
    shown,
)

VALID = dict(
    batch_size=32,
    eval_batch_size=None,
    seed=0,
    num_workers=0,
    shuffle="uniform",
    drop_last=False,
    nulls="raise",
    version=None,
    multiprocessing_context=None,
    persistent_workers=True,
    pin_memory=False,
    prefetch_factor=None,
    read_ahead=2,
    read_group_rows=None,
    block_size=4096,
    window_blocks=8,
    resume="exact",
    table_updates="pin",
    in_memory=False,
    memory_budget_bytes=2**30,
    cache=None,
    cache_max_bytes=None,
    columns=None,
    filter=None,
    stage_splits=None,
)


def test_errors_are_value_errors_and_type_errors_are_type_errors():
    assert issubclass(SettingError, ValueError)
    assert issubclass(SettingTypeError, SettingError) and issubclass(SettingTypeError, TypeError)


# -- integers -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [7, np.int64(7), np.uint8(7), np.int32(7), np.uint64(7)])
def test_integers_of_any_integer_type(value):
    out = as_int("batch_size", value, minimum=1)
    assert out == 7 and type(out) is int


@pytest.mark.parametrize("value", [True, False, np.True_, 7.0, np.float64(7), "7", None, [7], 7 + 0j])
def test_not_integers(value):
    with pytest.raises(SettingTypeError, match=r"^batch_size must be an integer >= 1, got "):
        as_int("batch_size", value, minimum=1)


def test_integer_bounds():
    with pytest.raises(SettingError, match=r"^num_workers must be an integer >= 0, got -1$"):
        as_int("num_workers", -1, minimum=0)
    assert as_int("block_size", 2**63 - 1, minimum=1) == 2**63 - 1
    with pytest.raises(SettingError, match=r"^block_size must be an integer >= 1 and < 2\*\*63, got 92233720368547758"):
        as_int("block_size", 2**63, minimum=1)
    assert as_optional_int("prefetch_factor", None, minimum=1) is None
    with pytest.raises(SettingError, match="prefetch_factor must be an integer >= 1, got 0"):
        as_optional_int("prefetch_factor", 0, minimum=1)


def test_seed_takes_every_u64():
    assert as_seed("seed", 0) == 0 and as_seed("seed", 2**64 - 1) == 2**64 - 1
    assert as_seed("seed", np.uint64(2**64 - 1)) == 2**64 - 1
    with pytest.raises(SettingError, match=r"seed must be an integer >= 0 and < 2\*\*64 .*, got 18446744073709551616"):
        as_seed("seed", 2**64)
    with pytest.raises(SettingError, match=r"seed must be an integer >= 0, got -1"):
        as_seed("seed", -1)


@given(st.integers())
def test_as_int_is_the_identity_on_its_range(value):
    try:
        out = as_int("n", value, minimum=0)
    except SettingError as err:
        assert not 0 <= value < 2**63 and str(err).startswith("n must be an integer >= 0")
    else:
        assert out == value and 0 <= value < 2**63


# -- bools, paths, strings, choices -------------------------------------------------------------


def test_bools():
    assert as_bool("pin_memory", True) is True and as_bool("pin_memory", np.False_) is False
    for value in ("false", "True", 0, 1, None, [], 1.0):
        with pytest.raises(SettingTypeError, match=r"^pin_memory must be True or False, got "):
            as_bool("pin_memory", value)
    with pytest.raises(SettingTypeError, match=r"a string is not read as a bool"):
        as_bool("in_memory", "false")


def test_paths(tmp_path):
    assert as_path("cache", None) is None
    assert as_path("cache", "c") == "c" and as_path("cache", tmp_path) == str(tmp_path)
    assert as_path("cache", pathlib.PurePosixPath("a/b")) == "a/b"
    for value in (False, True, 0, b"/tmp", ["/tmp"], pathlib.Path):
        with pytest.raises(SettingTypeError, match=r"^cache must be a directory path \(a non-empty str or "):
            as_path("cache", value)
    for value in ("", "  ", "a\0b"):
        with pytest.raises(SettingError, match=r"^cache must be a directory path"):
            as_path("cache", value)
    with pytest.raises(SettingTypeError, match=r"^`uri` must be the database \(a non-empty str or os.PathLike\), "):
        as_path("`uri`", None, what="the database", optional=False)


def test_strings_and_choices():
    assert as_str("filter", "id > 3", what="an SQL predicate") == "id > 3"
    assert as_str("filter", None, what="an SQL predicate") is None
    with pytest.raises(SettingError, match=r"^filter must be an SQL predicate \(a non-empty str\) or None, got ''"):
        as_str("filter", "", what="an SQL predicate")
    with pytest.raises(SettingTypeError, match=r"got 3$"):
        as_str("filter", 3, what="an SQL predicate")
    assert as_choice("resume", "fresh", ("exact", "fresh")) == "fresh"
    assert as_choice("multiprocessing_context", None, ("spawn",), optional=True) is None
    with pytest.raises(SettingError, match=r"^resume must be one of 'exact', 'fresh', got 'Fresh' \(str\)$"):
        as_choice("resume", "Fresh", ("exact", "fresh"))
    with pytest.raises(SettingTypeError, match=r"got \['exact'\] \(list\)$"):
        as_choice("resume", ["exact"], ("exact", "fresh"))
    with pytest.raises(SettingTypeError, match=r"got array\(\[1, 2\]\) \(ndarray\)$"):
        as_choice("resume", np.array([1, 2]), ("exact", "fresh"))


def test_names():
    assert as_names("columns", None) is None
    assert as_names("columns", ["id", "x"]) == ("id", "x") and as_names("columns", ("id",)) == ("id",)
    assert as_names("columns", (c for c in "ab")) == ("a", "b")
    with pytest.raises(SettingTypeError, match=r"got the string 'id': pass a list: columns=\['id'\]$"):
        as_names("columns", "id")
    for value in (5, b"id", {"id": 1}, 3.5):
        with pytest.raises(SettingTypeError, match=r"^columns must be a list of column names \(str\) or None"):
            as_names("columns", value)
    with pytest.raises(SettingTypeError, match=r"not names: 5, ''"):
        as_names("columns", ["id", 5, ""])


def test_mappings():
    assert as_mapping("storage_options", None, what="x") is None
    assert as_mapping("storage_options", {"a": "b"}, what="x") == {"a": "b"}
    with pytest.raises(SettingTypeError, match=r"^stage_splits must be a mapping of .*, got \['val'\] \(list\)"):
        as_mapping("stage_splits", ["val"], what="stage to split", values=str)
    with pytest.raises(SettingTypeError, match=r"not valid: 'val': 3$"):
        as_mapping("stage_splits", {"val": 3}, what="stage to split", values=str)


def test_shown_cuts_long_values():
    assert shown(3) == "3" and shown("a") == "'a' (str)" and shown(None) == "None"
    assert len(shown("x" * 1000)) < 100 and shown(math.nan) == "nan"


# -- DataOptions ------------------------------------------------------------------------------


def test_options_normalize_and_freeze(tmp_path):
    options = DataOptions(
        **{
            **VALID,
            "batch_size": np.int64(8),
            "seed": np.uint64(3),
            "cache": tmp_path,
            "columns": ["id"],
            "stage_splits": {"val": "holdout"},
        }
    )
    assert type(options.batch_size) is int and type(options.seed) is int
    assert options.cache == str(tmp_path) and options.columns == ("id",) and options.stage_splits == {"val": "holdout"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.batch_size = 4  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(options)) == options and hash(options) == hash(pickle.loads(pickle.dumps(options)))
    assert DataOptions(**VALID).stage_splits == {}


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("multiprocessing_context", "fork", r"^multiprocessing_context='fork' is refused: lancedb's native runtime"),
        ("multiprocessing_context", "thread", "multiprocessing_context must be one of 'forkserver', 'spawn' or None"),
        ("shuffle", "random", "shuffle must be one of 'none', 'uniform', 'block', 'weighted', got 'random'"),
        ("stage_splits", {"valid": "val"}, r"stage_splits names unknown stage\(s\) \['valid'\]"),
        ("stage_splits", "val", r"stage_splits must be a mapping"),
        ("version", 0, "version must be an integer >= 1, got 0"),
        ("version", 2**64, r"version must be an integer >= 1 and < 2\*\*64"),
        ("eval_batch_size", np.float32(4), "eval_batch_size must be an integer >= 1"),
    ],
)
def test_options_refuse(setting, value, message):
    with pytest.raises(SettingError, match=message):
        DataOptions(**{**VALID, setting: value})


def test_fork_is_refused_with_the_reason():
    with pytest.raises(SettingError) as info:
        DataOptions(**{**VALID, "multiprocessing_context": "fork"})
    assert str(info.value) == FORK_REFUSED


def test_row_counts_and_the_shuffle_window_stay_inside_int64():
    assert as_rows("batch_size", np.int64(2**48 - 1)) == 2**48 - 1
    assert as_rows("eval_batch_size", None, optional=True) is None
    with pytest.raises(SettingError, match=r"^batch_size must be an integer >= 1 and < 2\*\*48 \(rows\), got "):
        as_rows("batch_size", 2**48)
    with pytest.raises(SettingError, match=r"must be < 2\*\*48, got 4096 × 2251799813685248 = "):
        DataOptions(**{**VALID, "window_blocks": 2**51})
    assert DataOptions(**{**VALID, "block_size": 2**24, "window_blocks": 2**23}).window_blocks == 2**23


def test_secret_mappings_name_types_not_values():
    with pytest.raises(SettingTypeError, match=r"not valid: 'token': a value of type int$") as info:
        as_mapping("storage_options", {"token": 98765}, what="x", values=str, secret=True)
    assert "98765" not in str(info.value)
    with pytest.raises(SettingTypeError, match=r"or None, got a value of type list$"):
        as_mapping("storage_options", ["secret-value"], what="x", secret=True)


def test_the_datamodule_signature_is_the_options_record():
    """LanceDataModule's arguments are DataOptions' fields: same names, order and defaults, so the
    Hydra schema (generated from DataOptions) and the constructor cannot drift apart."""
    import dataclasses
    import inspect

    from lance_lightning.datamodule import LanceDataModule

    params = [p for name, p in inspect.signature(LanceDataModule.__init__).parameters.items() if name != "self"]
    fields = dataclasses.fields(DataOptions)
    assert [p.name for p in params] == [f.name for f in fields]
    for param, field in zip(params, fields):
        assert param.default == field.default, param.name


def test_the_hydra_data_schema_has_every_setting_with_its_default():
    from lance_lightning.app.config import _data_schema

    schema = _data_schema()
    node = schema.node()
    for field in dataclasses.fields(DataOptions):
        assert field.name in schema.keys
    assert node.batch_size == 32 and node.shuffle == "uniform" and node.block_size == DataOptions().block_size
    assert set(schema.choices["shuffle"]) == {"uniform", "block", "none", "weighted"}
    assert node.weight_column is None and node.samples_per_epoch is None and node.weight_replacement is False
    assert schema.choices["resume"] == ("exact", "fresh")


@pytest.mark.parametrize("setting", [{"in_memory": True}, {"cache": "/tmp/stages"}])
def test_stage_settings_with_staging_off_are_refused_not_ignored(setting):
    with pytest.raises(SettingError, match=r"staging='off' reads the table, but (in_memory=True|cache='/tmp/stages')"):
        DataOptions(staging="off", **setting)
    assert DataOptions(staging="always", **setting).staging == "always"


def test_the_checkpoint_identity_holds_plain_values():
    """What a checkpoint records must load with torch.load(weights_only=True): plain ints and strs,
    never a NumPy integer or a tuple, whatever type the settings were given in."""
    import json

    options = DataOptions(
        table="t", seed=np.uint64(2**63), shuffle="block", block_size=np.int64(8), window_blocks=np.int32(3)
    )
    identity = options.identity(version=np.int64(4).item())
    assert json.loads(json.dumps(identity)) == identity
    assert identity["seed"] == 2**63 and type(identity["block_size"]) is int and identity["window_blocks"] == 3
