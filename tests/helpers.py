"""Importable helpers for tests (transforms must be importable by dotted path in workers)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch


def gc_frozen(batch: dict[str, Any]) -> dict[str, Any]:
    """Records, per row, how many objects the garbage collector of the reading process ignores."""
    import gc

    import torch

    batch["gc_frozen"] = torch.full((len(batch["id"]),), gc.get_freeze_count())
    return batch


def double_x(batch: dict[str, Any]) -> dict[str, Any]:
    batch["x_doubled"] = batch["x"] * 2
    return batch


class Recorder(pl.LightningModule):
    """Records the ids of every training batch it consumes."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["id"].tolist())
        return torch.nn.functional.cross_entropy(self.layer(batch["x"]), batch["y"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Preempted(Exception):
    """What a preempted job dies of, in the resume tests."""


class SaveThenStop(pl.Callback):
    """Saves a checkpoint after ``step`` optimizer steps (mid-epoch), then dies like a preempted job."""

    def __init__(self, step: int, path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            raise Preempted


def quiet_trainer(tmp_path, **settings) -> pl.Trainer:
    """A CPU Trainer writing under ``tmp_path``, without logger, checkpoints, progress bar or model
    summary; ``settings`` add to these or replace them."""
    quiet = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return pl.Trainer(**{**quiet, **settings})


def logged_slow(batch: dict[str, Any]) -> dict[str, Any]:
    """A transform with a decode's cost (20 ms a batch) that appends a line a call to the file
    named by ``LL_TEST_TRANSFORM_LOG``: how many batches were made before one was handed over."""
    import os
    import time

    time.sleep(0.02)
    with open(os.environ["LL_TEST_TRANSFORM_LOG"], "a") as fh:
        fh.write(f"{os.getpid()}\n")
    return batch


def count_neighbors(batch: dict[str, Any]) -> dict[str, Any]:
    """A transform that sees the neighbours: ``n_valid`` is each row's count of real neighbours."""
    batch["n_valid"] = batch["neighbors"]["mask"].sum(dim=1)
    return batch


class NeighborRecorder(pl.LightningModule):
    """Records each training row's id and its neighbours' ids (``-1`` where masked)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[tuple[int, tuple[int, ...]]] = []

    def training_step(self, batch, batch_idx):
        found = batch["neighbors"]
        ids = torch.where(found["mask"], found["id"], torch.full_like(found["id"], -1))
        self.seen += [(int(i), tuple(n)) for i, n in zip(batch["id"].tolist(), ids.tolist())]
        return self.layer(torch.ones(1, 1)).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
