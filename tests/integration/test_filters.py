"""Filters and SQL split predicates must be one whole SQL boolean expression (issue 12, item 3).

lancedb's parser keeps the first complete expression of a filter and silently drops the rest:
``"label = 1 id > 90"`` ran as ``label = 1``. Such texts are now refused, naming the text, the
setting and where parsing stopped; valid filters keep selecting exactly the rows they did.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lance_lightning import LanceBatchDataset, LanceDataModule, LanceSourceError, SplitSpecError
from lance_lightning.filters import early_end

N = 100
IDS = np.arange(N)
LABEL = IDS % 2
NAMES = [None if i % 10 == 9 else f"r-{i}" for i in IDS]
# Names holding the characters a checker must not read as code inside a literal.
NAMES[3], NAMES[4], NAMES[5], NAMES[6], NAMES[8] = "a)b", "a;b", "a--b", "it's)", "x/*y"
NAME = np.array(NAMES, dtype=object)
IS_NULL = np.array([n is None for n in NAMES])

# (text, character offset where lancedb's parser stops, what it would have ignored)
MALFORMED = [
    ("label = 1 id > 90", 10, "id > 90"),
    ("id < 50) OR (label = 1", 7, ") OR (label = 1"),
    ("1=1; DROP TABLE t", 3, "; DROP TABLE t"),
]


def filter_table() -> pa.Table:
    return pa.table({"id": IDS, "label": LABEL, "name": pa.array(NAMES, pa.string()), "my col": IDS * 10})


def ids_of(rows) -> np.ndarray:
    """The ``id`` values of a split, read through the split's own dataset."""
    dataset = LanceBatchDataset.of_rows(rows.source, ["id"], rows.row_ids)
    return np.sort(dataset[np.arange(len(rows))]["id"].numpy())


def name_is(*values: str) -> np.ndarray:
    return np.isin(NAME, list(values))


@pytest.fixture
def table(make_table):
    return make_table("t", filter_table())


def assert_names_stop(message: str, text: str, offset: int, rest: str) -> None:
    assert repr(text) in message, message
    assert f"stops at character {offset} " in message, message
    assert repr(rest) in message, message
    assert "not one whole SQL boolean expression" in message, message


@pytest.mark.parametrize(("text", "offset", "rest"), MALFORMED)
def test_malformed_filter_is_refused(table, text, offset, rest):
    uri, tbl = table
    before = tbl.count_rows(text)
    assert before in (50, 100), "lancedb no longer cuts this filter short: revisit lance_lightning.filters"
    with pytest.raises(LanceSourceError) as info:
        LanceDataModule(uri, "t", filter=text, batch_size=8).setup()
    message = str(info.value)
    assert message.startswith(f"filter {text!r} "), message
    assert_names_stop(message, text, offset, rest)


@pytest.mark.parametrize(("text", "offset", "rest"), MALFORMED)
@pytest.mark.parametrize("data_filter", [None, "id >= 0"])
def test_malformed_sql_split_predicate_is_refused(table, text, offset, rest, data_filter):
    uri, _ = table
    splits = {"kind": "sql", "predicates": {"val": "id < 0", "train": text}}
    with pytest.raises(SplitSpecError) as info:
        LanceDataModule(uri, "t", splits=splits, filter=data_filter, batch_size=8).setup()
    message = str(info.value)
    assert message.startswith(f"predicate {text!r} of split 'train' "), message
    assert_names_stop(message, text, offset, rest)


@pytest.mark.parametrize(
    "text",
    [
        "label = 1, id > 90",  # a tuple once parenthesized: still refused
        "id > 95;",
        "id IN (1, 2) 'x'",
        "name = 'it''s)' x",
        "label = 1 /* ) */ id > 90",
        "nosuch = 1 id > 2",  # refused for being cut short before any column is looked up
    ],
)
def test_other_cut_short_filters_are_refused(table, text):
    uri, _ = table
    with pytest.raises(LanceSourceError, match="not one whole SQL boolean expression: lancedb's parser stops at"):
        LanceDataModule(uri, "t", filter=text, batch_size=8).setup()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("id ==== 3", "sql parser error"),
        ("id > 1 AND", "found: EOF"),
        ("name = 'abc", "Unterminated string literal"),
        ("nosuch = 1", "No field named nosuch"),
    ],
)
def test_invalid_filter_keeps_lancedbs_reason(table, text, why):
    uri, _ = table
    with pytest.raises(LanceSourceError, match=r"is not a valid SQL predicate on table 't'") as info:
        LanceDataModule(uri, "t", filter=text, batch_size=8).setup()
    assert why in str(info.value)
    assert repr(text) in str(info.value)


VALID = [
    ("label = 1 AND id > 90", (LABEL == 1) & (IDS > 90)),
    ("(id < 50) OR (label = 1)", (IDS < 50) | (LABEL == 1)),
    ("((id < 10) OR (id > 90 AND (label = 0)))", (IDS < 10) | ((IDS > 90) & (LABEL == 0))),
    ("name = 'a)b'", name_is("a)b")),
    ("name = 'a;b' OR id = 0", name_is("a;b") | (IDS == 0)),
    ("name = 'a--b'", name_is("a--b")),
    ("name = 'it''s)'", name_is("it's)")),
    ("name = 'x/*y' OR id > 97", name_is("x/*y") | (IDS > 97)),
    ("name IN ('a)b', 'r-10', 'nope')", name_is("a)b", "r-10")),
    ("id IN (1, 2, 3, 50)", np.isin(IDS, [1, 2, 3, 50])),
    ("array_has([1, 2, 3], id)", np.isin(IDS, [1, 2, 3])),
    ("name LIKE 'r-1%'", np.array([n is not None and n.startswith("r-1") for n in NAMES])),
    ("name IS NULL", IS_NULL),
    ("name IS NOT NULL AND label = 0", ~IS_NULL & (LABEL == 0)),
    ("`my col` >= 950", IDS * 10 >= 950),
    ('"my col" < 30', IDS * 10 < 30),
    ("id BETWEEN 10 AND 20", (IDS >= 10) & (IDS <= 20)),
    ("NOT (id < 95)", IDS >= 95),
    ("id % 7 = 0", IDS % 7 == 0),
    ("id = -5 OR id = 3", IDS == 3),
    ("lower(name) = 'r-12'", IDS == 12),
    ("id > 90 -- a trailing comment", IDS > 90),
    ("id > 1 /* ) ; , */ AND id < 5", (IDS > 1) & (IDS < 5)),
    ("label = 1\nAND id < 10", (LABEL == 1) & (IDS < 10)),
]


@pytest.mark.parametrize(("text", "mask"), VALID, ids=[t for t, _ in VALID])
def test_valid_filter_selects_exactly_its_rows(table, text, mask):
    uri, tbl = table
    assert tbl.count_rows(text) == mask.sum(), "lancedb itself reads this filter differently"
    dm = LanceDataModule(uri, "t", filter=text, splits=None, batch_size=8)
    dm.setup()
    np.testing.assert_array_equal(ids_of(dm.splits["all"]), np.flatnonzero(mask))


@pytest.mark.parametrize(("text", "mask"), VALID[:12], ids=[t for t, _ in VALID[:12]])
def test_valid_sql_split_predicates_select_exactly_their_rows(table, text, mask):
    uri, _ = table
    splits = {"kind": "sql", "predicates": {"train": text, "val": f"NOT ({text}\n)"}}
    dm = LanceDataModule(uri, "t", splits=splits, batch_size=8)
    dm.setup()
    np.testing.assert_array_equal(ids_of(dm.splits["train"]), np.flatnonzero(mask))


def test_trailing_comments_survive_filter_and_predicate_together(table):
    """The filter and each predicate are combined in parentheses: a ``--`` comment must not swallow them."""
    uri, _ = table
    splits = {"kind": "sql", "predicates": {"train": "id < 40 -- the first part", "val": "id >= 40 -- the rest"}}
    dm = LanceDataModule(uri, "t", filter="id < 60 -- drop the tail", splits=splits, batch_size=8)
    dm.setup()
    np.testing.assert_array_equal(ids_of(dm.splits["train"]), np.arange(40))
    np.testing.assert_array_equal(ids_of(dm.splits["val"]), np.arange(40, 60))


def test_random_splits_of_a_commented_filter(table):
    uri, _ = table
    dm = LanceDataModule(uri, "t", filter="label = 0 -- even ids", splits={"train": 0.5, "val": 0.5}, batch_size=8)
    dm.setup()
    both = np.sort(np.concatenate([ids_of(dm.splits["train"]), ids_of(dm.splits["val"])]))
    np.testing.assert_array_equal(both, np.arange(0, N, 2))


@pytest.mark.parametrize(
    ("text", "end"),
    [
        ("name = 'a)b' OR id = 1", None),
        ('"we)ird" = 1 AND `o,dd` = 2', None),
        ("name = $$a);b$$", None),
        ("id > 1 -- ); ,\nAND id < 5", None),
        ("id IN (1, 2) AND array_has([1, 2], id)", None),
        ("name = 'it''s' ) x", (15, ")")),
        ("id > 1 /* a /* b */ ) */", (20, ")")),  # block comments do not nest in lancedb
        ("f(a, b); x", (7, ";")),
        ("(a = 1; b)", (6, ";")),
    ],
)
def test_early_end_reads_literals_and_comments_as_lancedb_does(text, end):
    assert early_end(text) == end
