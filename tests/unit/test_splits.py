"""Split specs without a table: parsing, the registry, and the checkpoint identity of every kind."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lance_lightning import splits
from lance_lightning.splits import (
    KINDS,
    SPLIT_KINDS,
    SplitSpec,
    SplitSpecError,
    kinds_stable_under_appends,
    parse_split_spec,
)
from lance_lightning.splits.base import LEGACY_IDENTITY

# (user input, fingerprint(filter=None, seed=0), identity): the identity is _plain(spec.__dict__)
# of the one SplitSpec dataclass, recorded from commit 9e0343d. Checkpoints store that dict, so a
# checkpoint written before the kinds became classes must still match identity() exactly.
RECORDED_IDENTITIES = [
    (
        {"train": 0.8, "val": 0.1, "test": 0.1},
        "af76acecc5a9d43a",
        {
            "kind": "random",
            "names": ["train", "val", "test"],
            "fractions": [0.8, 0.1, 0.1],
            "counts": None,
            "seed": None,
            "columns": None,
            "weights": None,
            "discard_weight": 0,
            "column": None,
            "predicates": None,
            "tables": None,
        },
    ),
    (
        {"train": 800, "val": 100},
        "2521851288a03535",
        {
            "kind": "random",
            "names": ["train", "val"],
            "fractions": None,
            "counts": [800, 100],
            "seed": None,
            "columns": None,
            "weights": None,
            "discard_weight": 0,
            "column": None,
            "predicates": None,
            "tables": None,
        },
    ),
    (
        {"kind": "random", "fractions": {"train": 0.5, "val": 0.5}, "seed": 7},
        "30d09573e79eae2a",
        {
            "kind": "random",
            "names": ["train", "val"],
            "fractions": [0.5, 0.5],
            "counts": None,
            "seed": 7,
            "columns": None,
            "weights": None,
            "discard_weight": 0,
            "column": None,
            "predicates": None,
            "tables": None,
        },
    ),
    (
        {"kind": "random", "counts": {"train": 10, "val": 5}},
        "709f73f078c1f629",
        {
            "kind": "random",
            "names": ["train", "val"],
            "fractions": None,
            "counts": [10, 5],
            "seed": None,
            "columns": None,
            "weights": None,
            "discard_weight": 0,
            "column": None,
            "predicates": None,
            "tables": None,
        },
    ),
    (
        {"kind": "random", "counts": {"train": 10, "val": 5}, "seed": None},
        "709f73f078c1f629",
        {
            "kind": "random",
            "names": ["train", "val"],
            "fractions": None,
            "counts": [10, 5],
            "seed": None,
            "columns": None,
            "weights": None,
            "discard_weight": 0,
            "column": None,
            "predicates": None,
            "tables": None,
        },
    ),
    (
        {"kind": "sequential", "fractions": {"a": 0.5, "b": 0.25}},
        "eab9065834bc0c4f",
        {
            "kind": "sequential",
            "names": ["a", "b"],
            "fractions": [0.5, 0.25],
            "counts": None,
            "seed": None,
            "columns": None,
            "weights": None,
            "discard_weight": 0,
            "column": None,
            "predicates": None,
            "tables": None,
        },
    ),
    (
        {"kind": "sequential", "counts": {"a": 100, "b": 30}},
        "f03f2239f84462b2",
        {
            "kind": "sequential",
            "names": ["a", "b"],
            "fractions": None,
            "counts": [100, 30],
            "seed": None,
            "columns": None,
            "weights": None,
            "discard_weight": 0,
            "column": None,
            "predicates": None,
            "tables": None,
        },
    ),
    (
        {"kind": "hash", "columns": ["id"], "weights": {"train": 8, "val": 1, "test": 1}},
        "d23e7f4eff56289a",
        {
            "kind": "hash",
            "names": ["train", "val", "test"],
            "fractions": None,
            "counts": None,
            "seed": None,
            "columns": ["id"],
            "weights": [8, 1, 1],
            "discard_weight": 0,
            "column": None,
            "predicates": None,
            "tables": None,
        },
    ),
    (
        {"kind": "hash", "columns": "id", "weights": {"train": 1, "val": 1}, "discard_weight": 2},
        "7a776ab0a681065d",
        {
            "kind": "hash",
            "names": ["train", "val"],
            "fractions": None,
            "counts": None,
            "seed": None,
            "columns": ["id"],
            "weights": [1, 1],
            "discard_weight": 2,
            "column": None,
            "predicates": None,
            "tables": None,
        },
    ),
    (
        {"kind": "hash", "columns": ["id", "label"], "weights": {"a": 3, "b": 1}, "discard_weight": None},
        "1c05dfb138b4421d",
        {
            "kind": "hash",
            "names": ["a", "b"],
            "fractions": None,
            "counts": None,
            "seed": None,
            "columns": ["id", "label"],
            "weights": [3, 1],
            "discard_weight": 0,
            "column": None,
            "predicates": None,
            "tables": None,
        },
    ),
    (
        {"kind": "column", "column": "part"},
        "1a16c88c550341e1",
        {
            "kind": "column",
            "names": [],
            "fractions": None,
            "counts": None,
            "seed": None,
            "columns": None,
            "weights": None,
            "discard_weight": 0,
            "column": "part",
            "predicates": None,
            "tables": None,
        },
    ),
    (
        {"kind": "sql", "predicates": {"train": "year < 2020", "val": "year = 2020"}},
        "4a09013d9beb42fb",
        {
            "kind": "sql",
            "names": ["train", "val"],
            "fractions": None,
            "counts": None,
            "seed": None,
            "columns": None,
            "weights": None,
            "discard_weight": 0,
            "column": None,
            "predicates": ["year < 2020", "year = 2020"],
            "tables": None,
        },
    ),
    (
        {"kind": "tables", "tables": {"train": "train_t", "val": "val_t"}},
        "9bea1ce51c535cdd",
        {
            "kind": "tables",
            "names": ["train", "val"],
            "fractions": None,
            "counts": None,
            "seed": None,
            "columns": None,
            "weights": None,
            "discard_weight": 0,
            "column": None,
            "predicates": None,
            "tables": ["train_t", "val_t"],
        },
    ),
]


@pytest.mark.parametrize(("spec", "fingerprint", "identity"), RECORDED_IDENTITIES)
def test_identity_matches_the_recorded_checkpoint_identity(spec, fingerprint, identity):
    parsed = parse_split_spec(spec)
    assert parsed.identity() == identity
    assert list(parsed.identity()) == list(identity)  # same keys, same order
    assert json.dumps(parsed.identity()) == json.dumps(identity)  # lists and ints, not tuples or numpy
    assert parsed.fingerprint(filter=None, seed=0) == fingerprint


def test_every_kind_has_a_recorded_identity():
    assert {parse_split_spec(spec).kind for spec, _, _ in RECORDED_IDENTITIES} == set(SPLIT_KINDS)


def test_identity_is_plain_data_after_a_numpy_count():
    np = pytest.importorskip("numpy")
    parsed = parse_split_spec({"kind": "random", "counts": {"a": np.int64(5)}, "seed": np.uint32(3)})
    assert parsed.identity()["counts"] == [5] and type(parsed.identity()["seed"]) is int


def test_the_kinds_list_comes_from_the_registry():
    assert SPLIT_KINDS == ("random", "hash", "sequential", "column", "sql", "tables")
    assert tuple(KINDS) == SPLIT_KINDS
    assert all(KINDS[name].kind == name and issubclass(KINDS[name], SplitSpec) for name in KINDS)
    assert kinds_stable_under_appends() == ("hash", "column", "sql", "tables")


@pytest.mark.parametrize("name", SPLIT_KINDS)
def test_a_kind_holds_only_its_own_fields(name):
    cls = KINDS[name]
    fields = {f.name for f in dataclasses.fields(cls)} - {"names"}
    assert fields <= set(LEGACY_IDENTITY)  # an old checkpoint's identity names every field
    assert fields <= cls.takes | {"names"}, f"{name} holds fields it does not take: {fields - cls.takes}"
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen


def test_a_new_kind_is_one_class_and_one_registry_entry(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class EveryOther(SplitSpec):
        kind = "every_other"
        takes = frozenset({"offset"})
        survives_appends = True
        names = ("even", "odd")

        offset: int = 0

        @classmethod
        def parse(cls, spec):
            return cls(int(spec.get("offset", 0)))

    monkeypatch.setitem(KINDS, "every_other", EveryOther)
    parsed = parse_split_spec({"kind": "every_other", "offset": 1})
    assert parsed == EveryOther(1)
    assert parsed.identity() == {**LEGACY_IDENTITY, "kind": "every_other", "names": ["even", "odd"], "offset": 1}
    assert "every_other" in splits.kinds_stable_under_appends()
    with pytest.raises(SplitSpecError, match=r"does not take \['seed'\]; it takes \['offset'\]"):
        parse_split_spec({"kind": "every_other", "seed": 1})


def test_none_is_the_whole_table():
    assert parse_split_spec(None) is None


def test_shorthand_is_random_by_counts_or_fractions():
    assert parse_split_spec({"a": 3, "b": 4}) == splits.RandomSplit(("a", "b"), counts=(3, 4))
    assert parse_split_spec({"a": 0.5, "b": 0}) == splits.RandomSplit(("a", "b"), fractions=(0.5, 0.0))


# Moved from tests/integration/test_datamodule.py (test_bad_split_specs), plus one case a kind.
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"train": -0.1, "val": 0.5}, r"fractions must be numbers >= 0; got train=-0.1"),
        ({"train": 0.8, "val": 0.3}, r"sum to 1.1 \(train=0.8, val=0.3\).*at most 1"),
        ({"train": float("nan")}, r"got train=nan \(NaN and infinities are not fractions\)"),
        ({"kind": "shuffle"}, r"unknown split kind 'shuffle'; valid kinds are random, hash"),
        ({"kind": ["random"]}, r"unknown split kind \['random'\]"),
        ({"kind": "hash", "weights": {"a": 1}}, r"needs 'columns'"),
        ({"kind": "random", "fractions": {"a": 0.5}, "seeed": 1}, r"does not take \['seeed'\]"),
        ("train", r"`splits` must be a mapping"),
        ({"kind": "random", "fractions": {"a": 0.5}, "counts": {"a": 1}}, r"'random' split spec needs exactly one"),
        ({"kind": "random", "counts": {"a": 1}, "seed": -1}, r"split seed must be an integer >= 0.*got -1"),
        ({"kind": "random", "counts": {"a": -2, "b": 1.5}}, r"counts must be integers >= 0.*got a=-2, b=1.5"),
        ({"kind": "sequential", "fractions": {}}, r"split fractions must be a non-empty mapping"),
        ({"kind": "sequential", "counts": {"a": 1}, "seed": 3}, r"split kind 'sequential' does not take \['seed'\]"),
        ({"kind": "hash", "columns": ["id"], "weights": {"a": 0}}, r"hash split weights \{'a': 0\} are all zero"),
        ({"kind": "hash", "columns": "id", "weights": {"a": 1}, "discard_weight": -1}, r"discard_weight must be"),
        ({"kind": "hash", "columns": "id", "weights": {"a": 2**62, "b": 2**62}}, r"less than 2\*\*63"),
        ({"kind": "column"}, r"'column' split spec needs 'column'"),
        ({"kind": "sql", "predicates": {"a": "x > 1", "b": " "}}, r"predicates for \['b'\] must be non-empty"),
        ({"kind": "sql", "predicates": {"a": "x > 1; drop"}}, r"predicate 'x > 1; drop' of split 'a'"),
        ({"kind": "tables", "tables": []}, r"split tables must be a non-empty mapping"),
    ],
)
def test_bad_split_specs(spec, message):
    with pytest.raises(SplitSpecError, match=message):
        parse_split_spec(spec)
