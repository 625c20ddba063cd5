"""The exact neighbour search against a brute-force reference: every metric, exclusions, padding,
ties, and blocks much smaller than the split (the running top-k merge)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lance_lightning.neighbors import exact_neighbors


def brute_force(x, k, metric, groups=None, eligible=None):
    x = x.astype(np.float64)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    if metric == "l2":
        d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    elif metric == "cosine":
        d = 1 - x @ x.T
    else:
        d = -(x @ x.T)
    n = len(x)
    out = []
    for i in range(n):
        allowed = [j for j in range(n) if j != i]
        if groups is not None:
            allowed = [j for j in allowed if groups[j] != groups[i]]
        if eligible is not None:
            allowed = [j for j in allowed if eligible[j]]
        ranked = sorted(allowed, key=lambda j: (round(d[i, j], 4), j))[:k]
        out.append(ranked + [-1] * (k - len(ranked)))
    return np.array(out)


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
@pytest.mark.parametrize("block_bytes", [4 * 7 * 7, 64 << 20])  # 7x7 blocks: many merges; one block
def test_neighbours_are_the_brute_force_ones(metric, block_bytes):
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, size=(40, 3)).astype(np.float32)  # small integers: exact distances, many ties
    got = exact_neighbors(x, 5, metric=metric, block_bytes=block_bytes)
    want = brute_force(x, 5, metric)
    if metric == "cosine":  # not exact in float32: near-ties may rank either way; the distances may not
        xn = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
        dist_of = lambda ids: 1 - np.einsum("id,ikd->ik", xn, xn[ids])  # noqa: E731
        np.testing.assert_allclose(dist_of(got.ids), dist_of(want), atol=1e-5)
    else:
        np.testing.assert_array_equal(got.ids, want)
    assert got.valid.all()
    assert not (got.ids == np.arange(40)[:, None]).any()  # never the row itself


def test_same_group_rows_and_ineligible_rows_are_never_neighbours():
    rng = np.random.default_rng(1)
    x = rng.integers(-5, 6, size=(30, 4)).astype(np.float32)
    labels = rng.integers(0, 3, size=30)
    eligible = rng.random(30) > 0.3
    got = exact_neighbors(x, 4, groups=labels, eligible=eligible, block_bytes=4 * 8 * 8)
    np.testing.assert_array_equal(got.ids, brute_force(x, 4, "l2", labels, eligible))
    for i, row in enumerate(got.ids):
        for j in row[row >= 0]:
            assert labels[j] != labels[i] and eligible[j]


def test_a_row_with_fewer_than_k_candidates_is_padded_and_masked_never_given_fewer():
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    labels = np.array([0, 0, 0, 1, 1])
    got = exact_neighbors(x, 3, groups=labels)
    assert got.ids.shape == (5, 3)
    # rows of label 0 have the two rows of label 1; rows of label 1 have the three of label 0
    assert got.valid.sum(axis=1).tolist() == [2, 2, 2, 3, 3]
    assert (got.ids[~got.valid] == -1).all() and np.isinf(got.distances[~got.valid]).all()
    np.testing.assert_array_equal(got.ids[0], [3, 4, -1])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 25),
    k=st.integers(1, 8),
    block=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_any_blocking_gives_the_same_lists(n, k, block, seed):
    x = np.random.default_rng(seed).integers(-2, 3, size=(n, 2)).astype(np.float32)
    one_block = exact_neighbors(x, k)
    blocked = exact_neighbors(x, k, block_bytes=4 * block * block)
    np.testing.assert_array_equal(blocked.ids, one_block.ids)
    np.testing.assert_array_equal(one_block.ids, brute_force(x, k, "l2"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must be an integer >= 1"),
        ({"k": True}, "k must be an integer >= 1"),
        ({"k": 2.5}, "k must be an integer >= 1"),
        ({"k": 2, "metric": "hamming"}, "metric must be one of"),
        ({"k": 2, "groups": np.zeros(3)}, "groups has 3 values for 10 rows"),
    ],
)
def test_bad_settings_are_refused_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        exact_neighbors(np.zeros((10, 2), np.float32), **kwargs)


def test_a_column_that_is_not_vectors_is_refused():
    with pytest.raises(ValueError, match="2-d numeric array"):
        exact_neighbors(np.zeros(10), 2)
