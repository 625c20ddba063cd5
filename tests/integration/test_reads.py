"""Reading by offset (range scans + takes) on a real table with several fragments and deletions."""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from lance_lightning.reads import MIN_SCAN_ROWS, TableChangedError, offsets_of, read_offsets, scan_row_ids
from tests.conftest import toy_table


@pytest.fixture(scope="module")
def fragmented(tmp_path_factory):
    """12,000 rows written in three appends (three fragments), then every 7th id deleted."""
    db = lancedb.connect(str(tmp_path_factory.mktemp("reads") / "db"))
    rows = toy_table(12_000)
    table = db.create_table("frag", rows.slice(0, 5_000))
    table.add(rows.slice(5_000, 4_000))
    table.add(rows.slice(9_000))
    table.delete("id % 7 = 3")
    truth = table.search().select(["id", "x"]).limit(None).to_arrow()
    return table, truth


def test_row_addresses_map_to_offsets_in_scan_order(fragmented):
    table, truth = fragmented
    scan_ids = scan_row_ids(table)
    assert len(scan_ids) == truth.num_rows and scan_ids.max() >= 2 << 32  # three fragments
    picked = np.sort(np.random.default_rng(0).choice(len(scan_ids), 500, replace=False))
    offsets = offsets_of(scan_ids[picked], scan_ids, table_name="frag", version=table.version)
    assert offsets.tolist() == picked.tolist()
    by_address = table.take_row_ids(scan_ids[picked].tolist()).select(["id"]).to_arrow()["id"].to_pylist()
    assert read_offsets(table, offsets, ["id"])["id"].to_pylist() == by_address


def _cases(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    dense = np.arange(1_000, 1_000 + 3 * MIN_SCAN_ROWS)
    return {
        "one row": np.array([17]),
        "sparse": np.sort(rng.choice(n, 300, replace=False)),
        "dense run": dense,
        "dense with holes": dense[rng.random(len(dense)) < 0.7],
        "run across fragments": np.arange(4_000, 4_000 + MIN_SCAN_ROWS * 2),
        "runs and scattered rows": np.unique(
            np.concatenate([dense, np.arange(n - MIN_SCAN_ROWS, n), rng.choice(n, 50, replace=False)])
        ),
        "everything": np.arange(n),
    }


@pytest.mark.parametrize("case", list(_cases(10_000)))
def test_read_offsets_returns_exactly_the_rows_at_those_offsets(fragmented, case):
    table, truth = fragmented
    offsets = _cases(truth.num_rows)[case]
    got = read_offsets(table, offsets, ["id", "x"])
    assert got.schema.names == ["id", "x"]
    assert got.to_pydict() == truth.take(pa.array(offsets)).to_pydict()


def test_read_offsets_of_nothing_is_an_empty_table_with_the_columns(fragmented):
    table, _ = fragmented
    got = read_offsets(table, np.array([], dtype=np.int64), ["id", "x"])
    assert got.num_rows == 0 and got.schema.names == ["id", "x"]


def test_rows_missing_from_the_table_are_named(fragmented):
    table, _ = fragmented
    scan_ids = scan_row_ids(table)
    deleted = np.array([3], dtype=np.uint64)  # id 3 sits at address 3 and was deleted
    with pytest.raises(TableChangedError, match=r"1 of 1 rows of the split are not in table 'frag' \(version \d+\)"):
        offsets_of(deleted, scan_ids, table_name="frag", version=table.version)
    with pytest.raises(TableChangedError, match="got"):
        read_offsets(table, np.array([len(scan_ids) + 5]), ["id"])
