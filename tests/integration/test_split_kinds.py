"""Split kinds on real tables: the rows each kind assigns (recorded), appends, and build-time errors."""

from __future__ import annotations

import hashlib

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from lance_lightning import LanceSourceError
from lance_lightning.source import TableSource
from lance_lightning.splits import KINDS, SplitSpecError, build_splits, parse_split_spec

PARTS = ("train", "val", "test")


def rows_data(lo: int, hi: int) -> pa.Table:
    ids = np.arange(lo, hi, dtype=np.int64)
    return pa.table(
        {
            "id": ids,
            "label": ids % 3,
            "year": 2015 + ids % 8,
            "part": [PARTS[(i * 7) % 5 % 3] for i in ids.tolist()],
        }
    )


@pytest.fixture
def db(tmp_path):
    """``rows`` (200 rows in two fragments: addresses beyond 2**32), ``train_t`` and ``val_t``."""
    db = lancedb.connect(str(tmp_path / "db"))
    db.create_table("rows", rows_data(0, 120)).add(rows_data(120, 200))
    db.create_table("train_t", rows_data(0, 50))
    db.create_table("val_t", rows_data(50, 80))
    return db


def build(db, spec, *, filter=None, seed=0, name="rows"):
    table = db.open_table(name)
    return build_splits(TableSource.from_table(table), table, parse_split_spec(spec), filter=filter, seed=seed)


def digest(splits) -> dict[str, list]:
    out = {}
    for name, rows in splits.items():
        ids = rows.row_ids
        assert ids.dtype == np.uint64 and np.all(ids[1:] > ids[:-1]), f"split {name} is not sorted and distinct"
        out[name] = [rows.source.name, len(ids), hashlib.sha256(ids.tobytes()).hexdigest()[:16]]
    return out


CASES = {
    "random_fractions": ({"train": 0.7, "val": 0.2, "test": 0.1}, None, 0),
    "random_fractions_seed7": ({"train": 0.7, "val": 0.2, "test": 0.1}, None, 7),
    "random_counts_shorthand": ({"train": 150, "val": 30}, None, 0),
    "random_counts_own_seed": ({"kind": "random", "counts": {"train": 120, "val": 40}, "seed": 3}, None, 0),
    "random_filtered": ({"kind": "random", "fractions": {"train": 0.5, "val": 0.5}}, "id >= 20", 5),
    "sequential_fractions": ({"kind": "sequential", "fractions": {"a": 0.5, "b": 0.25}}, None, 0),
    "sequential_counts_filtered": ({"kind": "sequential", "counts": {"a": 100, "b": 30}}, "label != 1", 0),
    "hash": ({"kind": "hash", "columns": ["id"], "weights": {"train": 8, "val": 1, "test": 1}}, None, 0),
    "hash_discard": (
        {"kind": "hash", "columns": "id", "weights": {"train": 1, "val": 1}, "discard_weight": 2},
        None,
        0,
    ),
    "hash_two_columns_filtered": (
        {"kind": "hash", "columns": ["id", "label"], "weights": {"a": 3, "b": 1}},
        "year > 2016",
        0,
    ),
    "column": ({"kind": "column", "column": "part"}, None, 0),
    "column_filtered": ({"kind": "column", "column": "part"}, "id < 150", 0),
    "sql": ({"kind": "sql", "predicates": {"train": "year < 2020", "val": "year = 2020"}}, None, 0),
    "sql_filtered": ({"kind": "sql", "predicates": {"train": "year < 2020", "val": "year >= 2021"}}, "label = 2", 0),
    "tables": ({"kind": "tables", "tables": {"train": "train_t", "val": "val_t"}}, None, 0),
    "tables_filtered": ({"kind": "tables", "tables": {"train": "train_t", "val": "val_t"}}, "id % 2 = 0", 0),
    "whole_table": (None, None, 0),
    "whole_table_filtered": (None, "year <> 2018", 0),
}

# {split: [table, rows, sha256 of the sorted uint64 row addresses]}, recorded from commit 9e0343d
# (lancedb 0.40.0): the kinds must keep assigning exactly these rows at the same seed.
RECORDED = {
    "random_fractions": {
        "train": ["rows", 140, "2da8b4a283e4b28c"],
        "val": ["rows", 40, "2b8da70df380890e"],
        "test": ["rows", 20, "7c63bb80ad57c6b4"],
    },
    "random_fractions_seed7": {
        "train": ["rows", 140, "1ee2c14d1952d4d1"],
        "val": ["rows", 40, "442b539e0a895462"],
        "test": ["rows", 20, "7532db14100498a3"],
    },
    "random_counts_shorthand": {"train": ["rows", 150, "9a7133be7240e20f"], "val": ["rows", 30, "99311a8374fc1779"]},
    "random_counts_own_seed": {"train": ["rows", 120, "ba4ad91f7e9538f3"], "val": ["rows", 40, "73bdfe510774238e"]},
    "random_filtered": {"train": ["rows", 90, "4b57b7f53c24f08b"], "val": ["rows", 90, "f8410d5da2090deb"]},
    "sequential_fractions": {"a": ["rows", 100, "96bdba67cd0b5e6d"], "b": ["rows", 50, "b0f408fdd83364a6"]},
    "sequential_counts_filtered": {"a": ["rows", 100, "1d22b5cfd5cb1e6f"], "b": ["rows", 30, "826e1799066f481a"]},
    "hash": {
        "train": ["rows", 167, "82e6b2b39d194600"],
        "val": ["rows", 15, "566e93097e5e189b"],
        "test": ["rows", 18, "830549eb1ea1235c"],
    },
    "hash_discard": {"train": ["rows", 52, "ad9a7b26d8f0ba3a"], "val": ["rows", 49, "38156799b672327a"]},
    "hash_two_columns_filtered": {"a": ["rows", 114, "e4810fd7f8b25cc6"], "b": ["rows", 36, "2f6e8567e6dc330d"]},
    "column": {
        "test": ["rows", 40, "4e86ee8001fba22d"],
        "train": ["rows", 80, "0b6b5fd28c0d6c4b"],
        "val": ["rows", 80, "39272aef01088c0a"],
    },
    "column_filtered": {
        "test": ["rows", 30, "31c4cb056b1cd32e"],
        "train": ["rows", 60, "c9580a383f2e0d5e"],
        "val": ["rows", 60, "d97bcf69ed7c9b02"],
    },
    "sql": {"train": ["rows", 125, "736504f98c8a18ca"], "val": ["rows", 25, "9feecfe94c0e6086"]},
    "sql_filtered": {"train": ["rows", 41, "641702f0df1c11d1"], "val": ["rows", 16, "ada60ec9a7a72349"]},
    "tables": {"train": ["train_t", 50, "c202d9cfc7858fd4"], "val": ["val_t", 30, "394a42f05d4ef71e"]},
    "tables_filtered": {"train": ["train_t", 25, "fad83cd013b192d7"], "val": ["val_t", 15, "2f3195b9a286db65"]},
    "whole_table": {"all": ["rows", 200, "a52d38db25dd2903"]},
    "whole_table_filtered": {"all": ["rows", 175, "3124ffe37bdf20b3"]},
}


def test_every_kind_is_recorded():
    kinds = {parse_split_spec(spec).kind for spec, _, _ in CASES.values() if spec is not None}
    assert kinds == set(KINDS) and set(CASES) == set(RECORDED)


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_kind_assigns_the_recorded_rows(db, case):
    spec, filter, seed = CASES[case]
    assert digest(build(db, spec, filter=filter, seed=seed)) == RECORDED[case]


STABLE_EXAMPLES = {
    "hash": {"kind": "hash", "columns": ["id"], "weights": {"train": 3, "val": 1}},
    "column": {"kind": "column", "column": "part"},
    "sql": {"kind": "sql", "predicates": {"train": "year < 2019", "val": "year >= 2019"}},
    "tables": {"kind": "tables", "tables": {"train": "train_t", "val": "val_t"}},
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_survives_appends_says_whether_appends_move_rows(db, kind):
    """A kind that claims to survive appends keeps every old row in its split; the others move some."""
    spec = STABLE_EXAMPLES.get(kind, {"kind": kind, "fractions": {"train": 0.5, "val": 0.5}})
    assert KINDS[kind].survives_appends == (kind in STABLE_EXAMPLES)
    before = {n: set(r.row_ids.tolist()) for n, r in build(db, spec).items()}
    for name in ("rows", "train_t", "val_t"):
        db.open_table(name).add(rows_data(1000, 1100))
    after = {n: set(r.row_ids.tolist()) for n, r in build(db, spec).items()}
    kept = all(before[n] <= after.get(n, set()) for n in before)
    assert kept == KINDS[kind].survives_appends, f"{kind}: old rows kept their split: {kept}"


def test_a_pinned_version_is_split_without_later_rows(db):
    table = db.open_table("rows")
    table.add(rows_data(200, 260))
    table.checkout(1)
    source = TableSource.from_table(table)
    for spec in [None, {"kind": "column", "column": "part"}, {"kind": "sql", "predicates": {"a": "id >= 0"}}]:
        splits = build_splits(source, table, parse_split_spec(spec), filter=None, seed=0)
        assert sum(len(r) for r in splits.values()) == 120, spec


@pytest.mark.parametrize(
    ("spec", "filter", "error", "message"),
    [
        (
            {"a": 150, "b": 60},
            None,
            SplitSpecError,
            r"split counts \{'a': 150, 'b': 60\} add up to 210 rows, but "
            r"table 'rows' has 200 rows",
        ),
        ({"a": 10, "b": 0}, None, SplitSpecError, r"split\(s\) \['b'\] have a count of 0"),
        (
            {"a": 0.9, "b": 0.01},
            "id < 50",
            SplitSpecError,
            r"split\(s\) b=0.01 would be empty: table 'rows' has 50 "
            r"rows after filter 'id < 50'",
        ),
        ({"kind": "sequential", "counts": {"a": 300}}, None, SplitSpecError, r"add up to 300 rows"),
        (
            {"kind": "hash", "columns": ["id", "nope"], "weights": {"a": 1}},
            None,
            LanceSourceError,
            r"hash split columns \['nope'\] are not in table 'rows'",
        ),
        ({"kind": "column", "column": "nope"}, None, LanceSourceError, r"split column 'nope' is not in table 'rows'"),
        (
            {"kind": "sql", "predicates": {"a": "id < 10", "b": "id < 20"}},
            None,
            SplitSpecError,
            r"SQL splits 'a' and 'b' overlap in 10 row\(s\) of table 'rows'",
        ),
        (
            {"kind": "sql", "predicates": {"a": "nope < 10"}},
            None,
            SplitSpecError,
            r"predicate 'nope < 10' of split 'a'",
        ),
        (
            {"kind": "sql", "predicates": {"a": "id < 10 id > 5"}},
            None,
            SplitSpecError,
            r"predicate 'id < 10 id > 5' of split 'a'",
        ),
        ({"kind": "tables", "tables": {"a": "train_t", "b": "gone"}}, None, LanceSourceError, r"gone"),
        (
            {"kind": "hash", "columns": ["id"], "weights": {"a": 1}},
            "id > 1000",
            SplitSpecError,
            r"table 'rows' \(version 2\) has no rows after filter 'id > 1000': every split is empty",
        ),
        (None, "id < 0", SplitSpecError, r"table 'rows' \(version 2\) has no rows after filter 'id < 0'"),
    ],
)
def test_build_errors_name_what_is_at_fault(db, spec, filter, error, message):
    with pytest.raises(error, match=message):
        build(db, spec, filter=filter)


def test_column_split_refuses_null_names(tmp_path):
    db = lancedb.connect(str(tmp_path / "db"))
    db.create_table("t", pa.table({"id": [1, 2, 3], "part": ["a", None, "b"]}))
    with pytest.raises(SplitSpecError, match=r"split column 'part' of table 't' has 1 null value\(s\).*IS NOT NULL"):
        build(db, {"kind": "column", "column": "part"}, name="t")


def test_the_datamodule_refuses_a_bad_spec_when_made():
    from lance_lightning import LanceDataModule

    with pytest.raises(SplitSpecError, match=r"unknown split kind 'shuffle'; valid kinds are random, hash"):
        LanceDataModule("/unused", "toy", splits={"kind": "shuffle"})
