"""Exact resume from every checkpoint a run writes, over Lightning's loop features (issue 18).

Each cell runs an uninterrupted reference in its own process, writes a checkpoint after every
batch, at every epoch end and after every validation, and resumes from them in another process
(one after the other, each by a fresh Trainer; see ``tests/resume_harness.py``). CI runs a few
representative cells on a sample of their checkpoints, and counts a refusal as a failure;
``LL_RESUME_MATRIX=full`` runs every cell on every checkpoint (by hand: ~1 h on 2 cores).
"""

from __future__ import annotations

import os

import pytest

from tests.resume_harness import check_cell

BLOCK = {"shuffle": "block", "block_size": 16, "window_blocks": 3}
CELLS = {
    "uniform-w0": {"data": {"num_workers": 0}},
    "uniform-w2": {"data": {"num_workers": 2}},
    "block-w0": {"data": {"num_workers": 0, **BLOCK}},
    "block-w2": {"data": {"num_workers": 2, **BLOCK}},
    "max_steps-w0": {"data": {"num_workers": 0}, "trainer": {"max_steps": 40}, "stop": {"max_steps": 25}},
    "max_steps-w2": {"data": {"num_workers": 2}, "trainer": {"max_steps": 40}, "stop": {"max_steps": 25}},
    "max_steps-block-w2": {
        "data": {"num_workers": 2, **BLOCK},
        "trainer": {"max_steps": 40},
        "stop": {"max_steps": 25},
    },
    "limit_train_batches-w0": {"data": {"num_workers": 0}, "trainer": {"limit_train_batches": 0.5}},
    "limit_train_batches-w2": {"data": {"num_workers": 2}, "trainer": {"limit_train_batches": 0.5}},
    "accumulate-w0": {"data": {"num_workers": 0}, "trainer": {"accumulate_grad_batches": 3}},
    "accumulate-block-w2": {"data": {"num_workers": 2, **BLOCK}, "trainer": {"accumulate_grad_batches": 3}},
    "val_check_interval-w0": {"data": {"num_workers": 0}, "trainer": {"val_check_interval": 0.5}},
    "val_check_interval-w2": {"data": {"num_workers": 2}, "trainer": {"val_check_interval": 0.5}},
    "batch_size_16_to_24": {"data": {"num_workers": 0}, "resume_data": {"batch_size": 24}},
    "batch_size_16_to_10-w2": {"data": {"num_workers": 2}, "resume_data": {"batch_size": 10}},
    "workers_0_to_2": {"data": {"num_workers": 0}, "resume_data": {"num_workers": 2}},
    "workers_2_to_0-block": {"data": {"num_workers": 2, **BLOCK}, "resume_data": {"num_workers": 0}},
}
# CI: cell -> checkpoints resumed (the last batch of an epoch, the epoch end, after validation, in
# that order); uniform-w2 and block at epoch ends run in-process in test_resume.py
CI_CELLS = {"max_steps-w2": 2, "limit_train_batches-w2": 2, "batch_size_16_to_10-w2": 3}
FULL = os.environ.get("LL_RESUME_MATRIX") == "full"
DEFAULT_CELL = "batch_size_16_to_10-w2"  # the README's test command; the other cells run with -m long


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[] if n == DEFAULT_CELL else [pytest.mark.long]) for n in (CELLS if FULL else CI_CELLS)],
)
def test_every_checkpoint_resumes_exactly(name, tmp_path):
    results = check_cell(CELLS[name], tmp_path, limit=None if FULL else CI_CELLS[name], parallel=2 if FULL else 1)
    # exact resume from any checkpoint Lightning writes: a refusal is as wrong as a difference
    wrong = {ckpt: verdict for ckpt, verdict in results.items() if not verdict.startswith(("exact", "rows exact"))}
    assert results and not wrong, wrong
