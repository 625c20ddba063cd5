"""RowSet: a split's row offsets/addresses in ~2 bits a spanned row, checked against plain arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lance_lightning.rowset import SEGMENT_GAP, RowSet

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def row_sets(draw) -> np.ndarray:
    """Sorted distinct values: dense and sparse stretches, and jumps like fragment boundaries."""
    parts, base = [], draw(st.integers(0, 1000))
    for _ in range(draw(st.integers(1, 4))):
        n = draw(st.integers(0, 3000))
        density = draw(st.sampled_from([1.0, 0.8, 0.3, 0.01]))
        seed = draw(st.integers(0, 2**32 - 1))
        keep = np.random.default_rng(seed).random(n) < density
        parts.append(base + np.flatnonzero(keep))
        base += n + draw(st.sampled_from([0, 1, 100, SEGMENT_GAP + 1, 1 << 32]))
    return np.concatenate(parts).astype(np.uint64)


@FAST
@given(values=row_sets(), seed=st.integers(0, 2**32 - 1))
def test_select_and_to_array_agree_with_the_plain_array(values, seed):
    rows = RowSet.from_sorted(values)
    assert len(rows) == len(values)
    assert np.array_equal(rows.to_array(), values)
    if not len(values):
        return
    rng = np.random.default_rng(seed)
    scattered = rng.integers(0, len(values), 300)  # any order, repeats
    assert np.array_equal(rows.select(scattered), values[scattered])
    lo = int(rng.integers(0, len(values)))
    run = np.arange(lo, min(len(values), lo + int(rng.integers(1, 2000))))  # consecutive positions
    assert np.array_equal(rows.select(run), values[run])
    mixed = np.sort(np.concatenate([run, scattered]))
    assert np.array_equal(rows.select(mixed), values[mixed])


def test_a_split_costs_about_two_bits_a_table_row():
    keep = np.random.default_rng(0).random(1_000_000) < 0.8
    rows = RowSet.from_sorted(np.flatnonzero(keep))
    assert rows.nbytes <= 1_000_000 / 4 + 64  # vs 8,000,000 bytes as uint64 row ids (~800k rows)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="sorted, distinct"):
        RowSet.from_sorted(np.array([3, 1, 2]))
    with pytest.raises(ValueError, match="sorted, distinct"):
        RowSet.from_sorted(np.array([1, 1]))
    with pytest.raises(IndexError, match=r"positions must be in \[0, 3\)"):
        RowSet.from_sorted(np.array([1, 5, 9])).select(np.array([3]))
    assert len(RowSet.from_sorted(np.array([], dtype=np.uint64)).select(np.array([], dtype=np.int64))) == 0
