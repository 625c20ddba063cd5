"""``RowValueWriter`` on real tables and Trainers: per-row values of training written back into the
table at each epoch's end, steering the next epoch's draw (``table_updates="next_epoch"``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import pytest
import torch

from lance_lightning import LanceDataModule, RowValueError, RowValueWriter
from tests.conftest import toy_table
from tests.helpers import quiet_trainer

ROWS = 100
HASH = {"kind": "hash", "columns": ["id"], "weights": {"train": 1}}


class RowModel(pl.LightningModule):
    """Returns ``row_value(id, epoch)`` per row as ``"row_loss"``; records the ids each epoch reads."""

    def __init__(self, returns: str = "dict") -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.returns = returns
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
        ids = batch["id"]
        self.seen.setdefault(self.current_epoch, []).extend(ids.tolist())
        loss = self.layer(batch["x"]).pow(2).mean()
        if self.returns == "tensor":
            return loss
        return {"loss": loss, "row_loss": row_value(ids, self.current_epoch)}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def row_value(ids: torch.Tensor, epoch: int) -> torch.Tensor:
    """Rows 0-49: id + 1 + 1000 * epoch; rows 50-99: 0 (a weight that drops them from the next draw)."""
    return torch.where(ids < 50, ids + 1 + 1000 * epoch, torch.zeros_like(ids)).double()


def table_with_w(make_table, w: float = 1.0):
    rows = toy_table(ROWS).append_column("w", pa.array(np.full(ROWS, w)))
    return make_table("toy", rows)


def datamodule(uri: str, tmp_path: Path, **kwargs) -> LanceDataModule:
    settings = {"splits": HASH, "batch_size": 8, "seed": 5, "columns": ["id", "x", "y"], "cache": str(tmp_path / "c")}
    return LanceDataModule(uri, "toy", **{**settings, **kwargs})


def fit(uri: str, tmp_path: Path, writer: RowValueWriter, model: pl.LightningModule | None = None, **data) -> Any:
    model = model or RowModel()
    run = quiet_trainer(
        tmp_path, max_epochs=2, limit_val_batches=0, callbacks=[writer], reload_dataloaders_every_n_epochs=1
    )
    run.fit(model, datamodule=datamodule(uri, tmp_path, **data))
    return model


def column(table, name: str) -> dict[int, float]:
    data = table.to_arrow()
    return dict(zip(data["id"].to_pylist(), data[name].to_pylist()))


def test_each_epoch_writes_every_drawn_rows_value_in_one_commit_and_steers_the_next_draw(make_table, tmp_path):
    uri, table = table_with_w(make_table)
    start = table.version
    writer = RowValueWriter(column="w", key="id", output="row_loss")
    model = fit(uri, tmp_path, writer, weight_column="w", table_updates="next_epoch")
    assert sorted(model.seen[0]) == list(range(ROWS))  # epoch 0: every row once (w = 1)
    assert sorted(model.seen[1]) == list(range(50))  # epoch 1: the rows epoch 0 left a weight above 0
    assert writer.versions == [start + 1, start + 2]  # one commit an epoch
    table.checkout_latest()
    written = column(table, "w")
    assert written == {i: (i + 1001.0 if i < 50 else 0.0) for i in range(ROWS)}  # 50-99: epoch 0's, kept
    assert column(table, "x") == column(toy_table_in(make_table), "x")  # the other columns unchanged


def toy_table_in(make_table):
    _, table = make_table("fresh", toy_table(ROWS))
    return table


def test_rows_not_drawn_keep_their_value_and_a_transform_is_applied(make_table, tmp_path):
    # 30 rows an epoch of the 100 (with replacement): rows drawn in the last epoch get its value,
    # rows drawn only in epoch 0 keep epoch 0's, rows never drawn keep 0.5
    uri, table = table_with_w(make_table, 0.5)
    writer = RowValueWriter(column="w", key="id", output="row_loss", transform=lambda v: v + 0.25)
    model = fit(
        uri,
        tmp_path,
        writer,
        weight_column="w",
        samples_per_epoch=30,
        weight_replacement=True,
        table_updates="next_epoch",
    )
    table.checkout_latest()
    written = column(table, "w")
    expected = {i: 0.5 for i in range(ROWS)}
    for epoch in (0, 1):
        for i in model.seen[epoch]:
            expected[i] = (i + 1 + 1000 * epoch if i < 50 else 0) + 0.25
    assert written == expected
    assert len(set(model.seen[0])) < ROWS  # some rows were never drawn in epoch 0


def test_every_n_epochs_writes_only_that_epochs_values(make_table, tmp_path):
    uri, table = table_with_w(make_table)
    start = table.version
    writer = RowValueWriter(column="w", every_n_epochs=2)
    model = fit(uri, tmp_path, writer, weight_column="w", table_updates="next_epoch")
    assert sorted(model.seen[1]) == list(range(ROWS))  # epoch 0 wrote nothing: epoch 1 drew every row
    assert writer.versions == [start + 1]
    table.checkout_latest()
    assert column(table, "w") == {i: (i + 1001.0 if i < 50 else 0.0) for i in range(ROWS)}  # epoch 1's values


def test_a_missing_output_or_key_is_refused_naming_it(make_table, tmp_path):
    uri, _ = table_with_w(make_table)
    with pytest.raises(RowValueError, match=r"training_step must return a dict with 'loss_per_row' .*column 'w'"):
        fit(uri, tmp_path, RowValueWriter(column="w", output="loss_per_row"))
    with pytest.raises(RowValueError, match=r"with 'row_loss' .* it returned a dict with keys 'loss'\."):
        fit(uri, tmp_path, RowValueWriter(column="w"), model=RowModel(returns="tensor"))
    with pytest.raises(RowValueError, match=r"key 'id' is not among the columns the datamodule reads \(x, y\)"):
        fit(uri, tmp_path, RowValueWriter(column="w", key="id"), columns=["x", "y"])
    with pytest.raises(RowValueError, match=r"key 'uid' is not in table 'toy'; its columns are id, x, y, name, w"):
        fit(uri, tmp_path, RowValueWriter(column="w", key="uid"))
    with pytest.raises(RowValueError, match=r"column 'loss' is not in table 'toy'; its columns are id, x, y, name, w"):
        fit(uri, tmp_path, RowValueWriter(column="loss"))
    with pytest.raises(RowValueError, match=r"column 'name' of table 'toy' is of type string; it must be numeric"):
        fit(uri, tmp_path, RowValueWriter(column="name"))


def test_values_that_are_not_finite_are_refused_and_the_table_kept(make_table, tmp_path):
    uri, table = table_with_w(make_table)
    version = table.version
    writer = RowValueWriter(column="w", transform=lambda v: np.log(v))  # log(0) for rows 50-99
    with pytest.raises(RowValueError, match=r"50 of 100 values for column 'w' \(from output 'row_loss'\) are not fin"):
        fit(uri, tmp_path, writer)
    table.checkout_latest()
    assert table.version == version


def test_with_tables_splits_the_values_go_into_the_table_the_train_split_reads(make_table, tmp_path):
    uri, other = table_with_w(make_table)  # "toy", the datamodule's own table, is not read
    rows = toy_table(ROWS).append_column("w", pa.array(np.ones(ROWS)))
    _, train = make_table("train_rows", rows)
    writer = RowValueWriter(column="w")
    tables = {"kind": "tables", "tables": {"train": "train_rows"}}
    fit(uri, tmp_path, writer, splits=tables, weight_column="w", table_updates="next_epoch")
    train.checkout_latest()
    other.checkout_latest()
    assert column(train, "w") == {i: (i + 1001.0 if i < 50 else 0.0) for i in range(ROWS)}
    assert column(other, "w") == {i: 1.0 for i in range(ROWS)}


def test_a_resume_from_the_checkpoint_written_at_an_epoch_s_end_draws_by_that_epoch_s_values(tmp_path):
    """Lightning's default ``ModelCheckpoint`` saves at an epoch's end, after the writer's commit: the
    resumed run's next epoch draws by the values written then, as the uninterrupted run's did (before,
    it drew by the finished epoch's weights, and every later epoch differed from then on)."""
    import lancedb
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(tag: str, epochs: int, model: RowModel, callbacks: list, ckpt: str | None = None) -> None:
        uri = str(tmp_path / tag)
        if ckpt is None:
            lancedb.connect(uri).create_table("toy", toy_table(ROWS).append_column("w", pa.array(np.ones(ROWS))))
        data = {"weight_column": "w", "weight_replacement": True, "table_updates": "next_epoch"}
        quiet_trainer(
            tmp_path,
            max_epochs=epochs,
            limit_val_batches=0,
            reload_dataloaders_every_n_epochs=1,
            enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
            callbacks=[RowValueWriter(column="w", key="id"), *callbacks],
        ).fit(model, datamodule=datamodule(uri, tmp_path, **data), ckpt_path=ckpt)

    reference = RowModel()
    run("reference", 3, reference, [])
    first, resumed = RowModel(), RowModel()
    saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    run("interrupted", 1, first, [saving])
    run("interrupted", 3, resumed, [], ckpt=saving.last_model_path)
    assert {**first.seen, **resumed.seen} == reference.seen
