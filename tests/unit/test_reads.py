"""``lance_lightning.reads.plan_reads``: the pure read planner (offsets -> scans and takes), no table.

The reads themselves, on a real table, are tested in tests/integration/test_reads.py.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lance_lightning.reads import MAX_RUN_GAP, MIN_SCAN_DENSITY, MIN_SCAN_ROWS, plan_reads

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_plan_reads_scans_dense_runs_and_takes_the_rest_in_one_call():
    dense = np.arange(100, 100 + MIN_SCAN_ROWS)
    holes = np.arange(50_000, 50_000 + 2 * MIN_SCAN_ROWS, 2)  # half of the range: still scanned
    thin = np.arange(90_000, 90_000 + 4 * MIN_SCAN_ROWS, 4)  # a quarter: taken
    offsets = np.concatenate([[0, 5], dense, [20_000], holes, thin, [200_000]])
    reads = plan_reads(offsets)
    assert [k for k, _, _ in reads] == ["take", "scan", "take", "scan", "take"]
    # Every offset is in exactly one read, in order, and neighbouring takes are merged.
    assert [lo for _, lo, _ in reads] == [0, *(hi for _, _, hi in reads)][: len(reads)]
    assert reads[-1][2] == len(offsets)
    assert offsets[reads[1][1] : reads[1][2]].tolist() == dense.tolist()
    assert plan_reads(np.array([], dtype=np.int64)) == []
    assert plan_reads(np.arange(0, MIN_SCAN_ROWS * (MAX_RUN_GAP + 1), MAX_RUN_GAP + 1)) == [("take", 0, MIN_SCAN_ROWS)]


@st.composite
def sorted_offsets(draw) -> np.ndarray:
    """Sorted distinct offsets made of runs (gaps 1..2*MAX_RUN_GAP, so runs hold together or break
    at random) and jumps, long enough to cross MIN_SCAN_ROWS and the density threshold either way."""
    parts, at = [], 0
    for _ in range(draw(st.integers(0, 6))):
        at += draw(st.integers(1, 100_000))  # a jump: always a new run
        length = draw(st.sampled_from([1, 7, MIN_SCAN_ROWS - 1, MIN_SCAN_ROWS, 3 * MIN_SCAN_ROWS]))
        step = draw(st.sampled_from([1, 2, 3, MAX_RUN_GAP, MAX_RUN_GAP + 1]))
        seed = draw(st.integers(0, 2**32 - 1))
        gaps = np.random.default_rng(seed).integers(1, step + 1, length)  # mean (step + 1) / 2
        run = at + np.cumsum(gaps)
        parts.append(run)
        at = int(run[-1]) + MAX_RUN_GAP + 1
    return np.concatenate(parts) if parts else np.array([], dtype=np.int64)


@FAST
@given(offsets=sorted_offsets())
def test_plan_reads_covers_every_offset_once_and_scans_exactly_the_dense_runs(offsets):
    reads = plan_reads(offsets)
    n = len(offsets)
    # The reads tile 0..n in order; no two takes are neighbours (they would be one call).
    assert [lo for _, lo, _ in reads] == [0, *(hi for _, _, hi in reads)][: len(reads)]
    assert (reads[-1][2] if reads else 0) == n
    assert all(lo < hi for _, lo, hi in reads)
    assert all(not (a[0] == b[0] == "take") for a, b in zip(reads, reads[1:]))
    # Runs by definition: maximal stretches whose neighbours are at most MAX_RUN_GAP apart.
    gaps = np.diff(offsets) > MAX_RUN_GAP
    bounds = [0, *(np.flatnonzero(gaps) + 1).tolist(), n] if n else []
    runs = list(zip(bounds[:-1], bounds[1:]))

    def dense(lo: int, hi: int) -> bool:
        rows, span = hi - lo, int(offsets[hi - 1] - offsets[lo]) + 1
        return rows >= MIN_SCAN_ROWS and rows >= MIN_SCAN_DENSITY * span

    assert [(lo, hi) for kind, lo, hi in reads if kind == "scan"] == [r for r in runs if dense(*r)]
