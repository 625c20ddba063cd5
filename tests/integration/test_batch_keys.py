"""``batch_keys``: an unmodified tuple-unpacking LightningModule (``x, y = batch``) trains from a table.

Every read path (staged, table, block, none) at 0 and 2 workers, with a user transform returning
a dict, and plain PyTorch iteration of ``train_dataloader()``; the tuples hold exactly the values
of the dict batches. The 2-process DDP run is in ``tests/distributed/test_batch_keys_ddp.py``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lance_lightning import LanceDataModule
from tests.helpers import quiet_trainer


class Unpacking(pl.LightningModule):
    """What most LightningModules look like: ``x, y = batch``, nothing about dicts or tables."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)
        self.rows = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.rows += x.size(0)
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def scaled(batch: dict) -> dict:
    """A user transform that returns a new dict with keys of its own."""
    return {"features": batch["x"] * 2, "target": batch["y"]}


SPLITS = {"train": 0.8, "val": 0.2}
# (read path settings, workers): cheap cells here, forkserver workers (seconds each) under `long`
PATHS = {
    "staged": {"shuffle": "uniform"},
    "table": {"shuffle": "uniform", "staging": "off"},
    "block": {"shuffle": "block", "block_size": 4, "window_blocks": 2},
    "none": {"shuffle": "none"},
}
CELLS = [
    pytest.param("staged", 0),
    pytest.param("table", 0),
    pytest.param("block", 0),
    pytest.param("none", 0),
    pytest.param("staged", 2),
    pytest.param("table", 2, marks=pytest.mark.long),
    pytest.param("block", 2, marks=pytest.mark.long),
    pytest.param("none", 2, marks=pytest.mark.long),
]


@pytest.mark.parametrize(("path", "workers"), CELLS)
def test_a_tuple_unpacking_model_trains(make_table, tmp_path, path, workers):
    uri, _ = make_table("toy", 60)
    dm = LanceDataModule(
        uri,
        "toy",
        columns=["x", "y"],
        splits=SPLITS,
        batch_size=8,
        num_workers=workers,
        batch_keys=("x", "y"),
        **PATHS[path],
    )
    model = Unpacking()
    quiet_trainer(tmp_path, max_epochs=1).fit(model, datamodule=dm)
    assert model.rows == 48  # every train row, as x of shape (rows, 4)


@pytest.mark.parametrize(("path", "workers"), [("staged", 0), ("block", 0), ("table", 0), ("staged", 2)])
def test_tuples_hold_the_dict_batches_values(make_table, path, workers):
    """Plain PyTorch: ``train_dataloader()`` hands out the same values, as tuples, in the same order."""
    uri, _ = make_table("toy", 50)
    settings = dict(splits=SPLITS, batch_size=8, num_workers=workers, transform=scaled, seed=3, **PATHS[path])
    keyed = LanceDataModule(uri, "toy", batch_keys=["target", "features"], **settings)
    plain = LanceDataModule(uri, "toy", **settings)
    for dm in (keyed, plain):
        dm.setup("fit")
    tuples, dicts = list(keyed.train_dataloader()), list(plain.train_dataloader())
    assert len(tuples) == len(dicts) == 5
    for got, want in zip(tuples, dicts):
        assert type(got) is tuple and len(got) == 2
        assert torch.equal(got[0], want["target"]) and torch.equal(got[1], want["features"])


def test_a_missing_key_is_refused_at_setup_naming_the_keys_there(make_table):
    uri, _ = make_table("toy", 30)
    dm = LanceDataModule(uri, "toy", splits=SPLITS, batch_keys=("x", "label"))
    with pytest.raises(ValueError, match=r"batch_keys names 'label'.*stage 'train'.*'id', 'x', 'y', 'name'"):
        dm.setup("fit")


def test_a_missing_key_after_the_transform_names_the_transform(make_table):
    uri, _ = make_table("toy", 30)
    dm = LanceDataModule(uri, "toy", splits=SPLITS, transform=scaled, batch_keys=("x", "y"))
    with pytest.raises(ValueError, match=r"batch_keys names 'x', 'y'.*after transform .*scaled.*'features', 'target'"):
        dm.setup("fit")


def test_a_transform_that_returns_no_dict_is_refused(make_table):
    uri, _ = make_table("toy", 30)
    dm = LanceDataModule(uri, "toy", splits=SPLITS, transform=lambda b: (b["x"], b["y"]), batch_keys=("x", "y"))
    with pytest.raises(ValueError, match=r"picks keys out of dict batches.*are a tuple"):
        dm.setup("fit")


@pytest.mark.parametrize(("value", "message"), [("x", "pass a list: batch_keys=\\['x'\\]"), ([], "at least one")])
def test_bad_batch_keys_are_refused_when_built(value, message):
    with pytest.raises(ValueError, match=message):
        LanceDataModule("/unused", "toy", batch_keys=value)


class UnpackingPredictor(Unpacking):
    def predict_step(self, batch, batch_idx):
        x, y = batch
        return y


@pytest.mark.parametrize("workers", [0, 2])
def test_predict_gets_tuples_too(make_table, tmp_path, workers):
    """Lightning rebuilds a predict loader (to track indices): the tuples survive that."""
    uri, _ = make_table("toy", 30)
    dm = LanceDataModule(
        uri, "toy", columns=["x", "y"], splits=None, batch_size=8, num_workers=workers, batch_keys=("x", "y")
    )
    out = quiet_trainer(tmp_path).predict(UnpackingPredictor(), datamodule=dm)
    assert torch.cat(out).tolist() == [i % 3 for i in range(30)]
