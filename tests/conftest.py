"""Shared fixtures: real on-disk LanceDB tables made in ``tmp_path``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest


def toy_table(num_rows: int, *, dim: int = 4, seed: int = 0) -> pa.Table:
    """``id`` (== row number), ``x`` fixed_size_list<float32>[dim], ``y`` int64 label, ``name`` string."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_rows, dim)).astype(np.float32)
    return pa.table(
        {
            "id": np.arange(num_rows, dtype=np.int64),
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim),
            "y": (np.arange(num_rows) % 3).astype(np.int64),
            "name": [f"row-{i}" for i in range(num_rows)],
        }
    )


@pytest.fixture
def make_table(tmp_path):
    """``make_table(name, num_rows | pa.Table) -> (uri, table)``: a table in a fresh on-disk database."""
    import lancedb

    uri = str(tmp_path / "db")

    def make(name: str = "toy", data: int | pa.Table = 101, **kwargs):
        db = lancedb.connect(uri)
        table = db.create_table(name, toy_table(data, **kwargs) if isinstance(data, int) else data)
        return uri, table

    return make
