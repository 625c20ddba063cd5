"""Sequential splits come from the one ``_rowid`` scan, not lancedb's permutation builder: they must
hold exactly the rows the builder puts in each split (the splits users had before), for fractions
that round every way, counts, filters, several fragments and deleted rows."""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from lance_lightning.source import TableSource
from lance_lightning.splits import parse_split_spec
from lance_lightning.splits.base import permutation_splits
from lance_lightning.splits.sequential import sequential_counts

FRACTIONS = [
    (0.8, 0.1, 0.1),
    (0.9, 0.1),
    (1 / 3, 1 / 3, 1 / 3),
    (0.5, 0.25),
    (0.7, 0.2, 0.1),
    (0.15, 0.85),
    (0.333, 0.667),
    (0.217, 0.168, 0.17),
    (0.45, 0.45, 0.1),
]


def _builder(source, table, spec, filter):
    return permutation_splits(
        source,
        table,
        spec,
        filter=filter,
        split=lambda b: b.split_sequential(**spec.sizes(), split_names=list(spec.names)),
    )


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("seq"))
    db = lancedb.connect(uri)
    made = {}
    for n in (1, 2, 3, 5, 7, 10, 13, 29, 101, 997):
        made[n] = db.create_table(f"t{n}", pa.table({"id": np.arange(n), "g": np.arange(n) % 3}))
    # several fragments, then deletions: scan order is not one dense run of addresses
    frag = db.create_table("frag", pa.table({"id": np.arange(300), "g": np.arange(300) % 3}))
    for k in range(1, 4):
        frag.add(pa.table({"id": np.arange(300 * k, 300 * (k + 1)), "g": np.arange(300) % 3}))
    frag.delete("id % 7 = 0")
    made["frag"] = frag
    return {key: (TableSource(uri, table.name).pinned(table.version), table) for key, table in made.items()}


@pytest.mark.parametrize("fractions", FRACTIONS, ids=str)
def test_fraction_splits_are_the_builders_rows(tables, fractions):
    names = ["a", "b", "c"][: len(fractions)]
    spec = parse_split_spec({"kind": "sequential", "fractions": dict(zip(names, fractions))})
    compared = 0
    for key, (source, table) in tables.items():
        for filter in (None, "g != 1") if key == "frag" else (None,):
            n = table.count_rows(filter)
            if any(f * n < 1 for f in fractions):
                continue  # refused by both (a split would round to nothing)
            ours = spec.build(source, table, filter=filter, seed=0)
            theirs = _builder(source, table, spec, filter)
            assert {k: v.row_ids.tolist() for k, v in ours.items()} == {
                k: v.row_ids.tolist() for k, v in theirs.items()
            }
            compared += 1
    assert compared >= 5


def test_count_splits_are_the_builders_rows(tables):
    source, table = tables["frag"]
    spec = parse_split_spec({"kind": "sequential", "counts": {"train": 500, "val": 200, "test": 7}})
    ours = spec.build(source, table, filter=None, seed=0)
    theirs = _builder(source, table, spec, None)
    assert {k: v.row_ids.tolist() for k, v in ours.items()} == {k: v.row_ids.tolist() for k, v in theirs.items()}
    assert [len(ours[k]) for k in ("train", "val", "test")] == [500, 200, 7]


@pytest.mark.parametrize(
    ("n", "fractions", "want"),
    [
        (50, (0.217, 0.168, 0.17), [11, 8, 9]),  # lancedb's own test case
        (70, (0.3, 0.41), [21, 29]),
        (5, (1 / 3, 1 / 3, 1 / 3), [1, 2, 2]),  # rounds to 2+2+2: one taken off the first
        (10, (1 / 3, 1 / 3, 1 / 3), [4, 3, 3]),  # rounds to 3+3+3 of a whole table: one given to the first
        (7, (0.5, 0.25), [4, 2]),  # not the whole table: rounding up is kept
        (1000, (0.8, 0.1, 0.1), [800, 100, 100]),
    ],
)
def test_sequential_counts(n, fractions, want):
    assert sequential_counts(n, fractions, None) == want
    assert sum(want) <= n
