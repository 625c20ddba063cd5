"""The slot bookkeeping of lance_lightning/slots.py, in one process: slots are handed out once
until freed, and a slot's columns never overlap or run past its end."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from lance_lightning.slots import ALIGN, InSlot, SlotBatch, SlotWriter, WorkerSlots, gather_into_slot, gather_lent


def test_a_slot_is_handed_out_once_until_it_is_freed():
    ring = WorkerSlots(1, slots=3, slot_bytes=64).ring(0)
    taken = [ring.acquire() for _ in range(3)]
    assert sorted(taken) == [0, 1, 2]
    assert ring.acquire() is None  # every slot busy: the worker falls back to fresh memory
    ring.release(1, worker=0)
    assert ring.acquire() == 1
    assert ring.acquire() is None


@pytest.mark.parametrize("shapes", [[(10, 3)], [(1,), (7, 5), (3,)], [(100, 4)], [(0, 4), (2, 2)]])
def test_columns_of_a_slot_are_aligned_apart_and_within_it(shapes):
    slot_bytes = 1024
    ring = WorkerSlots(1, slots=2, slot_bytes=slot_bytes).ring(0)
    writer = SlotWriter(ring, 1)
    spans = []
    for shape in shapes:
        array = writer.allocate(np.dtype(np.float32), shape)
        need = int(np.prod(shape)) * 4
        place = writer.place_of(array)
        if array is None:  # no room left: the column goes to a new tensor
            assert spans and spans[-1][1] + need > slot_bytes or need > slot_bytes
            continue
        assert array.shape == tuple(shape) and place.offset % ALIGN == 0
        assert place.offset + need <= slot_bytes
        spans.append((place.offset, place.offset + need))
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


def test_a_batch_is_freed_where_it_is_received_not_where_it_is_made():
    slots = WorkerSlots(1, slots=1, slot_bytes=64)
    ring = slots.ring(0)
    slot = ring.acquire()
    ring.array(slot, InSlot(0, "<i8", (4,)))[:] = [1, 2, 3, 4]
    made = SlotBatch(slots.token, 0, slot, {"id": InSlot(0, "<i8", (4,))}, None)
    received = pickle.loads(pickle.dumps(made))
    del made  # the worker's object: dropping it frees nothing
    assert ring.acquire() is None
    assert received.take()["id"].tolist() == [1, 2, 3, 4]
    assert ring.acquire() == slot  # taken: free again
    ring.release(slot, worker=0)
    dropped = pickle.loads(pickle.dumps(SlotBatch(slots.token, 0, ring.acquire(), {}, None)))
    del dropped  # received and never taken: freed
    assert ring.acquire() == slot


@pytest.mark.parametrize("workers", [1, 2, 8])
@pytest.mark.parametrize("slot_bytes", [1, 8 << 20, 300 << 20, 2 << 30])
@pytest.mark.parametrize("prefetch", [1, 2, 4])
def test_slots_stay_within_their_budget(workers, slot_bytes, prefetch):
    from lance_lightning.slots import SPARE_SLOTS, slot_count

    budget = 1 << 30
    count = slot_count(workers, prefetch, slot_bytes, budget=budget)
    assert 0 <= count <= prefetch + SPARE_SLOTS
    assert workers * count * slot_bytes <= budget
    if workers * (prefetch + SPARE_SLOTS) * slot_bytes <= budget:
        assert count == prefetch + SPARE_SLOTS  # room for all: the full count
    elif workers * slot_bytes <= budget:
        assert count >= 1  # as many as fit


def _drop(batch) -> None:
    batch.__del__()  # in a forked child: what collecting its copy of a received batch runs


def test_a_process_forked_after_a_batch_arrived_never_frees_its_slot():
    """Only the process that received a batch frees its slot: a child forked later (a val worker,
    a forked rank) that drops its copy must not hand the slot back while the parent holds the batch."""
    import multiprocessing

    slots = WorkerSlots(1, slots=1, slot_bytes=64)
    ring = slots.ring(0)
    slot = ring.acquire()
    received = pickle.loads(pickle.dumps(SlotBatch(slots.token, 0, slot, {"id": InSlot(0, "<i8", (2,))}, None)))
    child = multiprocessing.get_context("fork").Process(target=_drop, args=(received,))
    child.start()
    child.join()
    assert child.exitcode == 0
    assert ring.acquire() is None  # still the parent's
    received.take()
    assert ring.acquire() == slot


def _imports(path) -> set[str]:
    """The ``lance_lightning`` modules that module file ``path`` (top level of the package) imports,
    at any depth (function-level imports included)."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lance_lightning."):
            found.add(node.module.split(".")[1])
    return found


def test_the_reading_layers_only_look_down():
    """No module of the package imports one that imports it (the slots once took ``split_group``
    from the dataset that imports them), and the order layer takes its ``BatchGroup`` from the
    value types below it, not from the readers (``dataset``)."""
    from pathlib import Path

    import lance_lightning

    root = Path(lance_lightning.__file__).parent
    graph = {f.stem: _imports(f) for f in root.glob("*.py") if f.stem != "__init__"}
    circles = sorted((a, b) for a, deps in graph.items() for b in deps if a < b and a in graph.get(b, ()))
    assert circles == []
    assert "dataset" not in graph["sampler"] and "dataset" not in graph["slots"]


@pytest.mark.parametrize("into", [gather_into_slot, gather_lent])
def test_a_gather_that_fails_gives_its_slot_back(into):
    """A failing read (a damaged stage, a bad row) raises as itself and leaves no slot busy: the
    worker's next batches still find every slot."""
    slots = WorkerSlots(1, slots=1, slot_bytes=256)

    def failing(allocate):
        allocate(np.dtype(np.int64), (4,))[:] = 7
        raise OSError("the stage file was truncated")

    with pytest.raises(OSError, match="truncated"):
        into(slots, 0, failing, None)
    assert slots.ring(0).acquire() == 0
