"""Every process the datamodule starts ends within seconds of the training process's death.

A real training process (a script in a subprocess, DataLoader workers forked for its staged split
or started by the fork server) is killed with SIGKILL mid-epoch, as the OOM killer or a preemption
kills it: its fork server and workers must be gone within ~10 s (before lance_lightning/workers.py,
6 processes holding 2.1 GB were still there 60 s later). The killed trainer is left unreaped (a
zombie) on purpose: a watch that asked only whether its pid exists would never fire.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import lance_lightning
from tests.processes import ended, kill_all, wait_ended

WORKERS_PY = Path(lance_lightning.__file__).parent / "workers.py"


@pytest.mark.parametrize("use_pidfd", [True, False], ids=["pidfd", "poll"])
def test_a_watched_process_ends_when_the_one_it_watches_is_killed(tmp_path, use_pidfd):
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    # workers.py is loaded on its own: importing the package (lancedb) would cost seconds here
    child_code = textwrap.dedent(
        f"""
        import importlib.util, sys, time
        spec = importlib.util.spec_from_file_location("workers", {str(WORKERS_PY)!r})
        workers = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(workers)
        workers.exit_with({parent.pid}, poll_s=0.1, use_pidfd={use_pidfd})
        print("watching", flush=True)
        time.sleep(120)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", child_code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "watching"
        time.sleep(0.3)
        assert child.poll() is None  # the watched process lives: the watcher does too
        parent.kill()  # SIGKILL, and not reaped: it stays a zombie
        assert child.wait(timeout=5) == 1
    finally:
        parent.kill()
        child.kill()
        parent.wait()
        child.wait()


TRAIN_SCRIPT = """
import os, sys, time

import lightning.pytorch as pl
import psutil
import torch

from lance_lightning import LanceDataModule


class Slow(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)

    def training_step(self, batch, batch_idx):
        if batch_idx == 2:  # mid-epoch, workers running: report and wait for the kill
            children = [p.pid for p in psutil.Process().children(recursive=True)]
            print("READY", os.getpid(), *children, flush=True)
        time.sleep(0.5)
        return torch.nn.functional.cross_entropy(self.layer(batch["x"]), batch["y"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    dm = LanceDataModule(
        sys.argv[1], "toy", columns=["x", "y"], splits={"train": 1.0}, batch_size=4, num_workers=2,
        multiprocessing_context=sys.argv[2] if sys.argv[2] != "default" else None,
    )
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Slow(), datamodule=dm)
    print("FINISHED", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "start_method", ["default", pytest.param("forkserver", marks=pytest.mark.long)]
)  # default: a staged split, forked workers
def test_sigkill_of_the_trainer_ends_its_fork_server_and_workers(make_table, tmp_path, start_method):
    uri, _ = make_table("toy", 200)
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    trainer = subprocess.Popen(
        [sys.executable, str(script), uri, start_method],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    descendants: list[int] = []
    processes: list[psutil.Process] = []
    try:
        lines = []
        for line in trainer.stdout:
            lines.append(line)
            if line.startswith("READY"):
                break
        else:
            pytest.fail("the training script ended before its third batch:\n" + "".join(lines[-40:]))
        reported = [int(p) for p in line.split()[2:]]
        seen = [p.pid for p in psutil.Process(trainer.pid).children(recursive=True)]
        descendants = sorted(set(reported) | set(seen))
        processes = [psutil.Process(p) for p in descendants if not ended(p)]
        names = {p: " ".join(psutil.Process(p).cmdline())[:80] for p in descendants if not ended(p)}
        assert len(descendants) >= (3 if start_method == "forkserver" else 2), names  # 2 workers (+ the server)
        os.kill(trainer.pid, signal.SIGKILL)  # left unreaped until the end: a zombie
        left = wait_ended(descendants, timeout=10)
        assert not left, {p: names.get(p) for p in left}
    finally:
        kill_all(processes)
        trainer.kill()
        trainer.wait(timeout=30)
