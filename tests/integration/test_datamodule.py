"""LanceDataModule on real on-disk tables: splits, filters, columns, versions, errors."""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow as pa
import pytest
import torch

from lance_lightning import LanceBatchDataset, LanceDataModule, LanceSourceError, SplitSpecError, UnsupportedColumnError
from tests.conftest import toy_table


def ids_of(loader) -> list[int]:
    return [i for batch in loader for i in batch["id"].tolist()]


def split_ids(dm: LanceDataModule) -> dict[str, set[int]]:
    """Each split's ``id`` values, read through the split's own dataset."""
    out = {}
    for name, rows in dm.splits.items():
        dataset = LanceBatchDataset.of_rows(rows.source, ["id"], rows.row_ids)
        out[name] = set(dataset[np.arange(len(rows))]["id"].tolist())
    return out


def assert_partition(parts: dict[str, set[int]], expected: set[int]) -> None:
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not parts[a] & parts[b], f"splits {a} and {b} overlap"
    assert set().union(*parts.values()) == expected


@pytest.mark.parametrize(
    ("splits", "sizes"),
    [
        ({"train": 0.8, "val": 0.1, "test": 0.1}, None),
        ({"train": 0.5, "val": 0.5}, None),
        ({"train": 60, "val": 20, "test": 21}, {"train": 60, "val": 20, "test": 21}),
        ({"kind": "sequential", "counts": {"train": 70, "val": 31}}, {"train": 70, "val": 31}),
        ({"kind": "sequential", "fractions": {"train": 0.5, "val": 0.5}}, None),
        ({"kind": "hash", "columns": ["id"], "weights": {"train": 8, "val": 1, "test": 1}}, None),
        (
            {"kind": "sql", "predicates": {"train": "id < 50", "val": "id >= 50 AND id < 80", "test": "id >= 80"}},
            {"train": 50, "val": 30, "test": 21},
        ),
    ],
)
def test_split_kinds_are_disjoint_and_cover_the_table(make_table, splits, sizes):
    uri, _ = make_table("toy", 101)
    dm = LanceDataModule(uri, "toy", splits=splits, batch_size=8)
    dm.setup()
    parts = split_ids(dm)
    assert_partition(parts, set(range(101)))
    if sizes:
        assert {k: len(v) for k, v in parts.items()} == sizes


def test_sequential_split_follows_table_order(make_table):
    uri, _ = make_table("toy", 10)
    dm = LanceDataModule(uri, "toy", splits={"kind": "sequential", "counts": {"train": 6, "val": 4}}, batch_size=2)
    dm.setup()
    assert split_ids(dm) == {"train": set(range(6)), "val": set(range(6, 10))}


def test_filter_applies_before_splitting(make_table):
    uri, _ = make_table("toy", 200)
    dm = LanceDataModule(uri, "toy", filter="y != 1", batch_size=16)
    dm.setup()
    expected = {i for i in range(200) if i % 3 != 1}
    assert_partition(split_ids(dm), expected)
    assert sum(len(s) for s in dm.splits.values()) == len(expected)


def test_column_split_uses_the_values_as_names(make_table):
    names = ["train", "val", "test", "train"] * 10
    data = toy_table(40).append_column("split", pa.array(names))
    uri, _ = make_table("toy", data)
    dm = LanceDataModule(uri, "toy", splits={"kind": "column", "column": "split"}, batch_size=4)
    dm.setup()
    parts = split_ids(dm)
    assert parts == {n: {i for i in range(40) if names[i] == n} for n in ("train", "val", "test")}


def test_hash_split_is_stable_when_rows_are_appended(make_table):
    uri, table = make_table("toy", 300)
    spec = {"kind": "hash", "columns": ["id"], "weights": {"train": 3, "val": 1}}
    before = LanceDataModule(uri, "toy", splits=spec, batch_size=8)
    before.setup()
    table.add(toy_table(400).slice(300))
    after = LanceDataModule(uri, "toy", splits=spec, batch_size=8)
    after.setup()
    old, new = split_ids(before), split_ids(after)
    assert after.table_version > before.table_version
    for name in old:
        assert {i for i in new[name] if i < 300} == old[name]


def test_hash_split_accepts_discard_weight_none(make_table):
    uri, _ = make_table("toy", 100)
    spec = {"kind": "hash", "columns": ["id"], "weights": {"train": 1, "val": 1}, "discard_weight": None}
    dm = LanceDataModule(uri, "toy", splits=spec, batch_size=8)
    dm.setup()
    assert_partition(split_ids(dm), set(range(100)))


def test_one_table_per_split(tmp_path):
    uri = str(tmp_path / "db")
    db = lancedb.connect(uri)
    db.create_table("tr", toy_table(30))
    db.create_table("va", toy_table(12))
    dm = LanceDataModule(uri, "tr", splits={"kind": "tables", "tables": {"train": "tr", "val": "va"}}, batch_size=5)
    dm.setup("fit")
    assert sorted(ids_of(dm.train_dataloader())) == list(range(30))
    assert sorted(ids_of(dm.val_dataloader())) == list(range(12))
    assert dm.test_dataloader() == []


def test_stage_without_split_gets_no_dataloader(make_table):
    uri, _ = make_table("toy", 50)
    dm = LanceDataModule(uri, "toy", splits={"train": 0.9, "val": 0.1}, batch_size=8)
    dm.setup()
    assert dm.test_dataloader() == []
    assert len(ids_of(dm.val_dataloader())) == 5


def test_predict_reads_whole_filtered_table_in_table_order(make_table):
    uri, _ = make_table("toy", 57)
    dm = LanceDataModule(uri, "toy", filter="id % 2 = 0", batch_size=10)
    dm.setup("predict")
    assert ids_of(dm.predict_dataloader()) == list(range(0, 57, 2))


def test_predict_reads_a_named_split(make_table):
    uri, _ = make_table("toy", 40)
    dm = LanceDataModule(uri, "toy", batch_size=7, stage_splits={"predict": "test"})
    dm.setup("predict")
    assert ids_of(dm.predict_dataloader()) == sorted(split_ids(dm)["test"])


def test_columns_reads_only_those_columns(make_table):
    uri, _ = make_table("toy", 20)
    dm = LanceDataModule(uri, "toy", columns=["x", "id"], batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x", "id"}
    assert batch["x"].shape == (4, 4) and batch["x"].dtype == torch.float32


def test_batches_hold_the_source_rows(make_table):
    uri, table = make_table("toy", 64)
    source = table.to_arrow()
    dm = LanceDataModule(uri, "toy", batch_size=16)
    dm.setup("fit")
    for batch in dm.train_dataloader():
        for pos, i in enumerate(batch["id"].tolist()):
            assert batch["x"][pos].tolist() == source["x"][i].as_py()
            assert batch["y"][pos].item() == source["y"][i].as_py()
            assert batch["name"][pos] == source["name"][i].as_py()


def count_reads(monkeypatch, table) -> dict[str, list[int]]:
    """Record the row count of every take_offsets call and every range scan on ``table``."""
    calls: dict[str, list[int]] = {"take": [], "scan": []}
    real_take, real_search = table.take_offsets, table.search

    def counting_take(offsets):
        calls["take"].append(len(offsets))
        return real_take(offsets)

    class CountingQuery:
        def __init__(self, query):
            self.query = query

        def __getattr__(self, name):
            attr = getattr(self.query, name)
            if name == "limit":
                return lambda n: (calls["scan"].append(n), CountingQuery(attr(n)))[1]
            return (lambda *a, **k: CountingQuery(attr(*a, **k))) if name in ("select", "offset") else attr

    monkeypatch.setattr(table, "take_offsets", counting_take)
    monkeypatch.setattr(table, "search", lambda *a, **k: CountingQuery(real_search(*a, **k)))
    return calls


def test_uniform_reads_are_one_take_per_batch(make_table, monkeypatch):
    uri, _ = make_table("toy", 100)
    dm = LanceDataModule(uri, "toy", batch_size=25, splits={"train": 1.0}, staging="off")
    dm.setup("fit")
    calls = count_reads(monkeypatch, dm.datasets["train"].table())
    assert len(ids_of(dm.train_dataloader())) == 100
    assert calls == {"take": [25, 25, 25, 25], "scan": []}


@pytest.mark.parametrize("shuffle", ["block", "none"])
def test_block_and_sequential_reads_are_range_scans_of_several_batches(make_table, monkeypatch, shuffle):
    uri, _ = make_table("toy", 20_000)
    dm = LanceDataModule(
        uri, "toy", batch_size=500, splits={"train": 1.0}, shuffle=shuffle, block_size=2500, window_blocks=2
    )
    dm.setup("fit")
    calls = count_reads(monkeypatch, dm.datasets["train"].table())
    batches = [batch["id"].tolist() for batch in dm.train_dataloader()]
    assert sorted(i for b in batches for i in b) == list(range(20_000))
    assert [len(b) for b in batches] == [500] * 40, "the loader hands out single batches"
    # block: 8 windows of 2 blocks of 2,500 rows (10 batches each), one scan a block;
    # none: groups of 16,384 // 500 = 32 batches, one scan a group.
    expected = [2500] * 8 if shuffle == "block" else [16_000, 4_000]
    assert sorted(calls["scan"], reverse=True) == expected and calls["take"] == []


def test_open_table_object_from_memory_database():
    db = lancedb.connect("memory://")
    table = db.create_table("mem", toy_table(30))
    dm = LanceDataModule(table=table, batch_size=8, splits={"train": 1.0})
    dm.setup("fit")
    assert sorted(ids_of(dm.train_dataloader())) == list(range(30))
    # staged (the default for the uniform order): workers read the node-local stage, not the table
    staged = LanceDataModule(table=table, batch_size=8, splits={"train": 1.0}, num_workers=2)
    staged.setup("fit")
    assert sorted(ids_of(staged.train_dataloader())) == list(range(30))
    # read from the table: workers cannot reopen an in-memory database, and are told so
    workers = LanceDataModule(table=table, batch_size=8, splits={"train": 1.0}, num_workers=2, staging="off")
    workers.setup("fit")
    with pytest.raises(LanceSourceError, match=r"in-memory database.*num_workers=0"):
        workers.train_dataloader()


def test_open_table_object_from_disk(make_table):
    _, table = make_table("toy", 30)
    dm = LanceDataModule(table=table, batch_size=8, splits={"train": 1.0})
    dm.setup("fit")
    assert sorted(ids_of(dm.train_dataloader())) == list(range(30))


def test_version_is_pinned_at_setup(make_table):
    uri, table = make_table("toy", 50)
    dm = LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=10)
    dm.setup("fit")
    pinned = dm.table_version
    table.add(toy_table(80).slice(50))
    dm.setup("fit")
    assert dm.table_version == pinned == dm.hparams["table_version"]
    assert sorted(ids_of(dm.train_dataloader())) == list(range(50))


def test_deleted_rows_stay_readable_at_the_pinned_version(make_table):
    uri, table = make_table("toy", 50)
    dm = LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=10)
    dm.setup("fit")
    table.delete("id < 10")
    assert sorted(ids_of(dm.train_dataloader())) == list(range(50))


def test_split_sizes_and_version_are_hyperparameters(make_table):
    uri, _ = make_table("toy", 100)
    dm = LanceDataModule(uri, "toy", batch_size=10)
    dm.setup("fit")
    assert dm.hparams["split_rows"] == {name: len(rows) for name, rows in dm.splits.items()}
    assert dm.hparams_initial["table_version"] == dm.table_version


def test_transform_runs_on_batches_from_dotted_path(make_table):
    uri, _ = make_table("toy", 20)
    dm = LanceDataModule(uri, "toy", batch_size=5, splits={"train": 1.0}, transform="tests.helpers.double_x")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["x_doubled"].shape == (5, 4)
    assert torch.equal(batch["x_doubled"], batch["x"] * 2)


# -- bad input -------------------------------------------------------------------------


def test_missing_database_is_named_and_not_created(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(LanceSourceError, match=r"no LanceDB database at .*nope"):
        LanceDataModule(str(missing), "toy").setup()
    assert not missing.exists()


def test_missing_table_lists_the_tables(make_table):
    uri, _ = make_table("toy", 10)
    with pytest.raises(LanceSourceError, match=r"no table 'toys'.*tables there: 'toy'"):
        LanceDataModule(uri, "toys").setup()


def test_unknown_column_lists_the_schema(make_table):
    uri, _ = make_table("toy", 10)
    with pytest.raises(LanceSourceError, match=r"no column\(s\) \['label'\].*id: int64, x: fixed_size_list"):
        LanceDataModule(uri, "toy", columns=["id", "label"]).setup()


def test_unknown_split_for_a_stage_lists_the_splits(make_table):
    uri, _ = make_table("toy", 30)
    dm = LanceDataModule(uri, "toy", stage_splits={"val": "holdout"})
    with pytest.raises(SplitSpecError, match=r"stage 'val'.*split 'holdout'.*\['test', 'train', 'val'\]"):
        dm.setup()


def test_unknown_stage_name(make_table):
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['valid'\]"):
        LanceDataModule("/unused", "toy", stage_splits={"valid": "val"})
    uri, _ = make_table("toy", 30)
    with pytest.raises(ValueError, match=r"unknown stage 'training'"):
        LanceDataModule(uri, "toy").setup("training")


def test_empty_split_is_named(make_table):
    uri, _ = make_table("toy", 30)
    dm = LanceDataModule(uri, "toy", splits={"train": 30, "val": 0})
    with pytest.raises(SplitSpecError, match=r"split\(s\) \['val'\] have a count of 0"):
        dm.setup()
    tiny = LanceDataModule(uri, "toy", splits={"train": 0.99, "val": 0.01})
    with pytest.raises(SplitSpecError, match=r"split\(s\) val=0.01 would be empty: table 'toy' has 30 rows"):
        tiny.setup()
    sql = LanceDataModule(uri, "toy", splits={"kind": "sql", "predicates": {"train": "id < 10", "val": "id > 99"}})
    with pytest.raises(SplitSpecError, match=r"split 'val' \(read by stage 'val'\).*is empty"):
        sql.setup()


def test_filter_leaving_nothing_is_named(make_table):
    uri, _ = make_table("toy", 30)
    with pytest.raises(SplitSpecError, match=r"table 'toy' \(version 1\) has no rows after filter 'id > 1000'"):
        LanceDataModule(uri, "toy", filter="id > 1000").setup()


@pytest.mark.parametrize("value", [0, -3, 2.5])
def test_bad_batch_size(value):
    with pytest.raises(ValueError, match=rf"batch_size must be an integer >= 1, got {value}"):
        LanceDataModule("/unused", "toy", batch_size=value)


def test_filter_that_does_not_parse_is_quoted(make_table):
    uri, _ = make_table("toy", 10)
    with pytest.raises(LanceSourceError, match=r"filter 'id ==== 3' is not a valid SQL predicate on table 'toy'"):
        LanceDataModule(uri, "toy", filter="id ==== 3").setup()


def test_unsupported_column_type_found_at_setup(make_table):
    data = toy_table(10).append_column("price", pa.array([1] * 10, pa.decimal128(10, 2)))
    uri, _ = make_table("toy", data)
    with pytest.raises(UnsupportedColumnError, match=r"column 'price' has Arrow type decimal128\(10, 2\).*transform"):
        LanceDataModule(uri, "toy").setup()
    LanceDataModule(uri, "toy", columns=["id", "x"]).setup()


def test_fork_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"'fork' is refused.*forkserver"):
        LanceDataModule("/unused", "toy", num_workers=2, multiprocessing_context="fork")


def test_predict_over_an_empty_filtered_table_is_named(tmp_path):
    uri = str(tmp_path / "db")
    db = lancedb.connect(uri)
    db.create_table("tr", toy_table(10))
    db.create_table("pred", toy_table(3))
    dm = LanceDataModule(uri, "pred", filter="id > 5", splits={"kind": "tables", "tables": {"train": "tr"}})
    with pytest.raises(SplitSpecError, match=r"stage 'predict' reads the whole of table 'pred', which is empty"):
        dm.setup("predict")
