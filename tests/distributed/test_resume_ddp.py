"""Resume under real DDP processes, at the same and at another world size.

Each run is Lightning's own DDP launcher: rank 0 forked from the test zygote (``tests/zygote.py``),
rank 1 a fresh ``python`` (about ten seconds of imports on 2 cores). So the runs are shared: one
2-process run is both the uninterrupted reference and the source of a mid-epoch checkpoint, resumed
at 2 and at 1 processes.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import pytest

from tests import zygote

SCRIPT = Path(__file__).parent / "scripts" / "resume_ddp.py"
ROWS, BATCH, SAVE_STEP = 101, 8, 3
pytestmark = [pytest.mark.distributed, pytest.mark.long]


def run(uri, out, tag, devices, save_step=-1, ckpt_in="-", ckpt_out="-", data=None) -> list[list[list[int]]]:
    """Each rank's batches of ids; with ``save_step`` the checkpoint ``ckpt_out`` is written there;
    ``data``: more datamodule settings."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = zygote.run(  # rank 0 forks from the test zygote; Lightning starts rank 1 afresh
        [
            str(SCRIPT),
            uri,
            str(out),
            tag,
            str(devices),
            str(save_step),
            str(ckpt_in),
            str(ckpt_out),
            json.dumps(data or {}),
        ],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        output=out / f"log-{tag}.txt",
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    return [json.loads((out / f"{tag}_rank{r}.json").read_text()) for r in range(devices)]


def before_save(out, tag, devices) -> list[list[list[int]]]:
    return [json.loads((out / f"{tag}-before_rank{r}.json").read_text()) for r in range(devices)]


def flat(batches) -> list[int]:
    return [i for batch in batches for i in batch]


def assert_no_row_lost(before, after, new: int, universe: range | list[int] = range(ROWS)) -> None:
    """The rest of the interrupted epoch at ``new`` ranks loses no row of ``universe`` (what an epoch
    reads); the next epoch is whole."""
    per_epoch_new = -(-len(universe) // (new * BATCH))  # batches per rank in a full epoch at the new size
    rest_batches = [len(a) - per_epoch_new for a in after]
    assert len(set(rest_batches)) == 1, "ranks ran different numbers of batches: DDP would hang"
    epoch0 = flat(b for rank in before for b in rank) + flat(
        b for rank, a in enumerate(after) for b in a[: rest_batches[rank]]
    )
    counts = collections.Counter(epoch0)
    assert set(counts) == set(universe), "rows of the interrupted epoch were lost"
    old = len(before)
    assert sum(c - 1 for c in counts.values()) <= max(old, new) - 1, "rows repeated beyond the padding rule"
    epoch1 = flat(b for a in after for b in a[rest_batches[0] :])
    assert set(epoch1) == set(universe)


def test_ddp_resume_matches_uninterrupted_run_and_resumes_at_one_process(make_table, tmp_path):
    uri, _ = make_table("toy", ROWS)
    ckpt = tmp_path / "mid.ckpt"
    reference = run(uri, tmp_path, "ref", 2, save_step=SAVE_STEP, ckpt_out=ckpt)
    before = before_save(tmp_path, "ref", 2)
    assert all(len(rank) == SAVE_STEP for rank in before)
    after = run(uri, tmp_path, "after", 2, ckpt_in=ckpt)
    for rank in range(2):
        assert before[rank] + after[rank] == reference[rank]
    # the same checkpoint, resumed by one process (2 -> 1)
    assert_no_row_lost(before, run(uri, tmp_path, "after1", 1, ckpt_in=ckpt), new=1)


def test_resume_of_one_process_on_two_loses_no_row(make_table, tmp_path):
    uri, _ = make_table("toy", ROWS)
    ckpt = tmp_path / "mid.ckpt"
    run(uri, tmp_path, "one", 1, save_step=SAVE_STEP, ckpt_out=ckpt)
    assert_no_row_lost(before_save(tmp_path, "one", 1), run(uri, tmp_path, "after2", 2, ckpt_in=ckpt), new=2)


def test_weighted_ddp_resume_is_exact_and_resumes_at_one_process(make_table, tmp_path):
    """weight_column: the epoch is the rows of weight > 0 in weighted order; a mid-epoch checkpoint
    resumes exactly at 2 processes and loses no row at 1 (the order does not depend on the world size)."""
    import pyarrow as pa

    from tests.conftest import toy_table

    uri, _ = make_table("toy", toy_table(ROWS).append_column("w", pa.array([float(i % 4) for i in range(ROWS)])))
    positive = [i for i in range(ROWS) if i % 4]
    weighted = {"weight_column": "w"}
    ckpt = tmp_path / "mid.ckpt"
    reference = run(uri, tmp_path, "ref", 2, save_step=SAVE_STEP, ckpt_out=ckpt, data=weighted)
    epoch0 = flat(b for rank in reference for b in rank[: len(reference[0]) // 2])
    assert set(epoch0) == set(positive) and len(epoch0) == len(positive) + 1  # 75 rows: 1 padded on 2 ranks
    before = before_save(tmp_path, "ref", 2)
    after = run(uri, tmp_path, "after", 2, ckpt_in=ckpt, data=weighted)
    for rank in range(2):
        assert before[rank] + after[rank] == reference[rank]
    assert_no_row_lost(before, run(uri, tmp_path, "after1", 1, ckpt_in=ckpt, data=weighted), new=1, universe=positive)


def test_one_source_mixture_batches_resume_on_one_process_with_the_epoch_s_rows(make_table, tmp_path):
    """``mix_batching="source"``: an epoch holds whole batches, their count a multiple of the world
    size (96 rows at 2 ranks of 8, 104 at 1), so the interrupted epoch's rows are those dealt for 2
    ranks; resumed at 1 it reads exactly the rest of them, each batch of one source. Before, the
    resume was refused: the epoch's rows were counted for the new world size ('the split was built
    differently')."""
    uri, _ = make_table("toy", ROWS)
    halves = {"even": {"proportion": 0.5, "filter": "id % 2 = 0"}, "odd": {"proportion": 0.5, "filter": "id % 2 = 1"}}
    data = {"mix": halves, "mix_batching": "source", "columns": ["id", "x", "y"]}
    ckpt = tmp_path / "mid.ckpt"
    reference = run(uri, tmp_path, "ref", 2, save_step=SAVE_STEP, ckpt_out=ckpt, data=data)
    per_epoch = len(reference[0]) // 2
    epoch0 = collections.Counter(flat(b for rank in reference for b in rank[:per_epoch]))
    assert sum(epoch0.values()) == 96
    before = collections.Counter(flat(b for rank in before_save(tmp_path, "ref", 2) for b in rank))
    (after,) = run(uri, tmp_path, "after1", 1, ckpt_in=ckpt, data=data)
    rest = after[: (96 - sum(before.values())) // BATCH]
    assert before + collections.Counter(flat(rest)) == epoch0
    assert all(len({i % 2 for i in batch}) == 1 for batch in after)  # every batch of one source
