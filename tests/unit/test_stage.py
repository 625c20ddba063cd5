"""Pure parts of the staging layer: where stages live, keys, which columns are stored flat, leases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lance_lightning.source import TableSource
from lance_lightning.stage import Lease, StageError, column_plan, default_stage_root, lease, stage_key
from lance_lightning.stage.store import LEASE_FILE, budget_problem, evict_for, in_use


def test_stages_live_in_the_user_cache_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_stage_root() == tmp_path / "lance-lightning" / "stages"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_stage_root() == tmp_path / "home" / ".cache" / "lance-lightning" / "stages"


SOURCE = TableSource(
    "s3://bucket/db", "my table", 3, storage_options={"aws_secret_access_key": "SECRET"}, version_time="t1"
)
IDS = np.array([5, 1, 9], dtype=np.uint64)


def test_the_key_names_the_table_and_version_and_hashes_everything_that_decides_the_content():
    key = stage_key(SOURCE, ["a", "b"], IDS, filter=None)
    assert key.startswith("my_table-v3-") and "SECRET" not in key
    assert stage_key(SOURCE, ["a", "b"], IDS[::-1].copy(), filter=None) == key
    others = [
        stage_key(TableSource("s3://bucket/other", "my table", 3, version_time="t1"), ["a", "b"], IDS, filter=None),
        stage_key(TableSource("s3://bucket/db", "my table", 4, version_time="t1"), ["a", "b"], IDS, filter=None),
        stage_key(TableSource("s3://bucket/db", "my table", 3, version_time="t2"), ["a", "b"], IDS, filter=None),
        stage_key(SOURCE, ["a"], IDS, filter=None),
        stage_key(SOURCE, ["b", "a"], IDS, filter=None),
        stage_key(SOURCE, ["a", "b"], IDS, filter="a > 1"),
        stage_key(SOURCE, ["a", "b"], IDS[:2], filter=None),
        stage_key(SOURCE, ["a", "b"], IDS, filter=None, layout="arrow"),
    ]
    assert len({key, *others}) == len(others) + 1
    with pytest.raises(ValueError, match="pinned"):
        stage_key(TableSource("u", "t"), ["a"], IDS, filter=None)


def test_fixed_width_columns_are_flat_and_the_rest_go_to_the_arrow_file():
    schema = pa.schema(
        [
            ("emb", pa.list_(pa.float32(), 128)),
            ("label", pa.int64()),
            ("flag", pa.bool_()),
            ("grid", pa.list_(pa.list_(pa.uint8(), 3), 2)),
            ("img", pa.fixed_shape_tensor(pa.float32(), [2, 3])),
            ("text", pa.string()),
            ("seq", pa.list_(pa.int32())),
            ("ts", pa.timestamp("us")),
            ("pair", pa.struct([("a", pa.int32())])),
        ]
    )
    plan = column_plan(schema, "flat")
    assert set(plan) == {"emb", "label", "flag", "grid", "img"}
    assert plan["emb"]["shape"] == [128] and plan["emb"]["dtype"] == "<f4" and plan["emb"]["file"] == "col-0.npy"
    assert plan["grid"]["shape"] == [2, 3] and plan["grid"]["levels"] == [2, 3]
    assert plan["img"]["shape"] == [2, 3] and plan["img"]["levels"] == [6]
    assert column_plan(schema, "arrow") == {}
    assert set(column_plan(schema, "flat", {"emb"})) == {"label", "flag", "grid", "img"}
    with pytest.raises(ValueError, match="layout"):
        column_plan(schema, "parquet")


def make_stage(root: Path, name: str, size: int) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / LEASE_FILE).touch()
    (path / "data").write_bytes(b"\0" * size)
    return path


def test_a_leased_stage_is_in_use_and_never_evicted(tmp_path):
    old, new = make_stage(tmp_path, "old", 1000), make_stage(tmp_path, "new", 1000)
    with lease(old):  # old is the one in use, though new was used last
        with lease(new):
            pass
        assert in_use(old) and not in_use(new)
        assert evict_for(tmp_path, 1500, 2500, keep=tmp_path / "x") == [new]
        assert old.exists() and not new.exists()
        assert budget_problem(tmp_path, 1600, 2500) is not None  # old holds 1000 of it
        assert budget_problem(tmp_path, 1400, 2500) is None
    assert not in_use(old)
    assert evict_for(tmp_path, 1500, 2000, keep=tmp_path / "x") == [old]
    with pytest.raises(StageError, match="gone"):
        Lease(old)


def test_segment_crcs_fed_in_pieces_equal_the_files_segments(tmp_path, monkeypatch):
    import zlib

    from lance_lightning.stage import store

    monkeypatch.setattr(store, "SEGMENT_BYTES", 1000)
    data = np.random.default_rng(0).bytes(5500)
    crc = store.SegmentCrc()
    cuts = [0, 1, 999, 1000, 1001, 2500, 4000, 5500]
    for lo, hi in zip(cuts, cuts[1:]):
        crc.update(data[lo:hi])
    (tmp_path / "f").write_bytes(data)
    want = [f"{zlib.crc32(data[i : i + 1000]):08x}" for i in range(0, 5500, 1000)]
    assert crc.hexes() == store.crc32_file(tmp_path / "f") == want
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert store.SegmentCrc().hexes() == store.crc32_file(empty) == ["00000000"]


def test_the_table_location_has_one_spelling_a_place_and_keeps_what_object_stores_distinguish(tmp_path, monkeypatch):
    from lance_lightning.stage.store import table_location

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    absolute = str((tmp_path / "data" / "lance_db").resolve())
    for spelling in ("data//lance_db", "data/lance_db", "./data/lance_db/", "link/lance_db", f"file://{absolute}"):
        assert table_location(spelling) == absolute, spelling
    assert table_location("s3://bucket//db/") == table_location("S3://bucket/db") == "s3://bucket/db"
    assert table_location("s3://bucket/a/../db") == "s3://bucket/a/../db"  # a key segment, not a parent
    assert table_location("s3://bucket/db?region=x") == "s3://bucket/db?region=x"
    assert table_location("memory://") == "memory://"
    same = [stage_key(TableSource(u, "t", 1), ["a"], IDS, filter=None) for u in ("data//lance_db", absolute)]
    assert same[0] == same[1]
    assert stage_key(TableSource("s3://b/db", "t", 1), ["a"], IDS, filter=None) != stage_key(
        TableSource("s3://b/db2", "t", 1), ["a"], IDS, filter=None
    )
