"""Worker processes, a real Trainer through every stage, seeds across processes, large tables."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap

import lightning.pytorch as pl
import pytest
import torch

from lance_lightning import LanceDataModule, SplitSpecError


def epoch_ids(loader) -> list[int]:
    return [i for batch in loader for i in batch["id"].tolist()]


@pytest.mark.parametrize("start_method", [None, "forkserver", "spawn"])
def test_workers_read_every_row_once_per_epoch(make_table, start_method):
    """Staged by default (workers read the train split's stage), whatever the start method."""
    uri, _ = make_table("toy", 203)
    dm = LanceDataModule(
        uri,
        "toy",
        splits={"train": 1.0},
        batch_size=16,
        num_workers=2,
        multiprocessing_context=start_method,
        transform="tests.helpers.double_x",
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.multiprocessing_context.get_start_method() == (start_method or "fork")
    epochs = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        ids = epoch_ids(loader)
        assert sorted(ids) == list(range(203)), "a row was lost or repeated"
        epochs.append(ids)
    assert epochs[0] != epochs[1], "epochs were not reshuffled"
    # Same order as a single-process read: the order does not depend on num_workers.
    single = LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=16)
    single.setup("fit")
    single.samplers["train"].set_epoch(1)
    assert epoch_ids(single.train_dataloader()) == epochs[1]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "fork"),  # staged: the workers never call lancedb
        ({"staging": "off"}, "forkserver"),  # they read the table
        # an explicit "forkserver" or "spawn" holds for staged splits too: test_workers_read_every_row_once_per_epoch
    ],
)
def test_worker_start_method_by_default_forks_only_readers_of_a_stage(make_table, settings, expected):
    uri, _ = make_table("toy", 64)
    dm = LanceDataModule(
        uri,
        "toy",
        splits={"train": 0.75, "val": 0.25},
        batch_size=8,
        num_workers=2,
        transform="tests.helpers.gc_frozen",
        **settings,
    )
    dm.setup("fit")
    loaders = {"train": dm.train_dataloader(), "val": dm.val_dataloader()}  # val: staged too, with workers
    for stage, loader in loaders.items():
        assert loader.multiprocessing_context.get_start_method() == expected, stage
        batches = list(loader)
        assert sorted(i for b in batches for i in b["id"].tolist()) == sorted(dm.splits[stage].row_ids.tolist())
        frozen = {int(f) for b in batches for f in b["gc_frozen"]}
        if expected == "fork":
            # every object a worker inherited is out of its garbage collector's reach (no lancedb
            # handle is finalised in a worker), and the parent collects its own again
            assert min(frozen) > 10_000, frozen
            assert gc.get_freeze_count() == 0
        else:
            assert frozen == {0}


def test_a_val_split_that_does_not_fit_is_read_from_the_table_and_says_why(make_table):
    uri, _ = make_table("toy", 64)
    dm = LanceDataModule(
        uri, "toy", splits={"train": 0.75, "val": 0.25}, batch_size=8, num_workers=2, cache_max_bytes=1000
    )
    with pytest.warns(UserWarning) as caught:
        dm.setup("fit")
    messages = [str(w.message) for w in caught if "split 'val'" in str(w.message)]
    assert len(messages) == 1, [str(w.message) for w in caught]
    for part in ("read from the table, not staged", "cache_max_bytes=1,000", "fork server"):
        assert part in messages[0], (part, messages[0])
    loader = dm.val_dataloader()
    assert loader.multiprocessing_context.get_start_method() == "forkserver"
    assert sorted(i for b in loader for i in b["id"].tolist()) == sorted(dm.splits["val"].row_ids.tolist())


def test_workers_persist_across_epochs(make_table):
    uri, _ = make_table("toy", 40)
    dm = LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=8, num_workers=1)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    epoch_ids(loader)
    first = loader._iterator._workers[0].pid
    epoch_ids(loader)
    assert loader._iterator._workers[0].pid == first


class TinyModel(pl.LightningModule):
    """Records the ids each stage sees."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)
        self.seen: dict[str, list[int]] = {"train": [], "val": [], "test": []}

    def _step(self, stage: str, batch) -> torch.Tensor:
        self.seen[stage] += batch["id"].tolist()
        loss = torch.nn.functional.cross_entropy(self.layer(batch["x"]), batch["y"])
        self.log(f"{stage}_loss", loss, batch_size=len(batch["id"]))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step("train", batch)

    def validation_step(self, batch, batch_idx):
        self._step("val", batch)

    def test_step(self, batch, batch_idx):
        self._step("test", batch)

    def predict_step(self, batch, batch_idx):
        return batch["id"]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("use_distributed_sampler", [True, False])
def test_trainer_fit_validate_test_predict(make_table, tmp_path, use_distributed_sampler):
    uri, _ = make_table("toy", 150)
    dm = LanceDataModule(uri, "toy", columns=["id", "x", "y"], batch_size=16, seed=3)
    model = TinyModel()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=use_distributed_sampler,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    sizes = {name: len(rows) for name, rows in dm.splits.items()}
    assert len(model.seen["train"]) == 2 * sizes["train"]
    assert sorted(model.seen["train"][: sizes["train"]]) == sorted(model.seen["train"][sizes["train"] :])
    assert model.seen["train"][: sizes["train"]] != model.seen["train"][sizes["train"] :]
    assert len(model.seen["val"]) == 2 * sizes["val"]

    model.seen["val"].clear()
    (metrics,) = trainer.validate(model, datamodule=dm)
    assert "val_loss" in metrics and len(model.seen["val"]) == sizes["val"]
    (metrics,) = trainer.test(model, datamodule=dm)
    assert "test_loss" in metrics and len(set(model.seen["test"])) == sizes["test"]
    predictions = trainer.predict(model, datamodule=dm)
    assert torch.cat(predictions).tolist() == list(range(150))


def test_no_val_split_means_no_validation(make_table, tmp_path):
    uri, _ = make_table("toy", 64)
    dm = LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=16)
    model = TinyModel()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert len(model.seen["train"]) == 64 and model.seen["val"] == []


SPLIT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from lance_lightning import LanceDataModule
    dm = LanceDataModule(sys.argv[1], "toy", seed=int(sys.argv[2]), batch_size=8)
    dm.setup()
    order = [b.tolist() for b in dm.samplers["train"]]
    print(json.dumps({"splits": {n: s.row_ids.tolist() for n, s in dm.splits.items()}, "order": order}))
    """
)


def test_splits_and_order_identical_across_processes(make_table):
    """A fresh process (its own hash seed, its own imports) splits and orders the table exactly as
    this one does for the same seed; another seed splits it otherwise."""
    uri, _ = make_table("toy", 500)
    done = subprocess.run([sys.executable, "-c", SPLIT_SCRIPT, uri, "7"], check=True, capture_output=True, text=True)
    there = json.loads(done.stdout)

    def here(seed: int) -> dict:
        dm = LanceDataModule(uri, "toy", seed=seed, batch_size=8)
        dm.setup()
        order = [b.tolist() for b in dm.samplers["train"]]
        splits = {n: s.row_ids.tolist() for n, s in dm.splits.items()}
        dm.teardown()
        return {"splits": splits, "order": order}

    assert there == here(7)
    assert there["splits"] != here(8)["splits"]


def test_ten_million_row_table_builds_its_splits(make_table):
    import numpy as np
    import pyarrow as pa

    uri, _ = make_table("big", pa.table({"id": np.arange(10_000_000, dtype=np.int64)}))
    dm = LanceDataModule(uri, "big", batch_size=1024)
    dm.setup("fit")
    sizes = {name: len(rows) for name, rows in dm.splits.items()}
    assert sizes == {"train": 8_000_000, "val": 1_000_000, "test": 1_000_000}
    first = next(iter(dm.train_dataloader()))
    assert len(first["id"]) == 1024


def test_overfit_batches_keeps_our_batches(make_table, tmp_path):
    uri, _ = make_table("toy", 100)
    dm = LanceDataModule(uri, "toy", batch_size=8, seed=1)
    model = TinyModel()
    trainer = pl.Trainer(
        max_epochs=3,
        overfit_batches=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    batches = [model.seen["train"][i : i + 8] for i in range(0, len(model.seen["train"]), 8)]
    assert len(batches) == 6 and batches[:2] == batches[2:4] == batches[4:6]


def test_negative_seed_is_refused():
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        LanceDataModule("/unused", "toy", seed=-1)


def test_eval_split_smaller_than_the_world_is_refused(make_table):
    uri, _ = make_table("toy", 40)
    dm = LanceDataModule(uri, "toy", splits={"train": 39, "val": 1}, batch_size=8)
    # A real 2-process DDP Trainer, not launched: it reports world size 2 to the datamodule.
    dm.trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    assert dm.trainer.world_size == 2
    message = r"split 'val' \(read by stage 'val'\) has 1 row\(s\), fewer than the 2 ranks"
    with pytest.raises(SplitSpecError, match=message):
        dm.setup("validate")


class ModelWithOwnHyperparameters(TinyModel):
    def __init__(self, batch_size: int = 999, seed: int = 123) -> None:
        super().__init__()
        self.save_hyperparameters()


def test_model_hyperparameters_do_not_clash_with_the_datamodule(make_table, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    uri, _ = make_table("toy", 40)
    dm = LanceDataModule(uri, "toy", batch_size=8, seed=1)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(ModelWithOwnHyperparameters(), datamodule=dm)
    logged = (tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").read_text()
    assert "table_version: 1" in logged and "data_batch_size: 8" in logged and "batch_size: 999" in logged
