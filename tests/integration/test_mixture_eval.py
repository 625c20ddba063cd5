"""``eval_by_source``: validation and test read one loader per ``mix`` source on real tables and
Trainers: each loader reads exactly its source's rows (the val split cut by a source's filter, or
the table it names), every batch carries the source, per-source metrics equal a hand computation,
other tables stay pinned at a checkpoint's versions, and what cannot work is refused, naming it."""

from __future__ import annotations

from pathlib import Path

import lancedb
import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import pytest
import torch

from lance_lightning import LanceDataModule
from lance_lightning.mix import MixSpecError
from lance_lightning.monitor.advice import read_path
from lance_lightning.options import SettingError
from lance_lightning.splits import SplitSpecError
from tests.conftest import toy_table
from tests.helpers import Preempted, SaveThenStop, quiet_trainer

SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}
MIX = {
    "even": {"proportion": 0.5, "filter": "id % 2 = 0"},
    "odd": {"proportion": 0.2, "filter": "id % 2 = 1"},
    "other": {"proportion": 0.3, "table": "other", "val_table": "other_val", "test_table": "other_test"},
}


def ids_table(first: int, rows: int, seed: int) -> pa.Table:
    return toy_table(rows, seed=seed).set_column(0, "id", pa.array(np.arange(first, first + rows, dtype=np.int64)))


@pytest.fixture
def tables(make_table):
    uri, _ = make_table("toy", 100)
    make_table("other", ids_table(1000, 40, seed=1))
    make_table("other_val", ids_table(2000, 11, seed=2))
    make_table("other_test", ids_table(3000, 9, seed=3))
    return uri


def datamodule(uri: str, tmp_path: Path, **kwargs) -> LanceDataModule:
    settings = {
        "splits": SPLITS,
        "batch_size": 8,
        "eval_batch_size": 4,
        "seed": 5,
        "columns": ["id", "x", "y"],
        "mix": MIX,
        "eval_by_source": True,
        "cache": str(tmp_path / "stages"),
    }
    settings.update(kwargs)
    return LanceDataModule(uri, "toy", **settings)


class PerSource(pl.LightningModule):
    """Logs the mean of ``x[:, 0]`` per source under the source's name; records what each loader gave."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)
        self.read: dict[tuple[str, int], list[tuple[list[int], list[int]]]] = {}

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self.layer(batch["x"]), batch["y"])

    def _eval(self, stage: str, batch, dataloader_idx: int) -> None:
        name = self.trainer.datamodule.source_name(dataloader_idx)
        self.read.setdefault((stage, dataloader_idx), []).append((batch["id"].tolist(), batch["source"].tolist()))
        value = batch["x"][:, 0].mean()
        self.log(f"{stage}/{name}/x0", value, batch_size=len(batch["id"]), add_dataloader_idx=False)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self._eval("val", batch, dataloader_idx)

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self._eval("test", batch, dataloader_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def expected_rows(uri: str, dm: LanceDataModule, stage: str) -> dict[str, pa.Table]:
    """Each source's ``stage`` rows, computed from the tables alone (rowid == id in a fresh table)."""
    db = lancedb.connect(uri)
    toy = db.open_table("toy").to_arrow()
    split_ids = np.sort(dm.splits[stage].row_ids.astype(np.int64))
    in_split = toy.filter(pa.compute.is_in(toy["id"], pa.array(split_ids)))
    ids = in_split["id"].to_numpy()
    return {
        "even": in_split.filter(pa.array(ids % 2 == 0)),
        "odd": in_split.filter(pa.array(ids % 2 == 1)),
        "other": db.open_table(f"other_{stage}").to_arrow(),
    }


@pytest.mark.parametrize("num_workers", [0, 2])
def test_each_source_is_validated_and_tested_on_its_own_rows_with_metrics_per_source(tables, tmp_path, num_workers):
    dm = datamodule(tables, tmp_path, num_workers=num_workers)
    model = PerSource()
    trainer = quiet_trainer(tmp_path)
    results = {"val": trainer.validate(model, datamodule=dm), "test": trainer.test(model, datamodule=dm)}
    for stage in ("val", "test"):
        assert len(results[stage]) == 3  # Lightning's results: one dict per loader
        metrics = {key: value for result in results[stage] for key, value in result.items()}
        assert not any("dataloader_idx" in key for key in metrics)
        loaders = dm.val_dataloader() if stage == "val" else dm.test_dataloader()
        assert isinstance(loaders, list) and len(loaders) == 3  # one per source, in mix order
        for index, (name, rows) in enumerate(expected_rows(tables, dm, stage).items()):
            read = model.read[(stage, index)]
            ids = [i for batch, _ in read for i in batch]
            assert sorted(ids) == sorted(rows["id"].to_pylist())  # exactly the source's rows, each once
            assert all(source == [index] * len(batch) for batch, source in read)  # every row says its source
            x0 = np.asarray(rows["x"].combine_chunks().flatten().to_numpy()).reshape(-1, 4)[:, 0]
            assert metrics[f"{stage}/{name}/x0"] == pytest.approx(float(x0.mean()), rel=1e-5)


def test_fit_validates_per_source_and_without_the_setting_one_loader_per_split(tables, tmp_path):
    dm = datamodule(tables, tmp_path)
    model = PerSource()
    quiet_trainer(tmp_path, max_epochs=1).fit(model, datamodule=dm)
    assert sorted({stage_index for stage_index in model.read}) == [("val", 0), ("val", 1), ("val", 2)]

    plain = datamodule(tables, tmp_path, eval_by_source=False, mix={k: v for k, v in MIX.items() if k != "other"})
    plain.setup("fit")
    loader = plain.val_dataloader()
    assert not isinstance(loader, list)
    assert sorted(i for batch in loader for i in batch["id"].tolist()) == sorted(plain.splits["val"].row_ids.tolist())


def test_another_table_is_validated_at_the_version_the_checkpoint_read(tables, tmp_path):
    ckpt = tmp_path / "mid.ckpt"
    with pytest.raises(Preempted):
        quiet_trainer(tmp_path, max_epochs=1, callbacks=[SaveThenStop(3, ckpt)]).fit(
            PerSource(), datamodule=datamodule(tables, tmp_path)
        )
    lancedb.connect(tables).open_table("other_val").add(ids_table(2100, 5, seed=4))  # rows added after the checkpoint

    fresh = datamodule(tables, tmp_path)
    fresh.setup("fit")
    assert len(fresh.eval_sources["val"][2]) == 16  # a new run reads the new rows ...

    resumed = PerSource()
    with pytest.warns(UserWarning, match="other_val"):
        quiet_trainer(tmp_path, max_epochs=1).fit(resumed, datamodule=datamodule(tables, tmp_path), ckpt_path=ckpt)
    ids = [i for batch, _ in resumed.read[("val", 2)] for i in batch]
    assert sorted(ids) == list(range(2000, 2011))  # ... the resumed one the version its checkpoint read
    # where a source's evaluation rows are decides no training row: a resume may change it
    plain_mix = {**MIX, "other": {"proportion": 0.3, "table": "other"}}
    quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(
        PerSource(), datamodule=datamodule(tables, tmp_path, eval_by_source=False, mix=plain_mix), ckpt_path=ckpt
    )


def test_sources_without_evaluation_rows_are_refused_naming_the_source_and_the_keys(tables, tmp_path):
    mix = {**MIX, "other": {"proportion": 0.3, "table": "other"}}
    with pytest.raises(MixSpecError, match=r"mix source 'other' has no val rows.*val_table=.*val_split="):
        datamodule(tables, tmp_path, mix=mix).setup("fit")
    mix = {**MIX, "even": {"proportion": 0.5, "filter": "id > 1000"}}
    with pytest.raises(SplitSpecError, match=r"'even' has no val rows: split 'val' of table 'toy' where id > 1000"):
        datamodule(tables, tmp_path, mix=mix).setup("validate")
    mix = {**MIX, "other": {**MIX["other"], "val_split": "nope", "val_table": None}}
    with pytest.raises(MixSpecError, match=r"val_split='nope' is not a split of table 'toy'; its splits"):
        datamodule(tables, tmp_path, mix=mix).setup("validate")
    with pytest.raises(SettingError, match=r"only eval_by_source=True reads"):
        datamodule(tables, tmp_path, eval_by_source=False)
    with pytest.raises(SettingError, match=r"eval_by_source=True .* mix is not set"):
        datamodule(tables, tmp_path, mix=None)
    with pytest.raises(SettingError, match=r"'other': val_split and val_table both"):
        datamodule(tables, tmp_path, mix={**MIX, "other": {**MIX["other"], "val_split": "val"}})


def test_a_source_may_name_a_split_of_the_table_for_its_rows(tables, tmp_path):
    mix = {**MIX, "other": {**MIX["other"], "val_table": None, "val_split": "test"}}
    dm = datamodule(tables, tmp_path, mix=mix)
    dm.setup("validate")
    ids = sorted(i for batch in dm.val_dataloader()[2] for i in batch["id"].tolist())
    assert ids == sorted(dm.splits["test"].row_ids.tolist())
    assert dm.source_name(2) == "other"
    assert read_path(dm, "val").startswith("one loader per mix source (3); val/even: shuffle='none' from the split's")
    with pytest.raises(IndexError, match="the sources, by index"):
        dm.source_name(3)


def test_hydra_turns_it_on_from_the_command_line_and_inspect_shows_each_source_s_rows(digits_db):
    from hydra import compose, initialize_config_dir

    from lance_lightning.app.inspect_splits import inspect, render

    uri, table = digits_db(200)
    overrides = [
        f"data.uri={uri}",
        f"data.table={table}",
        "data.batch_size=16",
        "data/mix=digits_threes",
        "data.eval_by_source=true",
        "+data.mix.threes.test_split=val",  # a key the shipped source lacks: Hydra wants a +
        "trainer=ddp_sim",
    ]
    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(version_base="1.3", config_dir=str(conf), job_name="test"):
        cfg = compose("config", overrides=overrides)
    report = inspect(cfg)
    plan = report["shard_plan"]
    assert [key for key in plan if "/" in key] == ["val/all", "val/threes", "test/all", "test/threes"]
    assert "val" not in plan and "test" not in plan  # no loader per split
    assert plan["val/all"]["rows"] == report["splits"]["val"] == 20
    threes_in_val = report["label_balance"]["val"]["3"]  # label == id % 10
    assert plan["val/threes"]["rows"] == plan["test/threes"]["rows"] == threes_in_val  # label = 3 of the val split
    assert plan["test/all"]["rows"] == report["splits"]["test"]
    assert sum(plan["val/all"]["rows_per_rank"]) == 20 and len(set(plan["val/all"]["batches_per_rank"])) == 1
    text = render(report)
    assert "val/threes mix source 'threes': split 'val' where label = 3: " in text
    assert "test/threes mix source 'threes': split 'val' where label = 3: " in text


def test_the_transform_sees_each_source_s_batches_with_their_source(tables, tmp_path):
    dm = datamodule(tables, tmp_path, transform="tests.helpers.double_x")
    dm.setup("validate")
    for index, loader in enumerate(dm.val_dataloader()):
        for batch in loader:
            assert torch.equal(batch["x_doubled"], batch["x"] * 2)
            assert batch["source"].tolist() == [index] * len(batch["id"])


def test_with_table_updates_next_epoch_a_val_table_is_read_again_at_the_next_epoch(tables, tmp_path):
    class AddValRows(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):  # after epoch 0's validation
            if trainer.current_epoch == 0:
                lancedb.connect(tables).open_table("other_val").add(ids_table(2100, 5, seed=4))

    hashed = {"kind": "hash", "columns": ["id"], "weights": {"train": 3, "val": 1}}  # survives appends
    dm = datamodule(tables, tmp_path, splits=hashed, table_updates="next_epoch")
    model = PerSource()
    trainer = quiet_trainer(
        tmp_path, max_epochs=2, reload_dataloaders_every_n_epochs=1, num_sanity_val_steps=0, callbacks=[AddValRows()]
    )
    trainer.fit(model, datamodule=dm)
    read = [i for batch, _ in model.read[("val", 2)] for i in batch]
    assert sorted(read[:11]) == list(range(2000, 2011))  # epoch 0: the version pinned at setup
    assert sorted(read[11:]) == [*range(2000, 2011), *range(2100, 2105)]  # epoch 1: the newest
