"""The data position's rules (lance_lightning/state.py), without a Trainer."""

from __future__ import annotations

import pytest

from lance_lightning.state import DataState, ResumeRefusedError, TrainPosition, refuse_changed_settings


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
        identity={"table": "t", "splits": None, "filter": None, "seed": 1, "version": 3},
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
    assert read.identity["version"] == 3  # not in the identity then: the version it read
    with pytest.raises(ValueError, match="format 7"):
        DataState.from_dict({"format": 7})


def mid_epoch(identity: dict, start_row: int = 64) -> DataState:
    train = {"epoch": 2, "start_row": start_row, "split_rows": 100, "order_world_size": 1, "order_batch_size": 8}
    return DataState(identity=identity, table_version=3, table_version_time=None, world_size=1, train=train)


def test_a_changed_refused_setting_names_itself_both_values_and_the_ways_out():
    then = {"table": "t", "seed": 1, "shuffle": "uniform", "block_size": None, "version": 3}
    refuse_changed_settings(mid_epoch(then), dict(then))  # nothing changed
    now = {**then, "shuffle": "block", "block_size": 512}
    with pytest.raises(ResumeRefusedError) as err:
        refuse_changed_settings(mid_epoch(then), now)
    message = str(err.value)
    assert "shuffle: the checkpoint's 'uniform', now 'block' (the epoch's order)" in message
    assert "block_size: unused by the checkpoint's run, now 512 (the block shuffle's blocks" in message
    assert "epoch 2 after 64 of its 100 train rows" in message and "twice and others never" in message
    assert "Resume with the checkpoint's value(s) (shuffle='uniform')" in message
    assert "resume='fresh' (with version=3 to keep reading the checkpoint's table version)" in message
    with pytest.raises(ResumeRefusedError, match=r"at the start of epoch 2: the run would go on with other splits"):
        refuse_changed_settings(mid_epoch(then, start_row=0), {**then, "seed": 2})


def test_a_version_left_to_the_checkpoint_is_no_change_and_another_one_is_refused():
    then = {"table": "t", "version": 3}
    refuse_changed_settings(mid_epoch(then), {"table": "t", "version": 5}, follows=frozenset({"version"}))
    with pytest.raises(ResumeRefusedError, match=r"version: the checkpoint's 3, now 5 .*\(version=3 or None\)"):
        refuse_changed_settings(mid_epoch(then), {"table": "t", "version": 5})


def test_settings_an_older_checkpoint_does_not_record_are_named_not_compared():
    with pytest.warns(UserWarning, match=r"does not record shuffle \(written by an older lance-lightning\)"):
        refuse_changed_settings(mid_epoch({"table": "t"}), {"table": "t", "shuffle": "block"})
