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
