"""The data position's rules (lance_lightning/state.py), without a Trainer."""

from __future__ import annotations

import pytest

from lance_lightning.state import DataState, TrainPosition


def test_a_new_epoch_starts_from_its_first_row():
    position = TrainPosition()
    position.start_row = 40
    assert position.enter_epoch(1) is True
    assert (position.epoch, position.start_row) == (1, 0)
    assert position.enter_epoch(1) is False  # the same epoch again: nothing moves


def test_after_a_resume_lightning_closing_the_finished_epoch_does_not_move_the_position():
    position = TrainPosition()
    position.resume(3, 0, order_world_size=None, order_batch_size=None)
    assert position.enter_epoch(2) is False  # Lightning closes epoch 2 (no batch) first
    assert (position.epoch, position.start_row) == (3, 0)
    assert position.enter_epoch(3) is False  # ... then enters the resumed epoch
    assert position.enter_epoch(2) is True  # a later, lower epoch (a second fit) is a new epoch
    assert (position.epoch, position.start_row) == (2, 0)


def test_lightnings_current_epoch_wins_over_the_set_epoch_argument():
    label = {"epoch": 1}
    position = TrainPosition(epoch_label=lambda: label["epoch"])
    position.resume(1, 640, order_world_size=2, order_batch_size=64)
    assert position.enter_epoch(2) is False  # after a max_steps stop Lightning passes 2 for epoch 1
    assert (position.epoch, position.start_row, position.order_world_size) == (1, 640, 2)
    label["epoch"] = 2
    assert position.enter_epoch(3) is True
    assert (position.epoch, position.start_row, position.order_world_size) == (2, 0, None)


def test_state_round_trips_and_reads_format_1():
    state = DataState(
        identity={"table": "t", "splits": None, "filter": None, "seed": 1},
        table_version=3,
        table_version_time="2026-01-01T00:00:00",
        world_size=2,
        train={
            "epoch": 1,
            "start_row": 64,
            "split_rows": 100,
            "order_world_size": 2,
            "order_batch_size": 8,
            "batch_size": 8,
            "batches_done": 4,
        },
    )
    assert DataState.from_dict(state.to_dict()) == state
    old = {
        "format": 1,
        "table": "t",
        "splits": None,
        "filter": None,
        "seed": 1,
        "table_version": 3,
        "world_size": 2,
        "epoch": 1,
        "train_batches_done": 7,
        "train_rows_consumed": 100,
        "train_split_rows": 100,
        "train_order_world_size": 2,
        "train_order_batch_size": 8,
    }
    read = DataState.from_dict(old)
    assert (read.train["epoch"], read.train["start_row"], read.train["batches_done"]) == (2, 0, 0)
    assert read.table_version_time is None and read.identity["seed"] == 1
    with pytest.raises(ValueError, match="format 7"):
        DataState.from_dict({"format": 7})
