"""Every script in examples/ runs as users run it (a fresh process, its own table in a temp dir)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CASES = {
    "plain_python.py": ["--epochs", "1"],
    "embeddings_classifier.py": [],
    "embed_table.py": [],  # predictions written into the table, indexed, queried (k-NN vote accuracy)
    "image_bytes.py": [],  # the dotted-path transform in workers: tests/integration/test_workers_and_trainer.py
}


def test_every_example_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs(name, run_cli, tmp_path):
    result = run_cli([str(EXAMPLES / name), *CASES[name]])
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = re.search(r"test accuracy (\d\.\d+)", result.stdout)
    assert accuracy and 0.0 <= float(accuracy.group(1)) <= 1.0, result.stdout[-2000:]
    assert list(tmp_path.iterdir()) == []  # each example cleans up its temporary table
