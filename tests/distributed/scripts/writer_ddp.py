"""Predict with a LancePredictionWriter under real DDP: ``python writer_ddp.py spec.json``.

Launched by tests/distributed/test_ddp_writer.py in a fresh process (Lightning's launcher
re-runs this script for rank 1, CPU, gloo). The spec lists predict runs done one after another
in the same processes; for each, every rank writes ``<out>/<tag>-rank<r>.json`` with the ids
of every batch it predicted and the writer's result. ``slow`` makes each batch take
``slow`` seconds, so that the test can SIGKILL the run mid-predict; ``move_at`` makes rank 0
append a row to the table at that batch (the table moves on while predicting); ``private_staging``
gives each rank a staging directory of its own (as on nodes that share no file system). With
either, the record holds the error the run raised.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def outputs_for(ids: Any, x: Any) -> dict[str, Any]:
    """What the model returns for rows ``ids`` with features ``x``: a function of the row only."""
    import torch

    ids = ids.float()
    return {
        "score": x.sum(1) + ids,  # [B] float32
        "emb": torch.stack([ids, -ids, x[:, 0], x[:, 1], x[:, 2]], 1),  # [B, 5] float32
        "klass": ids.long() % 7,  # [B] int64
    }


def run_one(spec: dict[str, Any], run: dict[str, Any]) -> None:
    import lightning.pytorch as pl
    import torch

    from lance_lightning import LanceDataModule, LancePredictionWriter
    from tests.helpers import quiet_trainer

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.seen: list[list[int]] = []

        def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
            self.seen.append(batch["id"].tolist())
            if run.get("slow"):
                time.sleep(run["slow"])
            if run.get("move_at") == batch_idx and self.trainer.global_rank == 0:
                import lancedb

                table = lancedb.connect(spec["uri"]).open_table(spec["table"])
                table.add(table.to_arrow().slice(0, 1))
            out = outputs_for(batch["id"], batch["x"])
            return out if run.get("output") is None else out[run["output"]]

    dm = LanceDataModule(spec["uri"], spec["table"], columns=["id", "x"], splits=None, **spec["data"])
    options = dict(run["writer"])
    if run.get("private_staging"):  # the Trainer below sets LOCAL_RANK for rank 1 only
        options["staging_dir"] = str(Path(spec["out"]) / f"staging-{os.environ.get('LOCAL_RANK', '0')}")
    writer = LancePredictionWriter(**options)
    model = Model()
    trainer = quiet_trainer(
        spec["out"],
        devices=2,
        strategy="ddp",
        callbacks=[writer],
    )
    error = None
    try:
        trainer.predict(model, datamodule=dm, return_predictions=False)
    except Exception as err:  # noqa: BLE001 - recorded for the test
        if not (run.get("move_at") or run.get("private_staging")):
            raise
        error = f"{type(err).__name__}: {err}"
    record = {
        "error": error,
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "seen": model.seen,
        "result": writer.result,
    }
    (Path(spec["out"]) / f"{run['tag']}-rank{trainer.global_rank}.json").write_text(json.dumps(record))


def main(argv: list[str]) -> None:
    spec = json.loads(Path(argv[1]).read_text())
    for run in spec["runs"]:
        run_one(spec, run)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv)
