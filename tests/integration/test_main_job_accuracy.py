"""The main job as the README runs it: ``lance-lightning-train`` with its defaults (the demo
digits table, the MLP, 15 epochs, seed 42) from an empty directory, held to an accuracy bound.

Measured on this project's 2-core CPU machine (torch 2.13.0+cpu, lightning 2.6): commit 86eb3c7
prints ``test metrics: test/acc=0.9889  test/loss=0.0667`` (178 of the 180 test rows) on every
run, 53-71 s under load; the README quotes that line. Commit 9e0343d (before batches kept their
epoch order and reads were staged) printed 0.9778 (176 rows), and seeds 0-4 gave 0.972-0.983. The
bound leaves room for 5-7 more wrong rows (float rounding elsewhere, a change that moves the
seeded order) but not for a job that no longer learns the digits.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

MIN_TEST_ACCURACY = 0.95


@pytest.mark.slow
def test_default_main_job_reaches_the_readme_accuracy(tmp_path):
    command = Path(sys.executable).parent / "lance-lightning-train"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(command)],  # the defaults, nothing overridden
        cwd=tmp_path,
        env={**env, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = re.search(r"test metrics: test/acc=(\d\.\d+)  test/loss=(\d+\.\d+)", result.stdout)
    assert printed, result.stdout[-2000:]
    assert float(printed.group(1)) >= MIN_TEST_ACCURACY, printed.group(0)
    assert (tmp_path / "data" / "demo" / "digits.lance").is_dir()  # built on first use, where it ran
