"""Resume under real DDP processes, at the same and at another world size."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "resume_ddp.py"
ROWS, BATCH = 101, 8
pytestmark = pytest.mark.distributed


def run(uri, out, tag, devices, stop_step=-1, ckpt_in="-", ckpt_out="-") -> list[list[list[int]]]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), uri, str(out), tag, str(devices), str(stop_step), str(ckpt_in), str(ckpt_out)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert result.returncode == (3 if stop_step > 0 else 0), result.stderr[-4000:]
    return [json.loads((out / f"{tag}_rank{r}.json").read_text()) for r in range(devices)]


def flat(batches) -> list[int]:
    return [i for batch in batches for i in batch]


def test_ddp_resume_matches_uninterrupted_run(make_table, tmp_path):
    uri, _ = make_table("toy", ROWS)
    reference = run(uri, tmp_path, "ref", 2)
    before = run(uri, tmp_path, "before", 2, stop_step=3, ckpt_out=tmp_path / "mid.ckpt")
    after = run(uri, tmp_path, "after", 2, ckpt_in=tmp_path / "mid.ckpt")
    for rank in range(2):
        assert before[rank] + after[rank] == reference[rank]


@pytest.mark.parametrize(("old", "new"), [(2, 1), (1, 2)])
def test_resume_at_another_world_size_loses_no_row(make_table, tmp_path, old, new):
    uri, _ = make_table("toy", ROWS)
    stop = 3
    before = run(uri, tmp_path, "before", old, stop_step=stop, ckpt_out=tmp_path / "mid.ckpt")
    after = run(uri, tmp_path, "after", new, ckpt_in=tmp_path / "mid.ckpt")
    per_epoch_new = -(-ROWS // (new * BATCH))  # batches per rank in a full epoch at the new size
    rest_batches = [len(a) - per_epoch_new for a in after]
    assert len(set(rest_batches)) == 1, "ranks ran different numbers of batches: DDP would hang"
    epoch0 = flat(b for rank in before for b in rank) + flat(
        b for rank, a in enumerate(after) for b in a[: rest_batches[rank]]
    )
    counts = collections.Counter(epoch0)
    assert set(counts) == set(range(ROWS)), "rows of the interrupted epoch were lost"
    assert sum(c - 1 for c in counts.values()) <= max(old, new) - 1, "rows repeated beyond the padding rule"
    epoch1 = flat(b for a in after for b in a[rest_batches[0] :])
    assert set(epoch1) == set(range(ROWS))
