"""Exact-resume harness: an uninterrupted reference run, checkpoints at every point a run can write
one, and a resume from each in another process than the reference's (a fresh Trainer and datamodule
each; one process resumes several in turn), compared batch for batch with the reference.

A *cell* is a JSON-able dict: the datamodule settings (``data``), the Trainer settings
(``trainer``), and optionally ``stop`` (a first run that ends early, e.g. ``{"max_steps": 25}``,
whose checkpoints are resumed with the reference's settings) and ``resume_data`` (datamodule
settings changed for the resumed run, e.g. another ``batch_size`` or ``num_workers``).

Each run records, in order: every training batch as ``[epoch, batch_idx, ids]`` and every
validation as ``[epoch, batches_trained_before, sorted ids]``. Every checkpoint carries how many
of each the run had recorded when it was written, so the resumed run must record exactly the
reference's records from there on.

Run one cell by hand: ``python -m tests.resume_harness CELL_JSON OUT_DIR`` (see ``main``); the
matrix: ``LL_RESUME_MATRIX=full python -m pytest tests/integration/test_resume_matrix.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ROWS = 300
"""Table rows; the train split is 270 (a 0.9 / 0.1 random split): 17 batches of 16 an epoch."""


def make_table(uri: str) -> None:
    import lancedb

    from tests.conftest import toy_table

    lancedb.connect(uri).create_table("toy", toy_table(ROWS).select(["id", "x", "y"]))


# -- inside a run's own process ---------------------------------------------------------------


def _fit(cell: dict[str, Any], uri: str, out: Path, tag: str, ckpt_in: str | None, ckpt_dir: Path | None) -> None:
    import lightning.pytorch as pl
    import torch

    from lance_lightning import LanceDataModule

    class Recorder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 3)
            self.batches: list[list[Any]] = []
            self.vals: list[list[Any]] = []
            self._val_ids: list[int] = []
            self._before = 0  # batches recorded before the checkpoint this run resumed from

        def on_load_checkpoint(self, checkpoint):
            self._before = checkpoint["recorded"]["batches"]

        def training_step(self, batch, batch_idx):
            self.batches.append([self.current_epoch, batch_idx, batch["id"].tolist()])
            return torch.nn.functional.cross_entropy(self.layer(batch["x"]), batch["y"])

        def validation_step(self, batch, batch_idx):
            self._val_ids.extend(batch["id"].tolist())

        def on_validation_epoch_end(self):
            if not self.trainer.sanity_checking:
                self.vals.append([self.current_epoch, self._before + len(self.batches), sorted(self._val_ids)])
            self._val_ids = []

        def on_save_checkpoint(self, checkpoint):
            checkpoint["recorded"] = {"batches": len(self.batches), "vals": len(self.vals)}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class SaveEverywhere(pl.Callback):
        """A checkpoint after every batch, at every epoch end and after every validation."""

        def __init__(self, directory: Path) -> None:
            self.dir, self.count = directory, 0

        def _save(self, trainer, kind: str) -> None:
            self.count += 1
            trainer.save_checkpoint(self.dir / f"{self.count:04d}-{kind}-e{trainer.current_epoch}.ckpt")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self._save(trainer, f"step{trainer.global_step}")

        def on_train_epoch_end(self, trainer, pl_module):
            self._save(trainer, "epochend")

        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                self._save(trainer, "valend")

    data = {"splits": {"train": 0.9, "val": 0.1}, "batch_size": 16, "seed": 7, "columns": ["id", "x", "y"]}
    data.update(cell.get("data", {}))
    trainer_kwargs = {"max_epochs": 3, **cell.get("trainer", {})}
    if tag == "stop":
        trainer_kwargs.update(cell["stop"])
    if tag == "resume":
        data.update(cell.get("resume_data", {}))
    model = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=out,
        callbacks=[SaveEverywhere(ckpt_dir)] if ckpt_dir is not None else [],
        **trainer_kwargs,
    )
    trainer.fit(model, datamodule=LanceDataModule(uri, "toy", **data), ckpt_path=ckpt_in)
    name = tag if ckpt_in is None else f"{tag}-{Path(ckpt_in).stem}"
    (out / f"{name}.json").write_text(json.dumps({"batches": model.batches, "vals": model.vals}))


def main() -> None:
    """``python -m tests.resume_harness CELL_JSON OUT_DIR TAG [CKPT_IN ...]``; TAG is ref, stop or resume.

    Several checkpoints are resumed one after the other in this one process, each by a fresh Trainer
    and datamodule (a process start costs more than a resume here); a resume that raises is recorded
    as ``{"error": ...}`` and the next one still runs.
    """
    cell, out, tag = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    if tag != "resume":
        ckpt_dir = out / f"ckpt-{tag}"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        _fit(cell, str(out / "db"), out, tag, None, ckpt_dir)
        return
    for ckpt_in in sys.argv[4:]:
        try:
            _fit(cell, str(out / "db"), out, tag, ckpt_in, None)
        except Exception as err:  # noqa: BLE001 - the driver reports it as a refusal, naming it
            error = f"{type(err).__name__}: {err}"
            (out / f"{tag}-{Path(ckpt_in).stem}.json").write_text(json.dumps({"error": error}))


# -- the driver (pytest, or by hand) ------------------------------------------------------------


def _run(cell: dict[str, Any], out: Path, tag: str, checkpoints: list[Path] = ()) -> subprocess.CompletedProcess:
    """``python -m tests.resume_harness ...`` in a process of its own, forked from the test zygote
    (torch and Lightning imported once: ``tests/zygote.py``)."""
    from tests import zygote

    args = ["-m", "tests.resume_harness", json.dumps(cell), str(out), tag, *map(str, checkpoints)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = out / f"log-{tag}-{uuid.uuid4().hex[:8]}.txt"  # runs of one tag go side by side
    result = zygote.run(args, cwd=ROOT, env=env, output=log, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{tag} run {[c.name for c in checkpoints]} failed:\n{result.stdout[-5000:]}")
    return result


def pick(checkpoints: list[Path], limit: int | None) -> list[Path]:
    """All checkpoints, or ``limit`` of them spread over the kinds: the last batch of an epoch (written
    just before its end), the epoch end, after validation, and mid-epoch steps, in turn."""
    if limit is None or len(checkpoints) <= limit:
        return checkpoints
    boundary = {i for i, c in enumerate(checkpoints) if "epochend" in c.name or "valend" in c.name}
    last_steps = [checkpoints[i - 1] for i in sorted(boundary) if i - 1 not in boundary and i > 0]
    kinds = [
        last_steps,
        [c for c in checkpoints if "epochend" in c.name],
        [c for c in checkpoints if "valend" in c.name],
        [c for i, c in enumerate(checkpoints) if i not in boundary and c not in last_steps][2::5],
    ]
    chosen: list[Path] = []
    while len(chosen) < limit and any(kinds):
        for kind in kinds:
            if kind and len(chosen) < limit:
                chosen.append(kind.pop(0))
    return sorted(chosen)


def check_cell(cell: dict[str, Any], out: Path, *, limit: int | None = None, parallel: int = 2) -> dict[str, str]:
    """Run ``cell``; return ``{checkpoint name: "exact" | "refused: ..." | "DIFFERS: ..."}``."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    make_table(str(out / "db"))
    _run(cell, out, "ref")
    reference = json.loads((out / "ref.json").read_text())
    source = "stop" if "stop" in cell else "ref"
    if source == "stop":
        _run(cell, out, "stop")
    checkpoints = pick(sorted((out / f"ckpt-{source}").glob("*.ckpt")), limit)

    # the checkpoints in `parallel` processes, each resuming its share one after the other
    shares = [checkpoints[i::parallel] for i in range(min(parallel, len(checkpoints)))]
    with ThreadPoolExecutor(max(1, len(shares))) as pool:
        list(pool.map(lambda share: _run(cell, out, "resume", share), shares))
    same_batches = "batch_size" not in cell.get("resume_data", {})
    results = {}
    for ckpt in checkpoints:
        recorded = torch.load(ckpt, weights_only=False, map_location="cpu")["recorded"]
        got = json.loads((out / f"resume-{ckpt.stem}.json").read_text())
        if "error" in got:
            results[ckpt.name] = "refused: " + got["error"]
        else:
            results[ckpt.name] = compare(reference, got, recorded, exact_batches=same_batches)
    return results


def compare(reference: dict[str, Any], got: dict[str, Any], recorded: dict[str, int], *, exact_batches: bool) -> str:
    """ "exact", or what differs. With changed batch sizes, each epoch's rows and validations are compared."""
    want_batches = reference["batches"][recorded["batches"] :]
    want_vals = reference["vals"][recorded["vals"] :]
    if exact_batches:
        n = len(got["batches"])
        ends_an_epoch = 0 < n < len(want_batches) and want_batches[n][0] != want_batches[n - 1][0]
        if ends_an_epoch and got["batches"] == want_batches[:n]:
            # Lightning ends a run resumed at an epoch end under max_steps one epoch early (it counts the
            # finished epoch twice against max_epochs): the same happens with a plain torch DataLoader
            # (checked with lightning 2.6.6). Every batch it did run is exact.
            return "exact until Lightning ended the run one epoch early"
        if got["batches"] != want_batches:
            at = next((i for i, (a, b) in enumerate(zip(got["batches"], want_batches)) if a != b), None)
            return (
                f"DIFFERS: {len(got['batches'])} batches vs {len(want_batches)} expected; first difference at "
                f"{at}: {got['batches'][at][:2] if at is not None else None} vs "
                f"{want_batches[at][:2] if at is not None else None}"
            )
        if want_vals and got["vals"] == want_vals[1:] and want_vals[0][1] == recorded["batches"]:
            # Lightning's own restart logic (fit_loop.reset) moves on to the next epoch without the
            # validation that was due right after the checkpointed batch: the same happens with a
            # plain torch DataLoader (checked with lightning 2.6.6), so it is not the data's doing.
            return "exact (Lightning skips the validation due right after the checkpointed batch)"
        if got["vals"] != want_vals:
            return f"DIFFERS: validations {[v[:2] for v in got['vals']]} vs {[v[:2] for v in want_vals]}"
        return "exact"

    def rows_by_epoch(batches: list[list[Any]]) -> dict[int, list[int]]:
        epochs: dict[int, list[int]] = {}
        for epoch, _, ids in batches:
            epochs.setdefault(epoch, []).extend(ids)
        return {e: sorted(v) for e, v in epochs.items()}

    if rows_by_epoch(got["batches"]) != rows_by_epoch(want_batches):
        return "DIFFERS: the rows of some epoch"
    got_vals = [(v[0], v[2]) for v in got["vals"]]
    want = [(v[0], v[2]) for v in want_vals]
    if want and got_vals == want[1:] and want_vals[0][1] == recorded["batches"]:
        return "rows exact (Lightning skips the validation due right after the checkpointed batch)"
    if got_vals != want:
        return f"DIFFERS: validated epochs {[v[0] for v in got_vals]} vs {[v[0] for v in want]}"
    return "exact"


if __name__ == "__main__":
    main()
