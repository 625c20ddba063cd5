"""A stage is served only if what is read is what was written.

A real on-disk table and a real fill; then the stage is damaged on disk the way disks and people
damage it, and the next ``ensure_stage`` must serve exactly the table's rows, rebuilding the stage
once with a :class:`StageWarning` naming it; a reader that meets the damage later raises
:class:`StageError` naming it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from lance_lightning.source import TableSource
from lance_lightning.stage import StagedRows, StageError, StageWarning, ensure_stage, release_stage, store, verify_stage
from tests.conftest import toy_table

NUM_ROWS, DIM = 2000, 64  # x: 512 KB, so 64 KiB overwritten lie inside the data


@pytest.fixture
def staged(make_table, tmp_path):
    """``stage() -> (path, warnings)``: ensure the train split's stage; and the first path."""
    uri, _ = make_table("toy", NUM_ROWS, dim=DIM)
    table = lancedb.connect(uri).open_table("toy")
    source = TableSource(uri, "toy", table.version).stamped(table)
    ids = np.sort(table.search().select(["_rowid"]).limit(None).to_arrow()["_rowid"].to_numpy())

    def stage() -> tuple[Path, list[str]]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path = ensure_stage(source, table, ids, ["id", "x"], root=tmp_path / "stages", split_name="train")
        release_stage(path)
        return path, [str(w.message) for w in caught if issubclass(w.category, StageWarning)]

    path, messages = stage()
    assert messages == []
    assert_rows_are_the_tables(path)
    return stage, path


def assert_rows_are_the_tables(path: Path) -> None:
    rows = StagedRows(path)
    want = toy_table(NUM_ROWS, dim=DIM)
    got = rows.take_into_tensors(np.arange(NUM_ROWS))
    np.testing.assert_array_equal(got["id"].numpy(), want.column("id").to_numpy())
    x = want.column("x").combine_chunks().flatten().to_numpy().reshape(NUM_ROWS, DIM)
    np.testing.assert_array_equal(got["x"].numpy(), x)  # exact: not one value differs
    rows.close()


def fill_id(path: Path) -> str:
    return json.loads((path / "manifest.json").read_text())["fill_id"]


def assert_one_warning_naming(messages: list[str], where: Path, problem: str) -> None:
    assert len(messages) == 1, messages
    for part in (str(where), "split 'train'", "table 'toy'", "version 1", "rebuilt"):
        assert part in messages[0], (part, messages[0])
    assert re.search(problem, messages[0]), (problem, messages[0])


def test_a_sound_stage_is_verified_and_reused_without_a_copy(staged):
    stage, path = staged
    before = fill_id(path)
    assert verify_stage(path) is None
    again, messages = stage()
    assert again == path and messages == [] and fill_id(path) == before


def overwrite_middle(target: Path, *, keep_mtime: bool = False) -> None:
    """64 KiB of other bytes, same size, in the middle of the data; ``keep_mtime``: the modification
    time put back as the fill left it (what only the CRC-32 finds)."""
    before = target.stat()
    with open(target, "r+b") as fh:
        fh.seek(before.st_size // 4)
        fh.write(np.random.default_rng(1).integers(0, 256, 65536, dtype=np.uint8).tobytes())
    if keep_mtime:
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_size == before.st_size


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("overwrite", r"file col-1\.npy was modified after the fill \(modification time \d+ ns, the fill's \d+ ns\)"),
        (
            "overwrite-keep-mtime",
            r"file col-1\.npy does not hold what was written \(bytes [\d,-]+: crc32 \w+, recorded \w+\)",
        ),
        ("truncate", r"file col-1\.npy has [\d,]+ bytes, [\d,]+ were written"),
        ("delete", r"file col-1\.npy is missing"),
        ("extra", r"file stray\.npy was not written by the fill"),
        ("manifest", r"manifest\.json is missing"),
        ("schema", r"file schema\.arrow was modified after the fill"),
        ("lease", r"\.lease file is missing"),
    ],
)
def test_a_damaged_stage_is_never_served_but_rebuilt_once_with_a_warning(staged, damage, problem):
    stage, path = staged
    before = fill_id(path)
    target = path / "col-1.npy"
    if damage.startswith("overwrite"):
        overwrite_middle(target, keep_mtime=damage == "overwrite-keep-mtime")
    elif damage == "truncate":
        with open(target, "r+b") as fh:
            fh.truncate(target.stat().st_size // 2)
    elif damage == "delete":
        target.unlink()
    elif damage == "extra":
        (path / "stray.npy").write_bytes(b"stray")
    elif damage == "manifest":
        (path / "manifest.json").unlink()
    elif damage == "schema":
        data = bytearray((path / "schema.arrow").read_bytes())
        data[-9] ^= 0xFF
        (path / "schema.arrow").write_bytes(bytes(data))
    else:
        (path / ".lease").unlink()
    again, messages = stage()
    assert again == path
    assert_one_warning_naming(messages, path, problem)
    assert fill_id(path) != before and verify_stage(path) is None  # rebuilt in place, under the same name
    assert_rows_are_the_tables(path)
    assert stage()[1] == []  # and used from then on


def test_a_half_made_fill_is_removed_and_the_stage_made_once(staged, tmp_path):
    stage, path = staged
    tmp = path.parent / f".tmp-{path.name}"
    shutil.copytree(path, tmp)  # a filler that died before the rename
    (tmp / "manifest.json").unlink()
    shutil.rmtree(path)
    again, messages = stage()
    assert again == path
    assert_one_warning_naming(messages, tmp, "a fill that did not finish left it half-made")
    assert not tmp.exists()
    assert_rows_are_the_tables(path)


def test_a_reader_that_meets_damage_after_setup_names_the_stage(staged):
    stage, path = staged
    with open(path / "col-1.npy", "r+b") as fh:  # damaged mid-run, after setup verified it
        fh.truncate(1000)
    with pytest.raises(StageError) as err:
        StagedRows(path).take([0])  # a DataLoader worker opening it
    for part in (str(path), "split 'train'", "table 'toy'", "has 1,000 bytes", "next setup rebuilds it"):
        assert part in str(err.value), (part, str(err.value))
    assert len(stage()[1]) == 1  # and the next setup does rebuild it
    assert_rows_are_the_tables(path)


def test_every_segment_is_checked_and_a_damaged_one_is_named(make_table, tmp_path, monkeypatch):
    """The manifest records a CRC-32 a segment; verification checks them on several threads and
    names the byte range that differs (segments of 50,000 bytes here: x is 512 KB)."""
    monkeypatch.setattr(store, "SEGMENT_BYTES", 50_000)
    monkeypatch.setattr(store, "VERIFY_THREADS", 4)
    uri, _ = make_table("toy", NUM_ROWS, dim=DIM)
    table = lancedb.connect(uri).open_table("toy")
    source = TableSource(uri, "toy", table.version).stamped(table)
    ids = np.sort(table.search().select(["_rowid"]).limit(None).to_arrow()["_rowid"].to_numpy())
    path = ensure_stage(source, table, ids, ["id", "x"], root=tmp_path / "stages", split_name="train")
    release_stage(path)
    files = json.loads((path / "manifest.json").read_text())["files"]
    x = files["col-1.npy"]
    assert len(x["crc32"]) == -(-x["bytes"] // 50_000) > 10
    assert verify_stage(path) is None
    overwrite_middle(path / "col-1.npy", keep_mtime=True)  # 64 KiB from byte size // 4: segments 2 and 3
    start = (x["bytes"] // 4) // 50_000 * 50_000
    problem = verify_stage(path)
    assert problem is not None and f"file col-1.npy does not hold what was written (bytes {start:,}-" in problem


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system (tmpfs), where this machine lets the tests mount one (root)."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()[:200]}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode:
            subprocess.run(["umount", "-l", str(mount)], check=False)  # never leave it mounted


def test_a_stage_file_without_room_fails_before_a_byte_is_copied(small_disk):
    """The flat column files are preallocated: a disk that fills up between the budget's check and
    the fill (another job writing) fails at the file's creation, naming it, instead of mid-copy."""
    from lance_lightning.stage.write import _NpyWriter

    with pytest.raises(OSError, match=r"no room for the stage file \(4,194,432 bytes\).*x\.npy") as raised:
        _NpyWriter(small_disk / "x.npy", np.dtype(np.float32), (8192, 128))
    assert raised.value.errno == 28  # ENOSPC
    assert (small_disk / "x.npy").stat().st_size == 0  # nothing copied, nothing reserved
    values = np.arange(1024 * 128, dtype=np.float32).reshape(1024, 128)  # 0.5 MB fits
    writer = _NpyWriter(small_disk / "y.npy", values.dtype, values.shape)
    writer.write(values)
    writer.close()
    assert np.array_equal(np.load(small_disk / "y.npy"), values)


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only file system (tmpfs mounted ``ro``), where this machine lets the tests mount one."""
    import subprocess

    mount = tmp_path / "read-only"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot mount a read-only tmpfs here: {made.stderr.decode().strip()[:200]}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode:
            subprocess.run(["umount", "-l", str(mount)], check=False)  # never leave it mounted


def short_then_long_names(num_rows: int) -> pa.Table:
    """``id`` and ``name``: the first 1,024 rows (what the size estimate samples) 8-byte names,
    the rest 1,000 bytes: the estimate is ~130 kB, the stage ~2 MB."""
    names = [f"row-{i:04d}" if i < 1024 else f"{i:04d}" + "x" * 996 for i in range(num_rows)]
    return pa.table({"id": np.arange(num_rows, dtype=np.int64), "name": names})


def setup_capturing(dm) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")
    return [str(w.message) for w in caught]


def assert_names_the_disk_and_settings(message: str, root: Path, problem: str) -> None:
    for part in ("split 'train'", "table 'toy'", str(root), problem, "cache=", "XDG_CACHE_HOME", "staging='off'"):
        assert part in message, (part, message)


def test_a_disk_that_fills_during_the_fill_falls_back_to_the_table_or_names_it(make_table, small_disk, monkeypatch):
    """The size estimate (from the table's first rows) is too low and the disk fills mid-fill: by
    default the split is read from the table, with one warning naming the stage, the split, the disk
    and the settings; ``staging='always'`` raises a ``StageDiskError`` (a StageError) saying it."""
    from lance_lightning import LanceDataModule
    from lance_lightning.dataset import LanceBatchDataset

    uri, _ = make_table("toy", short_then_long_names(3000))
    monkeypatch.setenv("XDG_CACHE_HOME", str(small_disk))
    root = small_disk / "lance-lightning" / "stages"
    settings = {"columns": ["id", "name"], "batch_size": 100, "cache_max_bytes": 10**9}

    dm = LanceDataModule(uri, "toy", **settings)
    messages = [m for m in setup_capturing(dm) if "not staged" in m]
    assert len(messages) == 1, messages
    assert_names_the_disk_and_settings(messages[0], root, "No space left on device")
    assert "the disk ran out of room during the fill, after" in messages[0]
    assert isinstance(dm.datasets["train"], LanceBatchDataset)
    ids = sorted(i for b in dm.train_dataloader() for i in b["id"].tolist())
    assert len(ids) == len(set(ids)) == len(dm.split_rows("train"))  # every row of the split, once
    assert not list(root.glob(".tmp-*")) and store.stages(root) == []  # no partial stage left

    with pytest.raises(StageError) as raised:  # a StageDiskError
        LanceDataModule(uri, "toy", staging="always", **settings).setup("fit")
    assert_names_the_disk_and_settings(str(raised.value), root, "No space left on device")


def test_a_read_only_stage_directory_falls_back_to_the_table_or_names_it(make_table, read_only_dir, monkeypatch):
    """Default staging reads the table, with one warning naming the directory and the settings that
    choose it; staging that was asked for raises a :class:`StageError` naming them."""
    from lance_lightning import LanceDataModule
    from lance_lightning.dataset import LanceBatchDataset

    uri, _ = make_table("toy", 500)
    monkeypatch.setenv("XDG_CACHE_HOME", str(read_only_dir))
    root = read_only_dir / "lance-lightning" / "stages"
    dm = LanceDataModule(uri, "toy", columns=["id", "x"], batch_size=50)
    messages = [m for m in setup_capturing(dm) if "not staged" in m]
    assert len(messages) == 1, messages
    assert_names_the_disk_and_settings(messages[0], root, "Read-only file system")
    assert isinstance(dm.datasets["train"], LanceBatchDataset)
    assert sum(len(b["id"]) for b in dm.train_dataloader()) == len(dm.split_rows("train"))

    for explicit in ({"staging": "always"}, {"cache": str(read_only_dir / "stages")}):
        with pytest.raises(StageError) as raised:
            LanceDataModule(uri, "toy", columns=["id", "x"], batch_size=50, **explicit).setup("fit")
        where = root if "staging" in explicit else read_only_dir / "stages"
        assert_names_the_disk_and_settings(str(raised.value), where, "Read-only file system")
