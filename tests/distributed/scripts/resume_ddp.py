"""Standalone DDP run for the resume tests: fit, record each rank's batches, maybe checkpoint.

usage: python tests/distributed/scripts/resume_ddp.py URI OUT_DIR TAG DEVICES SAVE_STEP CKPT_IN CKPT_OUT [DATA_JSON]
SAVE_STEP > 0 saves CKPT_OUT after that many steps, mid-epoch, and writes each rank's batches so
far to ``TAG-before_rank{r}.json``; the run goes on to the end of both epochs (``TAG_rank{r}.json``),
so one run is both an uninterrupted reference and the source of a checkpoint (what a preempted job
leaves is the same file). CKPT_IN "-" starts from scratch. DATA_JSON: more datamodule settings
(e.g. ``{"weight_column": "w"}``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

from lance_lightning import LanceDataModule
from tests.helpers import Recorder, quiet_trainer


class SaveAndRecord(pl.Callback):
    """At ``step``: save a checkpoint and write this rank's batches so far."""

    def __init__(self, step: int, ckpt: str, record: Path) -> None:
        self.step, self.ckpt, self.record = step, ckpt, record

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.ckpt)
            self.record.with_name(self.record.name.format(rank=trainer.global_rank)).write_text(
                json.dumps(pl_module.seen)
            )


def main() -> None:
    uri, out_dir, tag, devices, save_step, ckpt_in, ckpt_out = sys.argv[1:8]
    data = json.loads(sys.argv[8]) if len(sys.argv) > 8 else {}
    devices, save_step = int(devices), int(save_step)
    record = Path(out_dir, tag + "_rank{rank}.json")
    before = Path(out_dir, tag + "-before_rank{rank}.json")
    callbacks = [SaveAndRecord(save_step, ckpt_out, before)] if save_step > 0 else []
    trainer = quiet_trainer(
        out_dir,
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        callbacks=callbacks,
        max_epochs=2,
        limit_val_batches=0,
    )
    model = Recorder()
    dm = LanceDataModule(uri, "toy", splits={"train": 1.0}, batch_size=8, seed=5, **data)
    trainer.fit(model, datamodule=dm, ckpt_path=None if ckpt_in == "-" else ckpt_in)
    Path(str(record).format(rank=trainer.global_rank)).write_text(json.dumps(model.seen))
    # Leave the process group together: exiting with gloo's threads still up can abort a rank.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
