"""One predict run with a LancePredictionWriter: ``python writer_run.py spec.json`` (a test's subprocess).

The spec names the database, the source table, the writer's arguments, the output width and a
``pause``: where the run stops itself with SIGSTOP so that the test can start a second run or
SIGKILL this one at a known point:

* ``"batch"``: in ``predict_step`` of batch 2 (its staging files exist, data files are being written);
* ``"before-commit"`` / ``"after-commit"``: around lance's ``LanceDataset.commit``, the real one
  (wrapped only to stop the process before or after it; it is still called as it is).

The run's outcome goes to ``spec["out"]``: ``{"ok": result}`` or ``{"error": type, "message": ...,
"named": isinstance of PredictionWriteError}``. Only public imports, so an older lance_lightning
runs it too.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

PAUSE_BATCH = 2


def outputs(name: str, ids: Any, dim: int) -> Any:
    """Column ``name``'s value for rows ``ids``: ``[B]`` when ``dim`` is 1, else ``[B, dim]``, a
    function of the row and the column name only (so a test can check every row)."""
    import torch

    offset = float(sum(map(ord, name)) % 97)
    value = ids.double()[:, None] * 1000.0 + torch.arange(dim, dtype=torch.float64)[None, :] + offset
    value = value.float()
    return value[:, 0] if dim == 1 else value


def stop_self() -> None:
    os.kill(os.getpid(), signal.SIGSTOP)


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    warnings.filterwarnings("ignore")
    pause = spec.get("pause")
    if pause in ("before-commit", "after-commit"):
        import lance

        commit = lance.LanceDataset.commit

        def paused_commit(*args: Any, **kwargs: Any) -> Any:
            if pause == "before-commit":
                stop_self()
            new = commit(*args, **kwargs)
            if pause == "after-commit":
                stop_self()
            return new

        lance.LanceDataset.commit = staticmethod(paused_commit)

    import lightning.pytorch as pl
    import torch

    from lance_lightning import LanceDataModule, LancePredictionWriter
    from lance_lightning.writer import PredictionWriteError

    name, dim = spec["writer"]["column"], spec["dim"]

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
            if pause == "batch" and batch_idx == PAUSE_BATCH:
                stop_self()
            return outputs(name, batch["id"], dim)

    dm = LanceDataModule(spec["uri"], spec["table"], columns=["id"], splits=None, eval_batch_size=spec["batch"])
    writer = LancePredictionWriter(**spec["writer"])
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[writer],
    )
    try:
        trainer.predict(Model(), datamodule=dm, return_predictions=False)
        outcome: dict[str, Any] = {"ok": writer.result}
    except Exception as err:  # noqa: BLE001 - the test judges it
        outcome = {"error": type(err).__name__, "message": str(err), "named": isinstance(err, PredictionWriteError)}
    Path(spec["out"]).write_text(json.dumps(outcome))


if __name__ == "__main__":
    main(sys.argv[1])
