"""``lance-lightning-train`` / ``python -m lance_lightning.app.train`` as users run them: real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TRAIN_SCRIPT = Path(sys.executable).parent / "lance-lightning-train"


def hparams(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text())


@pytest.fixture
def tiny(digits_db):
    uri, table = digits_db(200)
    return [f"data.uri={uri}", f"data.table={table}", "trainer.enable_progress_bar=false"]


def test_module_entry_with_overrides(tiny, run_cli, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            "-m",
            "lance_lightning.app.train",
            *tiny,
            "data.columns=[image,label]",
            "data.batch_size=64",
            "data.splits.val=0.2",
            "data.splits.train=0.7",
            "trainer=cpu",
            "trainer.max_epochs=1",
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test metrics: test/acc=" in result.stdout
    logged = hparams(run_dir)
    assert logged["data_batch_size"] == 64
    assert logged["data_splits"] == {"train": 0.7, "val": 0.2, "test": 0.1}
    assert logged["split_rows"] == {"train": 140, "val": 40, "test": 20}
    assert logged["shard_plan"]["train"]["batches_per_rank"] == [3]
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()


@pytest.mark.distributed
@pytest.mark.skipif(not TRAIN_SCRIPT.exists(), reason="console script not installed (pip install -e .)")
def test_ddp_sim_two_cpu_processes(tiny, run_cli, tmp_path):
    """Lightning re-launches the console script for rank 1; both ranks train, rank 0 reports."""
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            str(TRAIN_SCRIPT),
            *tiny,
            "trainer=ddp_sim",
            "trainer.max_epochs=1",
            "data.batch_size=16",
            "callbacks=none",
            f"hydra.run.dir={run_dir}",
        ],
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output and "distributed_backend=gloo" in output
    assert result.stdout.count("test metrics: test/acc=") == 1  # printed by rank 0 only
    plan = hparams(run_dir)["shard_plan"]
    assert plan["train"]["world_size"] == 2
    assert plan["train"]["batches_per_rank"] == [5, 5] and plan["train"]["rows_per_rank"] == [80, 80]
    assert plan["test"]["rows_per_rank"] == [10, 10]
    assert (run_dir / "train_ddp_process_1.log").exists()  # rank 1 ran in this job's directory


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_sim_inside_a_sweep(tiny, run_cli, tmp_path):
    """A ``-m`` sweep runs one job per value, each with its own settings and directory, and each job
    re-launches only itself for rank 1, in that directory."""
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        [
            "-m",
            "lance_lightning.app.train",
            "-m",
            *tiny,
            "trainer=ddp_sim",
            "trainer.max_epochs=1",
            "data.batch_size=16,32",
            "callbacks=none",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert result.stdout.count("test metrics: test/acc=") == 2
    assert output.count("GLOBAL_RANK: 1, MEMBER: 2/2") == 2
    assert [hparams(sweep_dir / str(job))["data_batch_size"] for job in (0, 1)] == [16, 32]
    for job, batches in ((0, [5, 5]), (1, [3, 3])):  # 160 rows over 2 ranks, by 16 and by 32
        assert hparams(sweep_dir / str(job))["shard_plan"]["train"]["batches_per_rank"] == batches
        assert (sweep_dir / str(job) / "train_ddp_process_1.log").exists()


def run_quietly(args: list[str], cwd: Path, *, full_error: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "lance_lightning.app.train", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_a_wrong_table_name_is_one_line_without_a_traceback(digits_db, tmp_path):
    """Issue 30: "no table 'digit' ... tables there: 'digits'" came under 30-67 lines of traceback,
    raised inside fit; now it is the whole of stderr's last line, before any Trainer starts."""
    uri, _ = digits_db(50)
    args = [f"data.uri={uri}", "data.table=digit", f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_quietly(args, tmp_path, full_error=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "GPU available" not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lance-lightning-train: error: ") and "'digit'" in last and "'digits'" in last, last
    assert "HYDRA_FULL_ERROR=1" in last
    full = run_quietly(args, tmp_path, full_error=True)
    assert full.returncode == 1 and "Traceback" in full.stderr


def test_batch_keys_and_the_global_seed_from_the_command_line(tiny, run_cli, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            "-m",
            "lance_lightning.app.train",
            *tiny,
            "data.columns=[image,label]",
            "data.batch_keys=[image,label]",
            "seed=7",
            "data.seed=null",  # the demo config fixes its data seed; null follows the job's
            "trainer=cpu",
            "trainer.max_epochs=1",
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logged = hparams(run_dir)
    assert logged["data_batch_keys"] == ["image", "label"]
    assert (logged["data_seed"], logged["data_seed_from"]) == (7, "seed_everything")
