"""A cache entry is used only if what is read is what was written.

Real on-disk tables, a real ``LanceDataModule(cache=...)`` fill; then the entry is damaged on disk
the way disks and people damage it, and the next setup must serve exactly the table's rows,
rebuilding the entry once with a warning that names it.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lance_lightning import LanceDataModule
from lance_lightning import cache as cache_mod
from tests.conftest import toy_table

NUM_ROWS, DIM = 2000, 64  # x: 512 KB, so 64 KiB overwritten lie inside the data


def datamodule(uri: str, cache: Path, **kwargs) -> LanceDataModule:
    options = {"columns": ["id", "x"], "splits": {"train": 1.0}, "batch_size": 50, "cache": str(cache)}
    return LanceDataModule(uri, "toy", **{**options, **kwargs})


def read_all(dm: LanceDataModule) -> dict[str, np.ndarray]:
    """Every row of the train split, in split order, through the cache entry."""
    dataset = dm.datasets["train"]
    assert isinstance(dataset, cache_mod.CachedBatchDataset)
    batch = dataset[np.arange(len(dataset))]
    return {"id": batch["id"].numpy(), "x": batch["x"].numpy()}


def table_rows() -> dict[str, np.ndarray]:
    table = toy_table(NUM_ROWS, dim=DIM)
    x = table.column("x").combine_chunks().flatten().to_numpy().reshape(NUM_ROWS, DIM)
    return {"id": table.column("id").to_numpy(), "x": x}


def assert_rows_are_the_tables(rows: dict[str, np.ndarray]) -> None:
    want = table_rows()
    np.testing.assert_array_equal(rows["id"], want["id"])
    np.testing.assert_array_equal(rows["x"], want["x"])  # exact: not one value differs


def only_entry(cache: Path) -> Path:
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1, entries
    return entries[0]


def data_file(entry: Path) -> Path:
    files = sorted((entry / "rows.lance" / "data").glob("*.lance"), key=lambda p: p.stat().st_size)
    return files[-1]


def fill_id(entry: Path) -> str:
    return json.loads((entry / "meta.json").read_text())["fill_id"]


def setup_recording(dm: LanceDataModule) -> list[str]:
    """``dm.setup("fit")``; the messages of the cache warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")
    return [str(w.message) for w in caught if "cache entry" in str(w.message)]


def assert_one_warning_naming(messages: list[str], entry: Path, problem: str) -> None:
    assert len(messages) == 1, messages
    message = messages[0]
    for part in (str(entry), "split 'train'", "table 'toy'", "version 1", "rebuilt"):
        assert part in message, (part, message)
    assert re.search(problem, message), (problem, message)


@pytest.fixture
def filled(make_table, tmp_path):
    """A table and a cache holding its train split: ``(uri, cache, entry)``."""
    uri, _ = make_table("toy", NUM_ROWS, dim=DIM)
    cache = tmp_path / "cache"
    dm = datamodule(uri, cache)
    assert setup_recording(dm) == []
    assert_rows_are_the_tables(read_all(dm))
    return uri, cache, only_entry(cache)


def test_a_sound_entry_is_verified_and_reused_without_a_copy(filled):
    uri, cache, entry = filled
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["checksum"] == "crc32" and "row_ids.npy" in meta["files"]
    assert cache_mod.verify_entry(entry) is None
    before = fill_id(entry)
    dm = datamodule(uri, cache)
    assert setup_recording(dm) == []
    assert_rows_are_the_tables(read_all(dm))
    assert fill_id(entry) == before


def test_bytes_overwritten_inside_a_data_file_are_never_served(filled):
    uri, cache, entry = filled
    target = data_file(entry)
    size = target.stat().st_size
    assert size > 4 * 65536
    with open(target, "r+b") as fh:  # 64 KiB of other bytes, same size, in the middle of the data
        fh.seek(size // 4)
        fh.write(np.random.default_rng(1).integers(0, 256, 65536, dtype=np.uint8).tobytes())
    assert target.stat().st_size == size
    dm = datamodule(uri, cache)
    messages = setup_recording(dm)
    assert_rows_are_the_tables(read_all(dm))
    rel = target.relative_to(entry).as_posix()
    assert_one_warning_naming(messages, entry, rf"file {re.escape(rel)} does not hold what was written")
    assert cache_mod.verify_entry(entry) is None  # rebuilt in place, under the same name
    assert setup_recording(datamodule(uri, cache)) == []  # and used from then on


def test_a_deleted_meta_json_gets_the_entry_replaced_once(filled):
    uri, cache, entry = filled
    (entry / "meta.json").unlink()
    dm = datamodule(uri, cache)
    messages = setup_recording(dm)  # was: OSError [Errno 39] Directory not empty, at every start
    assert_rows_are_the_tables(read_all(dm))
    assert_one_warning_naming(messages, entry, "meta.json is missing")
    rebuilt = fill_id(entry)
    again = datamodule(uri, cache)
    assert setup_recording(again) == []
    assert fill_id(entry) == rebuilt  # not copied again
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("truncate", r"file rows\.lance/data/\S+\.lance has [\d,]+ bytes, [\d,]+ were written"),
        ("delete", r"file rows\.lance/data/\S+\.lance is missing"),
        ("delete row_ids", r"file row_ids\.npy is missing"),
        ("add", r"file rows\.lance/_versions/\S+ was not written by the fill"),
    ],
)
def test_a_damaged_or_half_made_entry_is_rebuilt_with_a_warning(filled, damage, problem):
    uri, cache, entry = filled
    target = data_file(entry)
    if damage == "truncate":
        with open(target, "r+b") as fh:
            fh.truncate(target.stat().st_size // 2)
    elif damage == "delete":
        target.unlink()
    elif damage == "delete row_ids":
        (entry / "row_ids.npy").unlink()
    else:  # a file the fill never wrote: a stray manifest would make Lance open another version
        (entry / "rows.lance" / "_versions" / "2.manifest").write_bytes(b"stray")
    dm = datamodule(uri, cache)
    messages = setup_recording(dm)
    assert_rows_are_the_tables(read_all(dm))
    assert_one_warning_naming(messages, entry, problem)


def test_a_read_that_fails_after_setup_names_the_entry_and_what_is_wrong(filled):
    uri, cache, entry = filled
    dm = datamodule(uri, cache)
    assert setup_recording(dm) == []
    target = data_file(entry)
    with open(target, "r+b") as fh:  # damaged mid-run, after setup verified it
        fh.truncate(1000)
    dataset = dm.datasets["train"]
    with pytest.raises(cache_mod.CacheEntryError) as err:
        dataset[np.arange(len(dataset))]
    message = str(err.value)
    for part in (str(entry), "split 'train'", "table 'toy'", "has 1,000 bytes", "next setup rebuilds it"):
        assert part in message, (part, message)
    # and the next setup does rebuild it
    again = datamodule(uri, cache)
    assert len(setup_recording(again)) == 1
    assert_rows_are_the_tables(read_all(again))


# -- cache_max_bytes holds on the bytes actually written ----------------------------------------

SKEWED_ROWS, TRAIN_ROWS, LIMIT, LARGE = 1200, 1000, 1_000_000, 16_000


def skewed_table() -> pa.Table:
    """``id`` and ``blob``: the first half of the train rows 8 bytes, the later ones 16 KB, except
    the rows an evenly spaced 256-row sample of the train split would look at (also 8 bytes)."""
    sampled = set(np.linspace(0, TRAIN_ROWS - 1, 256).astype(np.int64).tolist())
    sizes = [LARGE if TRAIN_ROWS // 2 <= i < TRAIN_ROWS and i not in sampled else 8 for i in range(SKEWED_ROWS)]
    rng = np.random.default_rng(0)
    blobs = [rng.bytes(n) for n in sizes]
    return pa.table({"id": np.arange(SKEWED_ROWS, dtype=np.int64), "blob": pa.array(blobs, pa.binary())})


def test_the_limit_holds_on_bytes_written_and_names_the_split_that_crossed_it(make_table, tmp_path):
    uri, _ = make_table("toy", skewed_table())  # train: ~6 MB; a 256-row sample of it: ~10 KB
    cache = tmp_path / "cache"
    dm = LanceDataModule(
        uri,
        "toy",
        columns=["id", "blob"],
        splits={"kind": "sequential", "counts": {"train": TRAIN_ROWS, "val": SKEWED_ROWS - TRAIN_ROWS}},
        batch_size=50,
        cache=str(cache),
        cache_max_bytes=LIMIT,
    )
    with pytest.raises(cache_mod.CacheLimitError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "split 'train'" in message and "'val'" not in message, message
    assert "cache_max_bytes=1,000,000" in message and "partial copy was removed" in message, message
    assert re.search(r"wrote [\d,]+ bytes \(after [\d,]+ of 1,000 rows\)", message), message
    assert list(cache.iterdir()) == [cache / ".lock"]  # no entry, no partial entry


def test_the_limit_counts_what_is_already_in_the_cache(make_table, tmp_path):
    uri, _ = make_table("toy", NUM_ROWS, dim=DIM)
    cache = tmp_path / "cache"
    datamodule(uri, cache).setup("fit")
    used = cache_mod.directory_bytes(cache)
    dm = datamodule(uri, cache, columns=["id", "x", "y"], cache_max_bytes=used + 100_000)
    with pytest.raises(cache_mod.CacheLimitError, match=rf"beside the {used:,} bytes already there"):
        dm.setup("fit")
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1
    fits = datamodule(uri, cache, columns=["id", "x", "y"], cache_max_bytes=2 * used + 100_000)
    fits.setup("fit")
    assert cache_mod.directory_bytes(cache) <= 2 * used + 100_000


def test_a_copy_that_crosses_the_limit_stops_while_it_is_written(make_table, tmp_path):
    """32 MB of vectors under a 4 MB limit: the copy stops near the limit, not after writing it all."""
    rows, dim = 8000, 1024
    x = np.random.default_rng(0).random(rows * dim, dtype=np.float32)
    data = pa.table({"id": np.arange(rows), "x": pa.FixedSizeListArray.from_arrays(pa.array(x), dim)})
    uri, _ = make_table("toy", data)
    cache = tmp_path / "cache"
    dm = datamodule(uri, cache, cache_max_bytes=4_000_000)
    with pytest.raises(cache_mod.CacheLimitError) as err:
        dm.setup("fit")
    found = re.search(r"wrote ([\d,]+) bytes \(after ([\d,]+) of 8,000 rows\)", str(err.value))
    written, done = (int(found.group(i).replace(",", "")) for i in (1, 2))
    assert 4_000_000 < written < 16_000_000 and done < rows, str(err.value)  # measured: 4.19 MB, 4,088 rows
    assert list(cache.iterdir()) == [cache / ".lock"]
