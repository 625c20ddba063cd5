"""read_ahead: the stage fill's reader thread must hand over every item in order, raise the
reader's error where it happened, and stop when the writer stops early."""

from __future__ import annotations

import threading
import time

import pytest

from lance_lightning.readahead import read_ahead


def test_every_item_in_order():
    assert list(read_ahead(iter(range(1000)), depth=3)) == list(range(1000))
    assert list(read_ahead([], depth=1)) == []


def test_the_readers_error_is_raised_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise LookupError("row 3 is gone")

    got = []
    with pytest.raises(LookupError, match="row 3 is gone"):
        for item in read_ahead(items()):
            got.append(item)
    assert got == [1, 2]


def test_closing_early_stops_the_thread_and_reads_no_further_than_depth():
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    before = threading.active_count()
    gen = read_ahead(items(), depth=2)
    assert next(gen) == 0
    time.sleep(0.2)  # let the thread fill the queue
    gen.close()
    assert threading.active_count() == before
    assert len(produced) <= 1 + 2 + 1  # the one handed over, the queue, the one waiting to go in


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        list(read_ahead([1], depth=0))
