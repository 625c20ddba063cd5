"""Shared pieces of the multi-process tests: the table, the launchers, and the expected batches.

Every launch runs ``scripts/ddp_run.py`` in processes of its own (never inside pytest), with an
environment stripped of anything a surrounding cluster job could have set, so that the only
topology Lightning sees is the one the test asks for.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa

from lance_lightning import LanceBatchSampler
from tests import zygote
from tests.sharding_invariants import assert_epoch_invariants

SCRIPT = Path(__file__).parent / "scripts" / "ddp_run.py"
ROOT = Path(__file__).resolve().parents[2]
TABLE = "rows"
NUM_ROWS = 203  # odd; splits below are odd too
# val: 33 rows = 2 global steps of 2 x 8 + 1 row, so ranks end with different batch counts
# (3 and 2 at world size 2; 2, 1, 1, 1 at world size 4); train: 151 rows needs padding.
DATA = {"splits": {"train": 151, "val": 33, "test": 19}, "batch_size": 8, "seed": 7}
LAUNCH_TIMEOUT_S = 240
_CLUSTER_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK")


def make_table(root: Path, fragments: int = 1) -> str:
    """``id`` int64, ``x`` fixed_size_list<float32>[4] of small integers, ``y`` = id % 3; in
    ``fragments`` fragments of about equal size (one append each)."""
    rng = np.random.default_rng(0)
    x = rng.integers(-4, 5, size=(NUM_ROWS, 4)).astype(np.float32)
    data = pa.table(
        {
            "id": np.arange(NUM_ROWS, dtype=np.int64),
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4),
            "y": (np.arange(NUM_ROWS) % 3).astype(np.int64),
        }
    )
    uri = str(root / "db")
    cuts = np.linspace(0, NUM_ROWS, fragments + 1).astype(int)
    table = lancedb.connect(uri).create_table(TABLE, data.slice(0, cuts[1]))
    for lo, hi in zip(cuts[1:-1], cuts[2:]):
        table.add(data.slice(lo, hi - lo))
    return uri


def write_spec(root: Path, uri: str, runs: list[dict[str, Any]], name: str) -> Path:
    out = root / f"out-{name}"
    out.mkdir()
    spec = {"uri": uri, "table": TABLE, "out": str(out), "data": DATA, "runs": runs}
    path = root / f"spec-{name}.json"
    path.write_text(json.dumps(spec))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "TORCHELASTIC_", "PL_")) and k not in _CLUSTER_VARS
    }
    env["OMP_NUM_THREADS"] = "1"  # 2 processes or more on few cores: no thread oversubscription
    # this tree first: the scripts import its package and its tests' helpers (tests.helpers)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def start_process(cmd: list[str], env: dict[str, str], log: Path) -> Any:
    """Start ``cmd`` in a session of its own (on failure the launcher and all its children are killed
    together), output to ``log``. ``python ...`` forks from the test zygote (torch and Lightning
    imported once, ``tests/zygote.py``); the processes it starts (Lightning's re-run of the script for
    the other ranks, torchrun's workers) are fresh interpreters, as in any job."""
    if cmd[0] == sys.executable:
        return zygote.start(cmd[1:], cwd=ROOT, env=env, output=log)
    with log.open("w") as fh:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def run_processes(commands: list[tuple[list[str], dict[str, str]]], log_dir: Path, name: str) -> float:
    """Start all commands at once, wait for all; on failure or timeout kill them and show the logs."""
    start = time.monotonic()
    procs = []
    logs = []
    for i, (cmd, env) in enumerate(commands):
        log = log_dir / f"{name}-{i}.log"
        logs.append(log)
        procs.append(start_process(cmd, env, log))
    failed = []
    try:
        for i, proc in enumerate(procs):
            remaining = LAUNCH_TIMEOUT_S - (time.monotonic() - start)
            try:
                if proc.wait(timeout=max(remaining, 1)) != 0:
                    failed.append(f"process {i} exited with {proc.returncode}")
            except subprocess.TimeoutExpired:
                failed.append(f"process {i} still running after {LAUNCH_TIMEOUT_S} s (hang?)")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if failed:
        tails = "\n".join(f"--- {log.name} ---\n" + "\n".join(log.read_text().splitlines()[-40:]) for log in logs)
        raise AssertionError("; ".join(failed) + "\n" + tails)
    return time.monotonic() - start


def launch_lightning(spec: Path) -> float:
    """Lightning's own launcher: one process, which re-runs the script for the other local ranks."""
    return run_processes([([sys.executable, str(SCRIPT), str(spec)], clean_env())], spec.parent, spec.stem)


def launch_torchrun(spec: Path, *, nnodes: int, nproc_per_node: int) -> float:
    """One ``torchrun`` launcher per node, all on localhost."""
    port = free_port()
    commands = []
    for node in range(nnodes):
        cmd = [
            sys.executable, "-m", "torch.distributed.run",
            f"--nnodes={nnodes}", f"--nproc_per_node={nproc_per_node}", f"--node_rank={node}",
            "--master_addr=127.0.0.1", f"--master_port={port}",
            str(SCRIPT), str(spec),
        ]  # fmt: skip
        commands.append((cmd, clean_env()))
    return run_processes(commands, spec.parent, spec.stem)


def launch_slurm(spec: Path, *, nnodes: int, ntasks_per_node: int) -> float:
    """What ``srun`` does: one process per task, with SLURM's variables (Lightning's SLURMEnvironment)."""
    ntasks = nnodes * ntasks_per_node
    port = str(free_port())
    commands = []
    for task in range(ntasks):
        env = clean_env(
            SLURM_JOB_ID="4242",
            SLURM_JOB_NAME="lance-lightning-test",
            SLURM_NODELIST="127.0.0.1",
            SLURM_NNODES=str(nnodes),
            SLURM_NTASKS=str(ntasks),
            SLURM_NTASKS_PER_NODE=str(ntasks_per_node),
            SLURM_PROCID=str(task),
            SLURM_LOCALID=str(task % ntasks_per_node),
            SLURM_NODEID=str(task // ntasks_per_node),
            MASTER_PORT=port,
        )
        commands.append(([sys.executable, str(SCRIPT), str(spec)], env))
    return run_processes(commands, spec.parent, spec.stem)


def load_records(spec: Path, tag: str, world_size: int) -> list[dict[str, Any]]:
    out = Path(json.loads(spec.read_text())["out"])
    records = [json.loads((out / f"{tag}-rank{r}.json").read_text()) for r in range(world_size)]
    assert [r["global_rank"] for r in records] == list(range(world_size))
    assert {r["world_size"] for r in records} == {world_size}
    return records


class Expected:
    """What every rank must read, predicted in this process from the pure sharding functions."""

    def __init__(self, uri: str, data: dict[str, Any]) -> None:
        from lance_lightning import LanceDataModule

        self.dm = LanceDataModule(uri, TABLE, columns=["id", "x", "y"], **data)
        self.dm.setup()  # every stage, world size 1
        # the id at each position of each stage's split (what the samplers yield)
        self.ids = {
            stage: self.dm.datasets[stage][np.arange(sampler.split_rows)]["id"].tolist()
            for stage, sampler in self.dm.samplers.items()
        }

    def stage_ids(self, stage: str) -> list[int]:
        """The ids an epoch of ``stage`` reads: its split's, or those of weight > 0 (weighted shuffle)."""
        weights = self.dm.samplers[stage].weights
        ids = self.ids[stage]
        return ids if weights is None else [i for i, w in zip(ids, weights.tolist()) if w > 0]

    def batches(self, stage: str, *, rank: int, world_size: int, epoch: int) -> list[list[int]]:
        base = self.dm.samplers[stage]
        sampler = LanceBatchSampler(
            base.split_rows,
            batch_size=base.batch_size,
            num_replicas=world_size,
            rank=rank,
            shuffle=base.shuffle_mode,
            seed=base.seed,
            drop_last=base.drop_last,
            even=base.even,
            block_size=base.block_size,
            window_blocks=base.window_blocks,
            weights=base.weights,
            samples_per_epoch=base.samples_per_epoch,
            replacement=base.replacement,
        )
        sampler.set_epoch(epoch)
        ids = self.ids[stage]
        return [[ids[p] for p in batch.tolist()] for batch in sampler]


def check_stage(records, expected: Expected, stage: str, *, epochs: int) -> list[list[list[list[int]]]]:
    """Assert every rule for ``stage`` in one run; return ``[epoch][rank]`` batches of ids."""
    w = len(records)
    base = expected.dm.samplers[stage]
    per_epoch = []
    for rank, record in enumerate(records):
        used = record["samplers"][stage]
        # Rule 1: sharded once, by the Trainer's rank and world size; Lightning left it alone.
        assert used["type"] == type(base).__name__ and used["is_datamodule_sampler"], used
        assert (used["rank"], used["num_replicas"]) == (rank, w), used
    for epoch in range(epochs):
        batches = [record["seen"].get(stage, {}).get(str(epoch), []) for record in records]
        assert_epoch_invariants(
            batches,
            expected.stage_ids(stage),
            world_size=w,
            batch_size=base.batch_size,
            drop_last=base.drop_last,
            even=base.even,
        )
        for rank in range(w):
            want = expected.batches(stage, rank=rank, world_size=w, epoch=epoch)
            assert batches[rank] == want, f"{stage} epoch {epoch} rank {rank}: not the (seed, epoch) order"
        per_epoch.append(batches)
    return per_epoch
