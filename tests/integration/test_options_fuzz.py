"""Fuzz: LanceDataModule's arguments given values of every kind, on a real table.

Each example builds a ``LanceDataModule`` from a random mix of valid values and junk (ints,
NumPy ints, bools, floats with NaN and infinities, integers past 2**64, strings, bytes, None,
lists, dicts, paths), runs ``setup()`` for a random stage and reads a first batch. Whatever it
raises must be a ``ValueError`` or ``TypeError`` (the package's own errors subclass
``ValueError``) with a message: never an ``AttributeError``, ``IndexError``, ``OverflowError``,
``KeyError``, a Rust panic (pyo3's ``PanicException``, a ``BaseException``) or a hang (each
example is stopped after ``LL_FUZZ_SECONDS``, default 60).

CI runs 200 examples. A long run by hand::

    LL_FUZZ_EXAMPLES=5000 python -m pytest tests/integration/test_options_fuzz.py -q -p no:cacheprovider

Hypothesis prints the failing arguments (shrunk) with the seed to reproduce them.
"""

from __future__ import annotations

import os
import pathlib
import signal
import string
from collections.abc import Iterator

import lancedb
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from lance_lightning import LanceDataModule
from tests.conftest import toy_table

EXAMPLES = int(os.environ.get("LL_FUZZ_EXAMPLES", "200"))
EXAMPLE_SECONDS = float(os.environ.get("LL_FUZZ_SECONDS", "60"))


class Hang(Exception):
    """An example ran past ``EXAMPLE_SECONDS``."""


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    """One real database with tables ``toy`` (40 rows) and ``other`` (12), a file, a cache root."""
    root = tmp_path_factory.mktemp("fuzz")
    uri = str(root / "db")
    db = lancedb.connect(uri)
    table = db.create_table("toy", toy_table(40))
    table.add(toy_table(5))  # version 2 exists too
    db.create_table("other", toy_table(12))
    (root / "file.csv").write_text("id\n1\n")
    return {"uri": uri, "file": str(root / "file.csv"), "missing": str(root / "missing"), "cache": str(root / "cache")}


# -- strategies ---------------------------------------------------------------------------------

NUMPY_SCALARS = [
    np.int64(3),
    np.uint64(2**64 - 1),
    np.int8(-1),
    np.int32(0),
    np.float32(2.0),
    np.float64(np.nan),
    np.bool_(True),
    np.bool_(False),
]
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63)]),
    st.sampled_from(NUMPY_SCALARS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=string.ascii_letters + string.digits + " _-.", max_size=8),
    st.binary(max_size=4),
    st.lists(st.integers(-3, 3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(-3, 3), max_size=2),
    st.just(pathlib.PurePosixPath("nowhere")),
    st.just(object()),
)


def numpy_int(value: int) -> object:
    """``value`` as the NumPy integer that holds it (a plain int past 64 bits)."""
    for kind in (np.int64, np.uint64):
        if np.iinfo(kind).min <= value <= np.iinfo(kind).max:
            return kind(value)
    return value


def ints(low: int, high: int) -> st.SearchStrategy:
    """Integers in ``[low, high]``, plain or NumPy."""
    plain = st.integers(low, high)
    return st.one_of(plain, plain.map(numpy_int))


SPLIT_NAMES = st.sampled_from(["train", "trian", "val", "validation", "test", "predict", "holdout", ""])
FRACTION = st.one_of(
    st.floats(0, 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-2, 50),
    st.sampled_from([np.int64(20), np.float32(0.5), 10**400, True]),
    st.text(max_size=3),
)
GOOD_SPLITS = st.sampled_from(
    [
        None,
        {"train": 0.8, "val": 0.2},
        {"train": 30, "val": 10},
        {"train": 1.0},
        {"train": 0.5, "val": 0.25},
        {"train": np.int64(30), "val": np.int64(10)},
        {"kind": "random", "fractions": {"train": 0.5}, "seed": 2**64 - 1},
        {"kind": "hash", "columns": ["id"], "weights": {"train": 3, "val": 1}},
        {"kind": "sequential", "counts": {"train": 20, "val": 20}},
        {"kind": "column", "column": "y"},
        {"kind": "sql", "predicates": {"train": "id < 30", "val": "id >= 30"}},
        {"kind": "tables", "tables": {"train": "toy", "val": "other"}},
    ]
)
WILD_SPLITS = st.one_of(
    st.sampled_from([{"trian": 0.5, "val": 0.5}, {"train": 0.99, "val": 0.01}, {"train": 45, "val": 1}]),
    st.dictionaries(SPLIT_NAMES, FRACTION, max_size=3),
    st.fixed_dictionaries(
        {
            "kind": st.sampled_from(["random", "sequential"]),
            "fractions": st.dictionaries(SPLIT_NAMES, FRACTION, max_size=3),
        },
        optional={"seed": st.one_of(ints(-2, 2**65), JUNK)},
    ),
    st.fixed_dictionaries(
        {
            "kind": st.sampled_from(["random", "sequential"]),
            "counts": st.dictionaries(SPLIT_NAMES, st.one_of(ints(-1, 2**64), JUNK), max_size=3),
        }
    ),
    st.fixed_dictionaries(
        {
            "kind": st.just("hash"),
            "columns": st.one_of(st.just(["id"]), JUNK),
            "weights": st.dictionaries(SPLIT_NAMES, st.one_of(ints(-1, 2**64), JUNK), max_size=3),
        },
        optional={"discard_weight": st.one_of(ints(-1, 2**64), JUNK)},
    ),
    st.fixed_dictionaries(
        {"kind": st.sampled_from(["column", "sql", "tables", "shuffle"])},
        optional={"column": JUNK, "predicates": JUNK, "tables": JUNK},
    ),
    JUNK,
)


def setting(valid: st.SearchStrategy, *wild: object) -> tuple[st.SearchStrategy, st.SearchStrategy]:
    """(valid values, wrong ones): the wrong values named (values or strategies), or anything in JUNK."""
    strategies = [w for w in wild if isinstance(w, st.SearchStrategy)]
    values = [w for w in wild if not isinstance(w, st.SearchStrategy)]
    return valid, st.one_of(*([st.sampled_from(values)] if values else []), *strategies, JUNK)


def integer(low: int, high: int, *wild: object) -> tuple[st.SearchStrategy, st.SearchStrategy]:
    return setting(ints(low, high), low - 1, high + 1, float(low), True, str(low), *wild)


def settings_of(places: dict[str, str]) -> dict[str, tuple[st.SearchStrategy, st.SearchStrategy]]:
    """Each argument of LanceDataModule: (valid values, wrong ones)."""
    cache_dirs = st.integers(0, 3).map(lambda i: os.path.join(places["cache"], str(i)))
    return {
        "uri": setting(
            st.sampled_from([places["uri"], pathlib.Path(places["uri"]), "file://" + places["uri"]]),
            places["file"],
            places["missing"],
            "memory://",
            "",
            pathlib.Path(places["file"]),
        ),
        "table": setting(st.sampled_from(["toy", "other"]), "toys", "bad name/..", "", "toy\0"),
        "columns": setting(
            st.one_of(st.none(), st.lists(st.sampled_from(["id", "x", "y"]), min_size=1, max_size=3, unique=True)),
            "id",
            [],
            ["nope"],
            ["id", "id"],
            ["name"],
        ),
        "splits": (GOOD_SPLITS, WILD_SPLITS),
        "filter": setting(
            st.sampled_from([None, "id > 5", "y = 1", "id >= 0"]),
            "id > 1000",
            "id ==== 3",
            "label = 1",
            "",
            "  ",
            "id > 5 y = 1",
            st.text(max_size=12),
        ),
        "batch_size": integer(1, 64, 2**47, 2**48, 2**62, 2**63),
        "seed": integer(0, 2**64 - 1, 2**64, 2**80),
        "num_workers": integer(0, 2),
        "shuffle": setting(st.sampled_from(["uniform", "block", "none"]), "random", "Uniform"),
        "drop_last": setting(st.booleans(), "false", 1, np.bool_(True)),
        "eval_batch_size": integer(1, 64, 2**47, 2**62),
        "stage_splits": setting(
            st.sampled_from([None, {}, {"val": "val"}, {"train": "train", "test": "val"}]),
            {"valid": "val"},
            {"val": "holdout"},
            {"val": 3},
            "val",
            ["val"],
            {"predict": "all"},
        ),
        # builtins.dict: a transform that works on any batch (a failing transform's own error is the user's)
        "transform": setting(
            st.sampled_from([None, "builtins.dict", dict]),
            "tests.helpers.nothing",
            "no.such.module",
            "x",
            ".x",
            "x.",
            "..",
            "tests.helpers.Preempted",
        ),
        "nulls": setting(st.sampled_from(["raise", "mask"]), "drop"),
        "version": integer(1, 2, 2**64, 3),
        "storage_options": setting(st.sampled_from([None, {}, {"region": "x"}]), {"a": 1}, {1: "a"}),
        "connect_kwargs": setting(
            st.sampled_from([None, {}, {"read_consistency_interval": 5}]),
            {"read_consistency_interval": float("nan")},
            {"read_consistency_interval": 1e300},
            {"read_consistency_interval": -1},
            {"read_consistency_interval": "soon"},
            {"bogus": 1},
            {1: 2},
        ),
        "multiprocessing_context": setting(st.sampled_from([None, "forkserver", "spawn"]), "fork", "thread"),
        "persistent_workers": setting(st.booleans(), "no"),
        "pin_memory": setting(st.booleans(), "yes"),
        "prefetch_factor": integer(1, 4),
        "read_ahead": integer(0, 4),
        "read_group_rows": integer(1, 4096),
        "block_size": integer(1, 8192, 2**47, 2**48, 2**62),
        "window_blocks": integer(1, 64, 2**20, 2**51, 2**63 - 1),
        "resume": setting(st.sampled_from(["exact", "fresh"]), "EXACT"),
        "table_updates": setting(st.sampled_from(["pin", "next_epoch"]), "latest"),
        "in_memory": setting(st.booleans(), "false"),
        "memory_budget_bytes": integer(1, 2**63 - 1, 2**63),
        "cache": setting(st.one_of(st.none(), cache_dirs, cache_dirs.map(pathlib.Path)), "", False, True, b"/tmp"),
        "cache_max_bytes": integer(1, 2**63 - 1, 2**63),
    }


@st.composite
def arguments(draw, places: dict[str, str]) -> dict:
    """Keyword arguments of LanceDataModule: most valid (or left to their default), 0-3 of them wrong.

    With every argument drawn from junk, nearly every example would stop at the first check;
    a few wrong ones among valid values reach ``setup()`` and the reads.
    """
    table = settings_of(places)
    wrong = draw(st.lists(st.sampled_from(sorted(table)), max_size=3, unique=True), label="wrong")
    kwargs = {"uri": places["uri"], "table": "toy"}
    for name, (valid, wild) in table.items():
        if name in wrong:
            kwargs[name] = draw(wild, label=name)
        elif draw(st.booleans(), label=f"give {name}"):
            kwargs[name] = draw(valid, label=name)
    return kwargs


def first_batches(dm: LanceDataModule) -> Iterator[object]:
    for make in (dm.train_dataloader, dm.val_dataloader, dm.test_dataloader, dm.predict_dataloader):
        loader = make()
        if isinstance(loader, DataLoader):
            yield next(iter(loader), None)


def _on_alarm(signum, frame):
    raise Hang(f"an example ran past {EXAMPLE_SECONDS} s")


def exercise(kwargs: dict, stage: str | None) -> None:
    dm = LanceDataModule(**kwargs)
    dm.setup(stage)
    if dm.options.num_workers == 0:  # workers would start processes: seconds an example
        for _ in first_batches(dm):
            pass


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(data=st.data(), stage=st.sampled_from([None, "fit", "validate", "test", "predict"]))
def test_every_failure_is_a_value_or_type_error_with_a_message(places, data, stage):
    kwargs = data.draw(arguments(places), label="kwargs")
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, EXAMPLE_SECONDS)
    try:
        exercise(kwargs, stage)
        event("no error")
    except (ValueError, TypeError) as err:
        assert str(err).strip(), f"{type(err).__name__} with an empty message"
        event(f"{type(err).__name__}: {' '.join(str(err).split()[:3])}")  # --hypothesis-show-statistics
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # noqa: BLE001 - pyo3's PanicException is a BaseException
        raise AssertionError(f"{type(err).__module__}.{type(err).__name__}: {err}") from err
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
