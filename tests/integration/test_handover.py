"""How much a worker reads and hands over at once never changes which rows come in which batch.

With a ``transform`` (a decode: the cost is the transform, not the read) each batch is handed over
as soon as it is made, instead of a worker transforming a whole group (~16k rows) first. These
tests pin what a user relies on: the same batches, in the same order, for every read path, with and
without a transform, at 0 and 2 workers, with any ``read_group_rows``, and after a mid-epoch
resume; and that the first batch reaches the loop before a worker has transformed a group.
"""

from __future__ import annotations

import pytest

from lance_lightning import LanceDataModule
from tests.helpers import Recorder
from tests.integration.test_resume import datamodule, interrupted_then_resumed, trainer

NUM_ROWS, BATCH = 410, 16
PATHS = {  # read path -> its settings
    "staged-uniform": {},
    "table-uniform": {"staging": "off"},
    "block": {"shuffle": "block", "block_size": 8, "window_blocks": 3},
    "none": {"shuffle": "none"},
}
CHEAP = {("staged-uniform", 2, True), ("staged-uniform", 0, True), ("block", 2, True), ("none", 0, True)}


def batches(uri: str, epoch: int = 1, **settings) -> list[list[int]]:
    dm = LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=BATCH, seed=9, **settings)
    dm.setup("fit")
    dm.samplers["train"].set_epoch(epoch)
    out = [batch["id"].tolist() for batch in dm.train_dataloader()]
    dm.teardown("fit")
    return out


def cells() -> list:
    out = []
    for path in PATHS:
        for workers in (0, 2):
            for transform in (False, True):
                marks = () if (path, workers, transform) in CHEAP else (pytest.mark.long,)
                out.append(
                    pytest.param(path, workers, transform, marks=marks, id=f"{path}-w{workers}-t{int(transform)}")
                )
    return out


@pytest.mark.parametrize(("path", "workers", "transform"), cells())
def test_the_batches_do_not_depend_on_how_many_are_read_at_once(make_table, path, workers, transform):
    uri, _ = make_table("toy", NUM_ROWS)
    settings = PATHS[path]
    reference = batches(uri, **settings)  # the training process alone, no transform, the default groups
    assert sorted(i for b in reference for i in b) == list(range(NUM_ROWS))
    extra = {"num_workers": workers, "transform": "tests.helpers.double_x" if transform else None}
    assert batches(uri, **settings, **extra) == reference
    for rows in (1, 3 * BATCH):  # one batch a hand-over, three batches a hand-over
        assert batches(uri, **settings, **extra, read_group_rows=rows) == reference, rows


@pytest.mark.parametrize("order", [{}, PATHS["block"]], ids=["uniform", "block"])
def test_a_transformed_epoch_resumes_mid_epoch_exactly(make_table, tmp_path, order):
    uri, _ = make_table("toy", 100)
    reference = Recorder()
    trainer(tmp_path).fit(reference, datamodule=datamodule(uri, **order))
    kwargs = {"num_workers": 2, "transform": "tests.helpers.double_x", **order}
    assert interrupted_then_resumed(tmp_path, uri, 5, kwargs, kwargs) == reference.seen


def test_with_a_transform_the_first_batch_is_handed_over_before_a_group_is_made(make_table, tmp_path, monkeypatch):
    """A worker used to transform its whole hand-over (here the whole epoch: 26 batches of a
    stage's ~16k-row group) before the loop got a batch. Now each batch goes as soon as it is
    made: when the first arrives, the 2 workers have made at most their prefetch depth and a few."""
    uri, _ = make_table("toy", NUM_ROWS)
    log = tmp_path / "transform.log"
    monkeypatch.setenv("LL_TEST_TRANSFORM_LOG", str(log))
    dm = LanceDataModule(
        uri,
        "toy",
        splits={"train": 1.0},
        batch_size=BATCH,
        seed=9,
        num_workers=2,
        transform="tests.helpers.logged_slow",
    )
    dm.setup("fit")
    dm.samplers["train"].set_epoch(0)
    log.write_text("")  # setup's check of the batch's keys ran the transform once
    items = iter(dm.train_dataloader())
    next(items)
    made_before_first = len(log.read_text().splitlines())
    rest = sum(1 for _ in items)
    dm.teardown("fit")
    assert rest + 1 == -(-NUM_ROWS // BATCH)
    assert made_before_first <= 2 * 2 + 2, made_before_first  # 2 workers x prefetch 2, and one each in hand
