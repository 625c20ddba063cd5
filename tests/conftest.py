"""Shared fixtures: real on-disk LanceDB tables made in ``tmp_path``."""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pyarrow as pa
import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Stages (lance_lightning/stage) go to a directory of this test session, never the user's
    cache: set before any test (and inherited by the DDP and CLI subprocesses the tests start)."""
    config.stage_home = tempfile.mkdtemp(prefix="lance-lightning-tests-")
    os.environ["XDG_CACHE_HOME"] = config.stage_home


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(config.stage_home, ignore_errors=True)


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


def toy_database(tmp_path_factory: pytest.TempPathFactory, prefix: str, num_rows: int) -> str:
    """The URI of a new on-disk database holding ``toy_table(num_rows)`` as ``toy`` (for module-scoped
    fixtures, which cannot use ``make_table``)."""
    import lancedb

    uri = str(tmp_path_factory.mktemp(prefix) / "db")
    lancedb.connect(uri).create_table("toy", toy_table(num_rows))
    return uri


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


def digits_like_table(num_rows: int, *, seed: int = 0) -> pa.Table:
    """Like the demo table: ``id`` int64, ``image`` fixed_shape_tensor<float32, [8, 8]>,
    ``label`` int64 equal to ``id % 10`` (so each split's label balance is known exactly)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, (num_rows, 8, 8)).astype(np.float32)
    return pa.table(
        {
            "id": np.arange(num_rows, dtype=np.int64),
            "image": pa.FixedShapeTensorArray.from_numpy_ndarray(images),
            "label": (np.arange(num_rows) % 10).astype(np.int64),
        }
    )


@pytest.fixture
def digits_db(tmp_path):
    """``digits_db(num_rows=200, name="digits", **columns) -> (uri, name)``: a tiny demo-shaped
    table on disk; keyword arguments add columns (name=values)."""
    import lancedb

    def make(num_rows: int = 200, name: str = "digits", **columns) -> tuple[str, str]:
        uri = str(tmp_path / "digits_db")
        table = digits_like_table(num_rows)
        for column, values in columns.items():
            table = table.append_column(column, pa.array(values))
        lancedb.connect(uri).create_table(name, table)
        return uri, name

    return make


@pytest.fixture
def run_cli(tmp_path):
    """``run_cli(args, timeout=...) -> CompletedProcess``: ``python <args>`` in ``tmp_path``, output captured.

    A real process, as users run it: entry points that re-launch themselves (DDP) need one.
    """
    import os
    import subprocess
    import sys

    def run(args: list[str], *, timeout: float = 240, cwd=None) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}
        return subprocess.run(
            [sys.executable, *args],
            cwd=cwd or tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture(autouse=True)
def _no_global_seed(monkeypatch):
    """A datamodule with ``seed=None`` follows ``seed_everything`` (``PL_GLOBAL_SEED``): a test that
    ran it in this process (``train(cfg)``) must not change the data order of the tests after it."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
