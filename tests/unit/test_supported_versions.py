"""The floors in pyproject.toml are the versions the "oldest supported" CI job installs.

``.ci/oldest`` reads them from pyproject.toml itself (and asserts the installed versions
equal them); these tests keep the two from drifting apart without building its venv.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
OLDEST = ROOT / ".ci" / "oldest"
# torch is installed from the one CPU wheel on disk, not at its floor (see .ci/oldest).
NOT_AT_FLOOR = {"torch"}


def declared_floors() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)>=([0-9][0-9.]*)", dep.replace(" ", ""))
        assert m, f"runtime dependency {dep!r} has no plain '>=' floor for the oldest job to install"
        floors[m[1]] = m[2]
    return floors


@pytest.mark.skipif(sys.platform == "win32", reason="the CI job is a bash script")
def test_oldest_job_installs_exactly_the_declared_floors():
    printed = subprocess.run(
        ["bash", str(OLDEST), "--print-floors"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    expected = [f"{name}=={floor}" for name, floor in declared_floors().items() if name not in NOT_AT_FLOOR]
    assert printed == expected


def test_oldest_job_types_no_version_of_its_own():
    script = OLDEST.read_text()
    for name in declared_floors():
        if name in NOT_AT_FLOOR:
            continue
        assert not re.search(rf"\b{re.escape(name)}\s*[=<>~!]=", script), f".ci/oldest pins {name} itself"
    assert "pyproject.toml" in script and "tomllib" in script


def test_ci_runs_the_oldest_job():
    run = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^bash \.ci/oldest\s*$", run, re.MULTILINE)
