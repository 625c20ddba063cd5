"""``nulls="mask"``: every batch carries the same keys whatever reads it (0 or 2 workers, a staged
split or the table) and whichever rows it holds: a nullable column's ``<column>_valid`` is in every
batch, all True where the batch has no null, so a step that reads it never meets a batch without."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lance_lightning import LanceDataModule

ROWS = 40_000  # with 2 workers, 16 batches of 1,000 rows are read together: a null in one of them...
BATCH = 1000


@pytest.fixture(scope="module")
def table_uri(tmp_path_factory):
    import lancedb

    ids = np.arange(ROWS)
    score = pa.array(ids * 0.5, pa.float64(), mask=ids == 0)  # one null, in the first batch only
    rows = pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "score": score,
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ids, 2).astype(np.float32)), 2),
        }
    )
    uri = str(tmp_path_factory.mktemp("masks") / "db")
    lancedb.connect(uri).create_table("masked", rows)
    return uri


def batches(uri: str, **kwargs) -> list[dict]:
    dm = LanceDataModule(
        uri, "masked", batch_size=BATCH, splits={"train": 1.0}, shuffle="none", nulls="mask", seed=0, **kwargs
    )
    dm.setup("fit")
    dm.samplers["train"].set_epoch(0)
    return list(dm.train_dataloader())


@pytest.mark.parametrize(
    "settings", [{"num_workers": 0}, {"num_workers": 2}, {"staging": "off"}, {"staging": "always", "num_workers": 2}]
)
def test_every_batch_has_the_same_keys_and_masks(table_uri, settings):
    got = batches(table_uri, **settings)
    assert len(got) == ROWS // BATCH
    for batch in got:
        assert list(batch) == ["id_valid", "id", "score_valid", "score", "emb_valid", "emb"]
        ids = batch["id"].numpy()
        np.testing.assert_array_equal(batch["score_valid"].numpy(), ids != 0)
        np.testing.assert_array_equal(batch["score"].numpy(), np.where(ids == 0, 0.0, ids * 0.5))
        np.testing.assert_array_equal(batch["emb"].numpy(), np.repeat(ids, 2).reshape(-1, 2).astype(np.float32))
        assert batch["id_valid"].all() and batch["emb_valid"].all()
    assert np.concatenate([b["id"].numpy() for b in got]).tolist() == list(range(ROWS))


# Issue 29 item 7: a real column named like a mask collided with it silently (the mask dropped, or
# the column replaced by the mask, depending on the column order), staged and unstaged alike.
@pytest.fixture(scope="module")
def colliding_uri(tmp_path_factory):
    import lancedb

    ids = np.arange(100)
    score = pa.array(ids * 0.5, mask=ids % 7 == 0)
    pair = pa.StructArray.from_arrays([pa.array(ids * 1.0, mask=ids % 5 == 0), pa.array(ids)], names=["a", "b"])
    uri = str(tmp_path_factory.mktemp("collisions") / "db")
    db = lancedb.connect(uri)
    db.create_table("mask_first", pa.table({"id": ids, "score": score, "score_valid": ids * 10}))
    db.create_table("column_first", pa.table({"id": ids, "score_valid": ids * 10, "score": score}))
    db.create_table("struct", pa.table({"id": ids, "pair": pair, "pair_valid": ids * 10}))
    return uri


def masked(uri: str, table: str, **kwargs) -> LanceDataModule:
    return LanceDataModule(uri, table, splits={"train": 1.0}, nulls="mask", shuffle="none", batch_size=10, **kwargs)


@pytest.mark.parametrize("staging", ["off", "always"])
@pytest.mark.parametrize(
    ("table", "column", "mask_of"),
    [
        ("mask_first", "score_valid", "score"),
        ("column_first", "score_valid", "score"),
        ("struct", "pair_valid", "pair"),
    ],
)
def test_a_column_named_like_a_mask_is_refused_at_setup(colliding_uri, staging, table, column, mask_of):
    dm = masked(colliding_uri, table, staging=staging)
    with pytest.raises(ValueError, match=rf"table {table!r}: .*column {mask_of!r} and column {column!r} .*`columns`"):
        dm.setup("fit")


@pytest.mark.parametrize("staging", ["off", "always"])
def test_leaving_one_of_the_two_out_reads_both_meanings_apart(colliding_uri, staging):
    batch = next(iter(_train_loader(masked(colliding_uri, "mask_first", staging=staging, columns=["id", "score"]))))
    np.testing.assert_array_equal(batch["score_valid"].numpy(), batch["id"].numpy() % 7 != 0)
    kept = next(
        iter(_train_loader(masked(colliding_uri, "mask_first", staging=staging, columns=["id", "score_valid"])))
    )
    np.testing.assert_array_equal(kept["score_valid"].numpy(), kept["id"].numpy() * 10)
    assert kept["id_valid"].all() and "score" not in kept


def _train_loader(dm: LanceDataModule):
    dm.setup("fit")
    return dm.train_dataloader()
