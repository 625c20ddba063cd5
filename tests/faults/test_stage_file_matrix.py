"""Every stage file, damaged every way, before setup and mid-epoch, with and without workers.

A real on-disk table, a real ``LanceDataModule`` that stages its train split, its real DataLoader
(forked workers at ``num_workers=2``). One file of the stage is truncated, extended, changed in place
(same size) or deleted, either between two setups or after the epoch's first batch. The promise
(docs/concepts/staging.md): before setup, the stage is rebuilt once with a :class:`StageWarning` naming it;
after setup, a :class:`StageError` naming the stage at the first batch gathered after the change
(batches gathered before it are the fill's bytes); a file deleted after setup changes no byte a
process maps, which reads on, and the next setup stages it again. Never a row that differs from the
table's.

A new file kind joins by one line in ``FILES``, a new damage by one function in ``DAMAGES``. The
cheap cells run by default; the rest are ``long``.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lance_lightning import LanceDataModule, assembly
from lance_lightning.stage import StageError, StageWarning
from tests.conftest import toy_table
from tests.helpers import quiet_trainer

NUM_ROWS, DIM = 3000, 16
COLUMNS = ["id", "x", "name"]  # id -> col-0.npy, x -> col-1.npy, name -> rows.arrow

FILES = {  # what a stage holds: the file damaged, and the column whose values it holds
    "flat": "col-1.npy",
    "arrow": "rows.arrow",
}


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def extend(path: Path) -> None:
    with open(path, "ab") as fh:
        fh.write(b"\0" * 4096)


def change_in_place(path: Path) -> None:
    """Every byte after the first 1 KiB flipped (same size): the rows would read as other values."""
    data = bytearray(path.read_bytes())
    data[1024:] = bytes(b ^ 0xFF for b in data[1024:])
    with open(path, "r+b") as fh:  # written in place, not replaced: the mapped pages change
        fh.write(data)


def delete(path: Path) -> None:
    path.unlink()


DAMAGES: dict[str, Callable[[Path], None]] = {
    "truncated": truncate,
    "extended": extend,
    "changed": change_in_place,
    "deleted": delete,
}

CHEAP = {
    ("changed", "mid-epoch", 0, "flat"),
    ("truncated", "mid-epoch", 0, "flat"),
    ("deleted", "before-setup", 0, "flat"),
}


def cells() -> list:
    out = []
    for kind in FILES:
        for damage in DAMAGES:
            for when in ("before-setup", "mid-epoch"):
                for workers in (0, 2):
                    cell = (damage, when, workers, kind)
                    marks = () if cell in CHEAP else (pytest.mark.long,)
                    out.append(pytest.param(*cell, marks=marks, id=f"{kind}-{damage}-{when}-w{workers}"))
    return out


@pytest.fixture
def table_rows(make_table):
    uri, _ = make_table("toy", NUM_ROWS, dim=DIM)
    want = toy_table(NUM_ROWS, dim=DIM)
    x = want.column("x").combine_chunks().flatten().to_numpy().reshape(NUM_ROWS, DIM)
    return uri, x, want.column("name").to_pylist()


def datamodule(uri: str, workers: int) -> LanceDataModule:
    return LanceDataModule(
        uri, "toy", columns=COLUMNS, batch_size=50, seed=3, num_workers=workers, splits={"train": 0.9, "val": 0.1}
    )


def assert_rows_are_the_tables(batch: dict, x: np.ndarray, names: list[str]) -> None:
    ids = batch["id"].numpy()
    np.testing.assert_array_equal(batch["x"].numpy(), x[ids])  # exact: not one value differs
    assert list(batch["name"]) == [names[i] for i in ids]


def read_epoch(dm: LanceDataModule, x: np.ndarray, names: list[str], after_first: Callable[[], None] | None) -> int:
    dm.samplers["train"].set_epoch(0)
    served = 0
    for batch in dm.train_dataloader():
        assert_rows_are_the_tables(batch, x, names)
        served += len(batch["id"])
        if after_first is not None:
            after_first()
            after_first = None
    return served


@pytest.mark.parametrize(("damage", "when", "workers", "kind"), cells())
def test_a_damaged_stage_file_is_rebuilt_or_refused_never_served(table_rows, monkeypatch, damage, when, workers, kind):
    # a worker's hand-over: 2 batches (not ~16k rows), so that the epoch's gathers go on after the damage
    monkeypatch.setattr(assembly, "SEQUENTIAL_READ_ROWS", 100)
    uri, x, names = table_rows
    first = datamodule(uri, workers)
    first.setup("fit")
    path = first.datasets["train"].staged.path
    target = path / FILES[kind]
    assert target.exists(), sorted(p.name for p in path.iterdir())
    split_rows = len(first.split_rows("train"))
    if when == "before-setup":
        first.teardown("fit")
        DAMAGES[damage](target)
        dm = datamodule(uri, workers)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dm.setup("fit")
        rebuilt = [str(w.message) for w in caught if issubclass(w.category, StageWarning)]
        assert len(rebuilt) == 1 and str(path) in rebuilt[0] and "rebuilt" in rebuilt[0], rebuilt
        assert read_epoch(dm, x, names, None) == split_rows  # the whole epoch, every row the table's
        dm.teardown("fit")
        return
    if damage == "deleted":
        # the mapped file lives on until it is unmapped: a process that mapped it reads the fill's
        # bytes on (checked row by row); one that opens the stage after the deletion (a worker whose
        # first batch comes later) finds the file missing and raises; the next setup stages it again
        try:
            assert read_epoch(first, x, names, lambda: DAMAGES[damage](target)) == split_rows
        except StageError as err:
            assert workers and str(path) in str(err) and FILES[kind] in str(err) and "missing" in str(err), err
        first.teardown("fit")
        again = datamodule(uri, workers)
        again.setup("fit")
        assert (again.datasets["train"].staged.path / FILES[kind]).exists()
        assert read_epoch(again, x, names, None) == split_rows
        again.teardown("fit")
        return
    with pytest.raises(StageError) as raised:
        read_epoch(first, x, names, lambda: DAMAGES[damage](target))
    message = str(raised.value)
    for part in (str(path), "split 'train'", "table 'toy'", FILES[kind]):
        assert part in message, (part, message)
    first.teardown("fit")


class ChecksRows(pl.LightningModule):
    """Trains on ``x``; every batch it is given is checked against the table's rows first."""

    def __init__(self, x: np.ndarray, names: list[str], change: Callable[[], None]) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(DIM, 1)
        self.x, self.names, self.change, self.steps = x, names, change, 0

    def training_step(self, batch, batch_idx):
        assert_rows_are_the_tables(batch, self.x, self.names)
        self.steps += 1
        if self.steps == 2:
            self.change()
        return self.layer(batch["x"]).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("workers", [pytest.param(0, marks=pytest.mark.long), 2])
def test_a_fit_whose_stage_changes_in_place_stops_with_a_stage_error(table_rows, tmp_path, workers):
    """The reported run: bytes of the stage changed in place (same size) mid-fit; the rows came back
    changed (NaN) and the fit finished. Now the fit stops at the first batch gathered after the
    change, with a StageError naming the stage; every batch trained on was the table's."""
    uri, x, names = table_rows
    dm = datamodule(uri, workers)
    dm.setup("fit")
    target = dm.datasets["train"].staged.path / FILES["flat"]
    model = ChecksRows(x, names, lambda: change_in_place(target))
    with pytest.raises(StageError, match=re.escape(str(target.parent))):
        quiet_trainer(tmp_path, max_epochs=3, num_sanity_val_steps=0, limit_val_batches=0).fit(model, dm)
    assert model.steps >= 2
    dm.teardown("fit")  # a fit that raised leaves its leases: let later tests' budgets have the room
