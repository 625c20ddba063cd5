"""LancePredictionWriter in one process: real tables, real Trainers (DDP: tests/distributed/test_ddp_writer.py).

Every model output here is a known function of the row it was computed from (its ``id`` and
``x``), so each test checks every row's value against that function, not a sample.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import lancedb
import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import pytest
import torch
from hydra import compose, initialize_config_dir

from lance_lightning import LanceDataModule, LancePredictionWriter
from lance_lightning.source import list_table_names
from lance_lightning.writer import KEY_ROWID, STAGING_DIRNAME, PredictionWriteError, TableMovedError
from lance_lightning.writer import callback as writer_module
from lance_lightning.writer import rewrite as writer_rewrite
from lance_lightning.writer.fragments import FILES_LIST, lance_module
from tests.conftest import toy_table

ROWS = 203  # odd: the last batch is short
HAS_LANCE = lance_module() is not None
needs_lance = pytest.mark.skipif(not HAS_LANCE, reason="pylance is not installed: the commit rewrites the table")
rewrites = pytest.mark.skipif(HAS_LANCE, reason="pylance is installed: new columns are merged, not rewritten")
warnings.filterwarnings("ignore", ".*does not have many workers.*")


def outputs_for(ids: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every output kind, each a function of the row only."""
    ids = ids.float()
    return {
        "score": x.sum(1) + ids,  # [B] float32
        "emb": torch.stack([ids, -ids, x[:, 0], x[:, 1]], 1).half(),  # [B, 4] float16
        "grid": torch.stack([ids, x[:, 0], x[:, 1], -ids], 1).reshape(-1, 2, 2).to(torch.bfloat16),  # [B, 2, 2]
        "klass": ids.long() % 5,  # [B] int64
    }


class Model(pl.LightningModule):
    def __init__(self, output: str | None = None, on_batch=None) -> None:
        super().__init__()
        self.output, self.on_batch = output, on_batch
        self.layer = torch.nn.Linear(1, 1)

    def predict_step(self, batch, batch_idx):
        if self.on_batch is not None:
            self.on_batch(batch_idx)
        out = outputs_for(batch["id"], batch["x"])
        return out if self.output is None else out[self.output]


def expected(table: pa.Table, name: str) -> np.ndarray:
    ids = torch.from_numpy(table["id"].to_numpy().copy())
    x = torch.from_numpy(np.stack(table["x"].to_numpy(zero_copy_only=False)).astype(np.float32))
    value = outputs_for(ids, x)[name]
    return value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()


def column_values(table: pa.Table, name: str) -> np.ndarray:
    column = table[name].combine_chunks()
    if isinstance(column.type, pa.FixedShapeTensorType):
        return column.to_numpy_ndarray()
    if pa.types.is_fixed_size_list(column.type):
        return column.flatten().to_numpy().reshape(len(column), -1)
    return column.to_numpy()


def predict(uri, writer, *, output=None, table="rows", on_batch=None, **data):
    dm = LanceDataModule(uri, table, columns=["id", "x"], splits=None, eval_batch_size=16, **data)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[writer],
    )
    trainer.predict(Model(output, on_batch), datamodule=dm, return_predictions=False)
    return writer.result


@pytest.fixture
def rows(make_table):
    uri, table = make_table("rows", ROWS)
    return uri, table


def test_scalar_vector_tensor_and_dict_outputs(rows):
    uri, table = rows
    before = table.to_arrow()
    assert predict(uri, LancePredictionWriter(column="score"), output="score")["version"] == 2
    predict(uri, LancePredictionWriter(column="emb"), output="emb")
    predict(uri, LancePredictionWriter(column="grid"), output="grid")
    result = predict(uri, LancePredictionWriter(column="d"))  # a dict: one column per key
    assert result == {"table": "rows", "version": 5, "columns": ["d_score", "d_emb", "d_grid", "d_klass"],
                      "rows": ROWS, "of": ROWS}  # fmt: skip
    table.checkout_latest()
    after = table.to_arrow()
    assert table.version == 5  # one new version a predict call
    assert after.num_rows == ROWS and after.select(before.column_names).equals(before)  # values and order kept
    schema = table.schema
    assert schema.field("score").type == pa.float32()
    assert schema.field("emb").type == pa.list_(pa.float16(), 4)
    assert schema.field("grid").type == pa.fixed_shape_tensor(pa.float32(), [2, 2])  # bf16 stored as f32
    assert schema.field("grid").metadata == {b"lance_lightning.torch_dtype": b"bfloat16"}
    assert schema.field("d_klass").type == pa.int64()
    for name in ("score", "emb", "grid", "klass"):
        want = expected(after, name)
        for column in (name, f"d_{name}"):
            if column in after.column_names:
                got = column_values(after, column)
                assert got.dtype == want.dtype and np.array_equal(got.reshape(want.shape), want), column
    assert not table_dir(uri).exists()  # the staging files are gone


class ReusedBuffer(pl.LightningModule):
    """Returns views of output buffers that every step overwrites (a preallocated output), a bool
    tensor and a NumPy array: the writers encode on a thread after the step, so each batch's values
    must be taken as they are when the step returns."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.score, self.emb = torch.empty(16), torch.empty(16, 4, dtype=torch.float16)

    def predict_step(self, batch, batch_idx):
        out = outputs_for(batch["id"], batch["x"])
        n = len(batch["id"])
        self.score[:n], self.emb[:n] = out["score"], out["emb"]
        even = batch["id"] % 2 == 0
        return {
            "score": self.score[:n],
            "emb": self.emb[:n],
            "even": even,
            "klass": out["klass"].numpy().astype(np.int32),
        }


@pytest.mark.parametrize("table", [None, "preds"])
def test_outputs_are_taken_when_the_step_returns_not_when_written(rows, table):
    uri, source = rows
    writer = LancePredictionWriter(table=table, overwrite=True)
    dm = LanceDataModule(uri, "rows", columns=["id", "x"], splits=None, eval_batch_size=16)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=[writer])  # fmt: skip
    trainer.predict(ReusedBuffer(), datamodule=dm, return_predictions=False)
    got = lancedb.connect(uri).open_table(table or "rows").to_arrow().sort_by("id")
    assert got.num_rows == ROWS
    assert got.schema.field("even").type == pa.bool_() and got.schema.field("klass").type == pa.int32()
    assert np.array_equal(got["even"].to_numpy(zero_copy_only=False), got["id"].to_numpy() % 2 == 0)
    source_rows = source.to_arrow().sort_by("id")
    for name in ("score", "emb", "klass"):
        want = expected(source_rows, name)
        assert np.array_equal(
            column_values(got, name).reshape(want.shape), want.astype(column_values(got, name).dtype)
        ), name


def table_dir(uri) -> Path:
    return Path(uri) / STAGING_DIRNAME


def test_filter_leaves_nulls_and_other_columns_untouched(make_table):
    # a null in a vector column of >= 10 floats: lancedb's public add() would refuse it ("variable
    # length vectors") or, with on_bad_vectors="null", null out NaNs; the commit writes it back as is
    vectors = np.arange(ROWS * 12, dtype=np.float32).reshape(ROWS, 12)
    wide = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 12)
    uri, table = make_table("rows", toy_table(ROWS).append_column("wide", wide))
    table.update(where="id = 7", values_sql={"wide": "NULL"})
    before = table.to_arrow()
    result = predict(uri, LancePredictionWriter(column="score"), output="score", filter="id % 3 = 0")
    assert result["rows"] == len(range(0, ROWS, 3)) and result["of"] == ROWS
    table.checkout_latest()
    after = table.to_arrow()
    assert after.select(before.column_names).equals(before)
    score = after["score"].to_numpy(zero_copy_only=False)
    predicted = after["id"].to_numpy() % 3 == 0
    assert np.array_equal(score[predicted], expected(after.filter(pa.array(predicted)), "score"))
    assert after["score"].null_count == (~predicted).sum()


def test_existing_column_refused_then_overwritten(rows):
    uri, table = rows
    predict(uri, LancePredictionWriter(column="score"), output="score")
    version = lancedb.connect(uri).open_table("rows").version
    with pytest.raises(PredictionWriteError, match=r"already has column\(s\) \['score'\].*overwrite=True"):
        predict(uri, LancePredictionWriter(column="score"), output="klass")
    assert lancedb.connect(uri).open_table("rows").version == version  # nothing written
    predict(uri, LancePredictionWriter(column="score", overwrite=True), output="klass")
    replaced = lancedb.connect(uri).open_table("rows")
    assert replaced.version == version + 1 and replaced.schema.field("score").type == pa.int64()
    after = replaced.to_arrow()
    assert np.array_equal(after["score"].to_numpy(), expected(after, "klass"))


def test_table_moved_on_before_predict_is_refused(rows):
    uri, table = rows
    dm_version = table.version
    table.add(toy_table(1))  # another writer appends a row
    writer = LancePredictionWriter(column="score")
    with pytest.raises(TableMovedError, match="moved on since the version this run reads"):
        predict(uri, writer, output="score", version=dm_version)
    assert "score" not in lancedb.connect(uri).open_table("rows").schema.names


def test_table_moved_during_predict_is_refused(rows):
    uri, table = rows

    def append(batch_idx):
        if batch_idx == 3:  # another writer commits while this run predicts
            lancedb.connect(uri).open_table("rows").delete("id = 0")

    with pytest.raises(TableMovedError, match="changed while predicting.*nothing was written"):
        predict(uri, LancePredictionWriter(column="score"), output="score", on_batch=append)
    latest = lancedb.connect(uri).open_table("rows")
    assert latest.version == 2 and "score" not in latest.schema.names and latest.count_rows() == ROWS - 1


@rewrites
def test_commit_that_lands_after_another_is_undone(rows, monkeypatch):
    """The race the check before the commit cannot close: another commit lands while ours is
    written. The overwrite is undone by restoring the other commit's version."""
    uri, table = rows
    checks = []

    def not_moved_until_commit(source, latest):
        checks.append(latest.version)
        if len(checks) == 2:  # the commit's own check passed: now another writer commits
            lancedb.connect(uri).open_table("rows").delete("id = 0")
        return None

    monkeypatch.setattr(writer_module, "_table_moved", not_moved_until_commit)
    monkeypatch.setattr(writer_rewrite, "_table_moved", not_moved_until_commit)
    with pytest.raises(TableMovedError, match="got another commit.*restored version 2 as version 4"):
        predict(uri, LancePredictionWriter(column="score"), output="score")
    latest = lancedb.connect(uri).open_table("rows")
    assert latest.version == 4 and "score" not in latest.schema.names and latest.count_rows() == ROWS - 1


@rewrites
def test_indexes_refused_unless_dropped(rows):
    uri, table = rows
    from lancedb.index import BTree

    table.create_index("id", config=BTree())
    with pytest.raises(PredictionWriteError, match=r"has indexes: id_idx \(BTree on id\).*drop_indexes=True"):
        predict(uri, LancePredictionWriter(column="score"), output="score")
    predict(uri, LancePredictionWriter(column="score", drop_indexes=True), output="score")
    latest = lancedb.connect(uri).open_table("rows")
    assert "score" in latest.schema.names and latest.list_indices() == []


def test_separate_table_with_keys(rows):
    uri, table = rows
    row_ids = table.search().select(["_rowid", "id"]).to_arrow()
    result = predict(uri, LancePredictionWriter(column="emb", table="preds"), output="emb", filter="id < 150")
    assert result == {"table": "preds", "version": 1, "columns": ["emb"], "rows": 150}
    preds = lancedb.connect(uri).open_table("preds")
    got = preds.to_arrow()
    assert got.column_names == [KEY_ROWID, "id", "emb"]
    assert np.array_equal(got["id"].to_numpy(), np.arange(150))
    assert np.array_equal(got[KEY_ROWID].to_numpy(), row_ids["_rowid"].to_numpy()[:150])
    source = json.loads(preds.schema.metadata[b"lance_lightning.source"])
    assert (source["table"], source["version"]) == ("rows", table.version)
    x = table.to_arrow().slice(0, 150)
    assert np.array_equal(column_values(got, "emb"), expected(x, "emb"))
    assert "emb" not in lancedb.connect(uri).open_table("rows").schema.names  # the source is untouched

    with pytest.raises(PredictionWriteError, match="'preds' already exists"):
        predict(uri, LancePredictionWriter(column="emb", table="preds"), output="emb")
    predict(uri, LancePredictionWriter(column="s", table="preds", key="id", overwrite=True), output="score")
    replaced = lancedb.connect(uri).open_table("preds").to_arrow()
    assert replaced.column_names == ["id", "s"] and replaced.num_rows == ROWS
    with pytest.raises(PredictionWriteError, match="is the table read"):
        predict(uri, LancePredictionWriter(column="s", table="rows"), output="score")
    with pytest.raises(PredictionWriteError, match=r"key column\(s\) \['nope'\]"):
        predict(uri, LancePredictionWriter(column="s", table="other", key=["nope"]), output="score")


def test_leftover_staging_files_are_removed(rows):
    uri, table = rows
    leftover = table_dir(uri) / "rows.columns-score"
    leftover.mkdir(parents=True)
    (leftover / "rank-00000.arrow.partial").write_bytes(b"\0" * 1000)  # what a SIGKILL leaves
    predict(uri, LancePredictionWriter(column="score"), output="score")
    assert not leftover.exists()


def test_wrong_outputs_are_refused(rows):
    uri, table = rows
    with pytest.raises(PredictionWriteError, match="name its column"):
        predict(uri, LancePredictionWriter(), output="score")
    with pytest.raises(PredictionWriteError, match=r"reserved"):
        predict(uri, LancePredictionWriter(column="_distance"), output="score")

    class Short(Model):
        def predict_step(self, batch, batch_idx):
            return batch["id"][:-1].float()

    dm = LanceDataModule(uri, "rows", columns=["id", "x"], splits=None, eval_batch_size=16)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         callbacks=[LancePredictionWriter(column="s")])  # fmt: skip
    with pytest.raises(PredictionWriteError, match="has 15 rows; the batch has 16"):
        trainer.predict(Short(), datamodule=dm, return_predictions=False)
    assert lancedb.connect(uri).open_table("rows").version == 1
    assert not list(table_dir(uri).rglob("*.arrow*"))


def test_predict_entry_point(digits_db, tmp_path):
    """``lance-lightning-predict``'s ``predict(cfg)``: a checkpoint in, a column of labels out."""
    from lance_lightning.app.models import MLPClassifier
    from lance_lightning.app.predict import CONFIG_PATH
    from lance_lightning.app.predict import predict as predict_job

    uri, name = digits_db(120)
    model = MLPClassifier(hidden_dims=[16])
    ckpt = tmp_path / "model.ckpt"
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "pytorch-lightning_version": "2.6"},
        ckpt,
    )
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose(
            "predict",
            overrides=[
                f"ckpt_path={ckpt}",
                f"data.uri={uri}",
                f"data.table={name}",
                "data/splits=all",
                "trainer=cpu",
                "trainer.enable_progress_bar=false",
                "callbacks.writer.column=label_pred",
                f"paths.output_dir={tmp_path / 'out'}",
            ],
            return_hydra_config=False,
        )
    [result] = predict_job(cfg)
    assert result["columns"] == ["label_pred"] and result["rows"] == 120
    table = lancedb.connect(uri).open_table(name)
    got = table.to_arrow()
    images = torch.from_numpy(got["image"].combine_chunks().to_numpy_ndarray())
    model.eval()
    with torch.no_grad():
        want = model(images).argmax(1).numpy()
    assert np.array_equal(got["label_pred"].to_numpy(), want)


@needs_lance
def test_commit_that_lands_after_another_is_refused_by_lance(rows, monkeypatch):
    """A commit landing between our last check and our Merge: lance's conflict check refuses
    ours, the other commit stays, and our data files are removed."""
    uri, table = rows
    checks = []

    def not_moved_until_commit(source, latest):
        checks.append(latest.version)
        if len(checks) == 2:  # the check before the commit passed: now another writer commits
            lancedb.connect(uri).open_table("rows").delete("id = 0")
        return None

    monkeypatch.setattr(writer_module, "_table_moved", not_moved_until_commit)
    data = Path(uri) / "rows.lance" / "data"
    files_before = set(data.iterdir())
    with pytest.raises(TableMovedError, match="got another commit.*nothing was written"):
        predict(uri, LancePredictionWriter(column="score"), output="score")
    latest = lancedb.connect(uri).open_table("rows")
    assert latest.version == 2 and "score" not in latest.schema.names and latest.count_rows() == ROWS - 1
    assert set(data.iterdir()) == files_before  # our data files are gone


@needs_lance
def test_row_addresses_and_indexes_survive(tmp_path):
    """Several fragments, deleted rows, a filter that skips a whole fragment, a scalar and a
    vector index: the columns are added beside the rows, nothing else moves."""
    from lancedb.index import BTree, IvfFlat

    uri = str(tmp_path / "db")
    db = lancedb.connect(uri)
    table = db.create_table("rows", toy_table(300))
    for start in (300, 600):
        part = toy_table(300)
        part = part.set_column(part.schema.get_field_index("id"), "id", pa.array(np.arange(start, start + 300)))
        table.add(part)
    table.delete("id % 11 = 4")
    table.create_index("id", config=BTree())
    table.create_index("x", config=IvfFlat(num_partitions=2))
    indexes = sorted(i.name for i in table.list_indices())
    before = table.search().select(["id"]).with_row_id(True).to_arrow()
    result = predict(uri, LancePredictionWriter(column="score"), output="score", filter="id < 250 OR id >= 600")
    latest = lancedb.connect(uri).open_table("rows")
    assert result["version"] == latest.version == table.version + 1
    assert sorted(i.name for i in latest.list_indices()) == indexes
    after = latest.search().select(["id", "x", "score"]).with_row_id(True).to_arrow()
    assert after["_rowid"].equals(before["_rowid"]) and after["id"].equals(before["id"])
    ids = after["id"].to_numpy()
    wanted = (ids < 250) | (ids >= 600)
    assert np.array_equal(after["score"].is_null().to_numpy(zero_copy_only=False), ~wanted)
    got = after.filter(pa.array(wanted))
    assert np.array_equal(got["score"].to_numpy(), expected(got, "score"))
    assert latest.search().where("id = 700").select(["score"]).to_arrow().num_rows == 1  # the scalar index works
    hits = latest.search(np.zeros(4, dtype=np.float32), vector_column_name="x").limit(3).select(["id"]).to_arrow()
    assert hits.num_rows == 3  # the vector index works


@needs_lance
def test_data_files_of_a_killed_run_are_removed(rows):
    """What a run killed mid-predict leaves in the table's data directory (listed in its staging
    directory) is removed by the next run; files a version refers to are kept."""
    uri, table = rows
    data = Path(uri) / "rows.lance" / "data"
    files_before = set(data.iterdir())
    leftover = table_dir(uri) / "rows.columns-score"
    leftover.mkdir(parents=True)
    orphan = data / "0123456789abcdef.lance"
    orphan.write_bytes(b"\0" * 100)  # half-written, never committed
    kept = sorted(files_before)[0]
    (leftover / FILES_LIST).write_text(f"{orphan}\n{kept}\n")
    predict(uri, LancePredictionWriter(column="score"), output="score")
    assert not orphan.exists() and kept.exists() and not leftover.exists()
    assert len(set(data.iterdir()) - files_before) == 1  # the new column's one data file


@needs_lance
def test_key_columns_read_from_one_forward_scan_equal_takes_by_address(tmp_path):
    """A new table's key columns come from a forward scan merged with each batch's addresses:
    the same values as a take by address, over fragments and deleted rows, whatever the batches."""
    import lance

    from lance_lightning.writer.table import KeysInOrder

    db = lancedb.connect(tmp_path / "db")
    table = db.create_table("t", pa.table({"id": np.arange(500), "name": [f"n{i}" for i in range(500)]}))
    table.add(pa.table({"id": np.arange(500, 900), "name": [f"n{i}" for i in range(500, 900)]}))
    table.delete("id % 7 = 3")
    dataset = lance.dataset(table.uri)
    live = dataset.to_table(columns=["id"], with_row_address=True)
    addresses = live["_rowaddr"].to_numpy()
    keys = KeysInOrder(dataset, ["id", "name"], scan_rows=16)  # requests span scan batches and share them
    rng = np.random.default_rng(0)
    picked = np.sort(rng.choice(len(addresses), size=400, replace=False))
    for chunk in np.array_split(picked, 13):  # increasing addresses, gaps between and inside batches
        got = keys.take(addresses[chunk])
        want = dataset._take_rows(addresses[chunk].astype(np.int64).tolist(), columns=["id", "name"])
        assert got["id"].to_pylist() == want["id"].to_pylist() == live["id"].to_numpy()[chunk].tolist()
        assert got["name"].to_pylist() == want["name"].to_pylist()
    back = addresses[[5, 6, 7]]  # earlier than the last batch: taken by address instead
    assert keys.take(back)["id"].to_pylist() == live["id"].to_numpy()[[5, 6, 7]].tolist()
    deleted = np.array([3], dtype=np.uint64)  # id 3 was deleted: address 3 is not in the version
    fresh = KeysInOrder(dataset, ["id"])
    with pytest.raises(PredictionWriteError, match="not in the version read"):
        fresh.take(deleted)


class ChangingOutputs(Model):
    """Batch 0 returns ``{"a", "b"}``; later batches what ``later`` makes of the rows' ids."""

    def __init__(self, later) -> None:
        super().__init__()
        self.later = later

    def predict_step(self, batch, batch_idx):
        ids = batch["id"].float()
        return {"a": ids * 2, "b": ids * 1000} if batch_idx == 0 else self.later(ids)


@pytest.mark.parametrize("table", [None, "preds"])
@pytest.mark.parametrize(
    ("later", "message"),
    [
        (lambda ids: {"b": ids * 1000, "a": ids * 2}, r"outputs \['b', 'a'\], earlier batches \['a', 'b'\]"),
        (lambda ids: {"a": ids * 2, "c": ids * 1000}, r"outputs \['a', 'c'\], earlier batches \['a', 'b'\]"),
        (lambda ids: {"a": ids.double() * 2, "b": ids * 1000}, "'a' is double in this batch, float in earlier"),
    ],
    ids=["keys-reordered", "key-renamed", "type-changed"],
)
def test_outputs_that_change_after_the_first_batch_are_refused(rows, later, message, table):
    """A dict output is matched to its columns by name and type: a batch whose keys come in another
    order (or another name or dtype) is refused, never written into the first batch's columns by
    position; nothing is written."""
    uri, _ = rows
    dm = LanceDataModule(uri, "rows", columns=["id", "x"], splits=None, eval_batch_size=16)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         callbacks=[LancePredictionWriter(table=table)])  # fmt: skip
    with pytest.raises(PredictionWriteError, match=message):
        trainer.predict(ChangingOutputs(later), datamodule=dm, return_predictions=False)
    db = lancedb.connect(uri)
    assert db.open_table("rows").version == 1
    assert list_table_names(db) == ["rows"]  # no half-made table left listed
    assert not table_dir(uri).exists()  # nor staging files


def test_a_table_of_its_own_keys_the_rows_of_a_table_with_stable_row_ids(tmp_path):
    """On a table with stable row ids, compaction moves rows to new addresses but keeps their
    ``_rowid``: the new table's ``source_rowid`` is that id and its ``id`` key the row's own."""
    import lance

    uri = str(tmp_path / "db")
    rows = pa.table({"id": np.arange(90), "x": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(180.0)), 2)})
    lance.write_dataset(rows.slice(0, 40), f"{uri}/t.lance", enable_stable_row_ids=True)
    lance.write_dataset(rows.slice(40), f"{uri}/t.lance", mode="append")
    dataset = lance.dataset(f"{uri}/t.lance")
    dataset.delete("id % 9 = 4")
    dataset.optimize.compact_files()
    source = lance.dataset(f"{uri}/t.lance").to_table(columns=["id"], with_row_id=True, with_row_address=True)
    assert source["_rowid"] != source["_rowaddr"]  # the rows moved

    result = predict(uri, LancePredictionWriter(column="p", table="preds"), output="score", table="t")
    assert result["rows"] == source.num_rows
    got = lancedb.connect(uri).open_table("preds").to_arrow().sort_by("id")
    assert got["id"].to_pylist() == source["id"].to_pylist()
    by_id = dict(zip(source["id"].to_pylist(), source["_rowid"].to_pylist()))
    assert got[KEY_ROWID].to_pylist() == [by_id[i] for i in got["id"].to_pylist()]
    kept = lance.dataset(f"{uri}/t.lance").to_table(columns=["id", "x"]).sort_by("id")
    np.testing.assert_array_equal(got["p"].to_numpy(), expected(kept, "score"))


@needs_lance
def test_a_rewrite_lance_refuses_is_a_clear_error_and_leaves_the_table(tmp_path):
    """overwrite=True rewrites the table; lance refuses a rewrite whose vector column holds a NaN.
    The error names the table and what to do instead, and the table stays at its version."""
    import lance

    uri = str(tmp_path / "db")
    vectors = np.ones((40, 16), np.float32)
    vectors[3, 0] = np.nan
    lance.write_dataset(
        pa.table({"id": np.arange(40), "x": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 16)}),
        f"{uri}/t.lance",
    )
    assert predict(uri, LancePredictionWriter(column="p"), output="klass", table="t")["version"] == 2  # a merge
    with pytest.raises(PredictionWriteError, match=r"lance could not rewrite table 't' .*NaN.*unchanged \(version 2\)"):
        predict(uri, LancePredictionWriter(column="p", overwrite=True), output="klass", table="t")
    table = lancedb.connect(uri).open_table("t")
    assert table.version == 2
    assert table.to_arrow()["p"].to_pylist() == (np.arange(40) % 5).tolist()


def test_a_run_writing_what_a_live_run_writes_is_refused_and_leaves_its_files(rows):
    """Issue 29: the second run took the first one's live staging directory for an interrupted run's
    and deleted its data files. A live run's lock (here held by this process, as a run would) refuses it."""
    from lance_lightning.writer.lock import StagingBusyError, lock_run

    uri, table = rows
    live = table_dir(uri) / "rows.columns-score"
    lock, _ = lock_run(live, "column(s) 'score' of table 'rows'")
    try:
        live.mkdir()
        (live / "data-files-00000.txt").write_text(f"{Path(uri) / 'rows.lance' / 'data' / 'live.lance'}\n")
        with pytest.raises(StagingBusyError, match=r"writing column\(s\) 'score' of table 'rows' now \(pid"):
            predict(uri, LancePredictionWriter(column="score"), output="score")
        assert (live / "data-files-00000.txt").exists()  # the live run's files are left alone
        table.checkout_latest()
        assert table.version == 1
    finally:
        lock.release(remove=True)
    predict(uri, LancePredictionWriter(column="score"), output="score")  # that run ended: its files go
    assert not live.exists()
