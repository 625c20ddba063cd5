"""Exact k nearest neighbours of every row of a split, in blocks of matrix products.

The mining pass of the neighbours a batch carries (issue 32): a pure function of the vectors and
the settings, the same in every process. Both the queries and the rows searched are cut into
blocks, so memory stays at ``query_block x row_block`` distances (64 MiB by default) whatever the
split's size; each query block keeps a running top ``k``, merged block by block.

Which rows a row may have as neighbours: never itself; never a row of the same ``groups`` value
(its positives, e.g. the same label) when ``groups`` is given; only rows where ``eligible`` is
True when it is given. A row with fewer than ``k`` such rows gets them all, then padding
(``ids == -1``, ``valid == False``), never silently fewer.

Order among equal distances: the smaller position first, so the lists are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

Metric = Literal["l2", "cosine", "dot"]
METRICS: tuple[str, ...] = ("l2", "cosine", "dot")
BLOCK_BYTES = 64 << 20
"""Bytes of distances held at once (query block x row block, float32)."""


@dataclass(frozen=True)
class Neighbors:
    """``ids[i]``: the positions of row ``i``'s neighbours, nearest first (``-1``: padding);
    ``distances[i]``: theirs (``inf`` for padding; for ``dot``, the negated product);
    ``valid[i]``: False where padded."""

    ids: np.ndarray
    distances: np.ndarray
    valid: np.ndarray


def exact_neighbors(
    vectors: np.ndarray,
    k: int,
    *,
    metric: Metric = "l2",
    groups: np.ndarray | None = None,
    eligible: np.ndarray | None = None,
    block_bytes: int = BLOCK_BYTES,
    progress: Callable[[int], None] | None = None,
    queries: np.ndarray | None = None,
) -> Neighbors:
    """The ``k`` nearest rows of every row of ``vectors`` (``[n, d]``) by ``metric``; with
    ``queries`` (positions), of those rows only (the result has one row per query).
    ``progress(rows)`` is called after each block of queries with the queries done so far."""
    x = np.asarray(vectors)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"vectors must be a 2-d numeric array [rows, dim], got shape {x.shape} of {x.dtype}")
    n = len(x)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(map(repr, METRICS))}, got {metric!r}")
    for name, values in (("groups", groups), ("eligible", eligible)):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} has {len(values)} values for {n} rows")
    x = x.astype(np.float32, copy=False)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    squared = np.einsum("ij,ij->i", x, x) if metric == "l2" else None
    q_all = np.arange(n, dtype=np.int64) if queries is None else np.asarray(queries, dtype=np.int64)
    k_out = int(k)
    ids = np.full((len(q_all), k_out), -1, dtype=np.int64)
    dist = np.full((len(q_all), k_out), np.inf, dtype=np.float32)
    block = max(1, int(np.sqrt(block_bytes / 4)))
    for q0 in range(0, len(q_all), block):
        q1 = min(len(q_all), q0 + block)
        q = q_all[q0:q1]
        best_ids, best = ids[q0:q1], dist[q0:q1]
        for r0 in range(0, n, block):
            r1 = min(n, r0 + block)
            d = _distances(x[q], x[r0:r1], metric, squared, q, r0)
            _exclude(d, q, r0, groups, eligible)
            cand_ids = np.broadcast_to(np.arange(r0, r1, dtype=np.int64), d.shape)
            merged_d = np.concatenate([best, d], axis=1)
            merged_ids = np.concatenate([best_ids, cand_ids], axis=1)
            best_ids, best = _top_k(merged_d, merged_ids, k_out)
        ids[q0:q1], dist[q0:q1] = best_ids, best
        if progress is not None:
            progress(q1)
    valid = np.isfinite(dist)
    ids[~valid] = -1
    return Neighbors(ids=ids, distances=dist, valid=valid)


def _distances(
    q: np.ndarray, r: np.ndarray, metric: str, squared: np.ndarray | None, q_pos: np.ndarray, r0: int
) -> np.ndarray:
    product = q @ r.T
    if metric == "l2":
        d = squared[q_pos, None] - 2 * product + squared[None, r0 : r0 + len(r)]
        return np.maximum(d, 0, out=d)
    if metric == "cosine":
        return 1 - product
    return -product


def _exclude(d: np.ndarray, q: np.ndarray, r0: int, groups: np.ndarray | None, eligible: np.ndarray | None) -> None:
    """Set to ``inf`` what a row may not have as a neighbour: itself, its group, ineligible rows."""
    r = np.arange(r0, r0 + d.shape[1])
    d[q[:, None] == r[None, :]] = np.inf
    if groups is not None:
        g = np.asarray(groups)
        d[g[q][:, None] == g[r][None, :]] = np.inf
    if eligible is not None:
        d[:, ~np.asarray(eligible, dtype=bool)[r]] = np.inf


def _top_k(d: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` smallest of ``d`` with their ids, ordered by (distance, id)."""
    if d.shape[1] > k:
        # take every candidate tied with the k-th distance, so that the id breaks ties exactly
        kth = np.partition(d, k - 1, axis=1)[:, k - 1 : k]
        keep = d <= kth
        width = int(keep.sum(axis=1).max())
        order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
        d, ids = np.take_along_axis(d, order, axis=1), np.take_along_axis(ids, order, axis=1)
    order = np.lexsort((ids, d), axis=1) if d.ndim == 2 else np.lexsort((ids, d))
    d, ids = np.take_along_axis(d, order, axis=1), np.take_along_axis(ids, order, axis=1)
    return ids[:, :k], d[:, :k]
