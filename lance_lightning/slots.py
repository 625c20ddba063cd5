"""Batch slots: reused shared memory for the batches a DataLoader worker hands to the training process.

Why: a worker's batch reaches the training process without a copy only from shared memory, and
torch gives every batch fresh shared memory. Writing a gather into fresh pages costs the kernel a
zeroed page each 4 KiB: on the 2-core VM these figures come from, 0.7-0.9 us a row of 512 B
against 0.23 us into pages written before, so 2 workers gathering from a stage read slower than the
training process alone (1.09M against 2.32M rows/s at 10M rows).

Here the training process maps one shared block per worker before the workers fork, cut into a
few slots. A worker gathers a batch's fixed-width columns into a free slot and sends a
:class:`SlotBatch` (where the columns lie; the other columns as usual); the training process
copies them out (into pinned memory when the loader pins: the copy pinning makes anyway) and frees
the slot. A slot is written only while free and freed only after its batch was copied out, or
dropped unread; each slot's flag is read and set under the worker's lock, whose atomic operations
also order the copy before the worker's next write into that slot on any CPU. A worker that finds
no free slot (the training process holds batches longer than the prefetch depth) gathers into
fresh shared memory as before: slower, never wrong.

With a user transform the gather does not go into a slot (a transform could return a view of
its input, which the worker would later overwrite); its *output* does (:func:`lend_into_slot`): the
worker copies the output's tensors into a slot of a block it made at its first batch (slots sized
from that batch, sent to the training process with it), and the training process gets views of
the slot (:class:`LentBatch`), freed once every tensor of the batch is gone. Handing
a decoded image batch over in fresh shared memory cost a worker ~37 us of CPU an image, into a slot ~6.

A batch with neighbours (:mod:`.neighbors`, ``k + 1`` times a plain batch's rows) goes both ways at
once (:func:`gather_lent`): the worker gathers it (a group of batches) straight into a slot, and the
training process gets views of the slot, as for a transform's output: no copy on either side.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import multiprocessing
import os
import shutil
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data._utils.pin_memory import pin_memory

from .batches import split_group
from .convert import numpy_dtype_to_torch

ALIGN = 64
"""Bytes each column's region in a slot is aligned to (a cache line)."""
BUDGET_BYTES = 1 << 30
"""The most shared memory one loader's slots take (all its workers): beyond it a worker has fewer
slots, or none (it then hands every batch over in fresh shared memory, as without slots)."""
SPARE_SLOTS = 2
"""Batch slots a worker has beyond the loader's prefetch depth (what the training process may
still hold while it copies out or steps)."""
LOCK_TIMEOUT_S = 10.0
"""How long the training process waits for a worker's slot lock before it names the worker dead."""
RELEASE_ON_DROP_TIMEOUT_S = 0.5
HEADROOM = 1.25
"""A transform's slot holds its first batch's bytes times this: later batches may be larger (a
padded token batch, a shorter last batch is smaller); one over its slot goes the fresh way, whole."""
SLOT_ROUND = 64 << 10
"""A transform's slot size is rounded up to a multiple of this."""
"""How long freeing the slot of a batch dropped unread waits for the lock (then the slot stays busy)."""

_SETS: weakref.WeakValueDictionary[int, WorkerSlots] = weakref.WeakValueDictionary()
"""The slot sets of this process by token: a :class:`SlotBatch` from a worker finds its block here."""
_TOKENS = itertools.count(1)


@dataclass(frozen=True)
class InSlot:
    """Where one column of a batch lies in its slot."""

    offset: int
    dtype: str
    shape: tuple[int, ...]


class SlotRing:
    """One worker's slots: ``count`` regions of ``slot_bytes`` in one shared block, and their flags."""

    def __init__(self, count: int, slot_bytes: int, lock: Any, *, block_bytes: int | None = None) -> None:
        self.count, self.slot_bytes = count, slot_bytes
        self.block_bytes = block_bytes if block_bytes is not None else count * slot_bytes
        # torch's shared memory: inherited by a forked worker, passed (as a file descriptor) to a
        # spawned or forkserver one with the dataset. Made directly as shared storage, so that no page
        # is copied in (share_memory_() would copy a private tensor in); torch reserves its pages
        # (fallocate) as it makes it, so it is made only at the size that is used.
        # With ``slot_bytes`` 0 (a transform's output: its size is known only once a batch is made)
        # there is no block yet: the worker makes it at its first batch (:meth:`size_for`), at most
        # ``block_bytes``, and sends it to the training process with that batch (:meth:`adopt`).
        self._block = _shared_bytes(self.block_bytes) if slot_bytes else None
        self._unsent = False
        self._flags = _shared_bytes(count)  # zero-filled, as new shared memory is
        self.lock = lock
        self._next = 0
        self._views()

    def _views(self) -> None:
        self.block = self._block.numpy() if self._block is not None else None
        self.busy = self._flags.numpy()

    def adopt(self, block: torch.Tensor) -> None:
        """In the training process: the block a worker made for its slots (sent with its first batch)."""
        self._block = block
        self._views()

    def unsent_block(self) -> torch.Tensor | None:
        """In a worker: the block it made, the first time it is asked (to go with that batch); then None."""
        if not self._unsent:
            return None
        self._unsent = False
        return self._block

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("block", "busy")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._views()

    def acquire(self) -> int | None:
        """A free slot, now marked busy (in a worker); None when every slot is busy."""
        if not self.lock.acquire(timeout=LOCK_TIMEOUT_S):
            return None
        try:
            for k in range(self.count):
                slot = (self._next + k) % self.count
                if not self.busy[slot]:
                    self.busy[slot] = 1
                    self._next = slot + 1
                    return slot
            return None
        finally:
            self.lock.release()

    def release(self, slot: int, worker: int, *, timeout: float = LOCK_TIMEOUT_S) -> None:
        """Mark ``slot`` free again (in the training process, once its batch was copied out)."""
        if not self.lock.acquire(timeout=timeout):
            raise RuntimeError(
                f"DataLoader worker {worker} held its batch-slot lock for {timeout:g} s: it was killed or "
                "hangs. Resume from the last checkpoint to continue exactly."
            )
        try:
            self.busy[slot] = 0
        finally:
            self.lock.release()

    def size_for(self, nbytes: int) -> bool:
        """In a worker whose ring was made without a slot size: cut the block into slots of
        ``nbytes`` and :data:`HEADROOM` more (the first batch's bytes), as many as it holds up to
        ``count``. False when not one fits (every batch then goes the fresh way)."""
        if not self.slot_bytes:
            slot_bytes = -(-int(nbytes * HEADROOM + ALIGN) // SLOT_ROUND) * SLOT_ROUND
            self.count = min(self.count, self.block_bytes // slot_bytes)
            self.slot_bytes = slot_bytes if self.count else -1
            if self.count:
                self.block_bytes = self.count * slot_bytes
                self._block, self._unsent = _shared_bytes(self.block_bytes), True
                self._views()
        return self.slot_bytes > 0

    def array(self, slot: int, place: InSlot, slot_bytes: int | None = None) -> np.ndarray:
        """The region ``place`` of ``slot`` as an array (a view of the shared block); ``slot_bytes``:
        the worker's, for a ring it sized itself (:meth:`size_for`)."""
        dtype = np.dtype(place.dtype)
        start = slot * (slot_bytes or self.slot_bytes) + place.offset
        nbytes = math.prod(place.shape) * dtype.itemsize
        return self.block[start : start + nbytes].view(dtype).reshape(place.shape)


def _shared_bytes(nbytes: int) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes))


class WorkerSlots:
    """The slot rings of one DataLoader iterator's workers (made by the training process before they fork)."""

    def __init__(
        self, workers: int, *, slots: int, slot_bytes: int, context: Any = None, block_bytes: int | None = None
    ) -> None:
        context = context or multiprocessing.get_context()
        self.rings = [SlotRing(slots, slot_bytes, context.Lock(), block_bytes=block_bytes) for _ in range(workers)]
        self.token = next(_TOKENS)
        self.returned: collections.deque[tuple[int, int]] = collections.deque()
        """``(worker, slot)`` of lent batches (:class:`LentBatch`) whose tensors are all gone: freed
        at the next batch taken (:meth:`free_returned`), not from the finaliser that notes them."""
        _SETS[self.token] = self

    def __getstate__(self) -> dict[str, Any]:
        return {"rings": self.rings, "token": self.token}  # pickled only to start a worker

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.returned = collections.deque()

    def free_returned(self) -> None:
        """Free the slots of lent batches no longer referenced (in the training process)."""
        while True:
            try:
                worker, slot = self.returned.popleft()
            except IndexError:
                return
            self.rings[worker].release(slot, worker)

    def ring(self, worker: int) -> SlotRing | None:
        return self.rings[worker] if 0 <= worker < len(self.rings) else None


def output_slots(workers: int, prefetch: int, *, context: Any = None) -> WorkerSlots | None:
    """Slots for the output of a transform (:func:`lend_into_slot`): the prefetch depth and
    :data:`SPARE_SLOTS` more a worker, each sized by the worker from its first batch's bytes, in a
    block the worker makes then (at most an equal share of :func:`slot_budget`). None when that is
    nothing."""
    count = max(0, prefetch + SPARE_SLOTS)
    block = slot_budget() // max(1, workers)
    if not count or block < SLOT_ROUND:
        return None
    return WorkerSlots(workers, slots=count, slot_bytes=0, context=context, block_bytes=block)


def slot_budget(shm: str = "/dev/shm") -> int:
    """Bytes one loader's slots may take: :data:`BUDGET_BYTES`, or a quarter of the free space of
    ``shm`` where that is less (a container's /dev/shm is often 64 MB; torch's shared memory lives
    there, the workers' other hand-overs too)."""
    try:
        return min(BUDGET_BYTES, shutil.disk_usage(shm).free // 4)
    except OSError:
        return BUDGET_BYTES


def slot_count(workers: int, prefetch: int, slot_bytes: int, *, budget: int = BUDGET_BYTES) -> int:
    """Slots a worker gets: its prefetch depth and :data:`SPARE_SLOTS` more, fewer where
    ``workers`` times that many would take more than ``budget`` bytes (0: not even one each)."""
    return max(0, min(prefetch + SPARE_SLOTS, budget // max(1, workers * slot_bytes)))


def worker_slots(
    workers: int, prefetch: int, *, rows: int, row_bytes: int, columns: int, context: Any = None
) -> WorkerSlots | None:
    """Slots for ``workers`` workers that hand over up to ``rows`` rows of ``row_bytes`` bytes in
    ``columns`` columns at a time (each slot a multiple of :data:`ALIGN`); None where that is
    nothing or not one slot each fits the budget."""
    if not rows or not row_bytes:
        return None
    slot_bytes = -(-(rows * row_bytes + ALIGN * columns) // ALIGN) * ALIGN
    count = slot_count(workers, prefetch, slot_bytes, budget=slot_budget())
    return WorkerSlots(workers, slots=count, slot_bytes=slot_bytes, context=context) if count else None


class SlotWriter:
    """Hands out the regions of one slot, column by column, as the worker gathers into them."""

    def __init__(self, ring: SlotRing, slot: int) -> None:
        self.ring, self.slot = ring, slot
        self.used = 0
        self.placed: dict[int, InSlot] = {}

    def allocate(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray | None:
        """An array of ``shape`` in the slot, or None when the slot has no room left for it."""
        nbytes = math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize
        offset = -(-self.used // ALIGN) * ALIGN
        if offset + nbytes > self.ring.slot_bytes:
            return None
        place = InSlot(offset, np.dtype(dtype).str, tuple(int(n) for n in shape))
        array = self.ring.array(self.slot, place)
        self.used = offset + nbytes
        self.placed[id(array)] = place
        return array

    def place_of(self, value: Any) -> InSlot | None:
        return self.placed.get(id(value)) if isinstance(value, np.ndarray) else None

    @contextlib.contextmanager
    def released_on_error(self, worker: int) -> Iterator[None]:
        """The slot goes back to worker ``worker``'s ring if the gather into it fails."""
        try:
            yield
        except BaseException:
            self.ring.release(self.slot, worker)
            raise


class SlotBatch:
    """A worker's batch (or group of batches) whose fixed-width columns lie in a slot.

    The training process turns it into the batch with :meth:`take` (or :meth:`pin_memory`), which
    copies the columns out and frees the slot; one dropped untaken frees its slot too.
    """

    def __init__(self, token: int, worker: int, slot: int, columns: dict[str, Any], sizes: list[int] | None) -> None:
        self.token, self.worker, self.slot = token, worker, slot
        self.columns = columns  # name -> InSlot, or the value itself (a column that is not in the slot)
        self.sizes = sizes  # a group's batch sizes; None for one batch
        self._slots: WorkerSlots | None = None  # set where it is received: only that process frees the slot
        self._receiver: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "worker": self.worker,
            "slot": self.slot,
            "columns": self.columns,
            "sizes": self.sizes,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._slots = _SETS.get(self.token)
        self._receiver = os.getpid()  # a process forked later that drops its copy must not free the slot

    def take(self, *, pin: bool = False) -> Any:
        """The batch (a dict of tensors; a ``BatchGroup`` of them for a group), the slot freed."""
        slots, self._slots = self._slots, None
        if slots is not None and self._receiver != os.getpid():
            raise RuntimeError(
                f"a batch from DataLoader worker {self.worker} was received by process {self._receiver} and can "
                f"only be read there, not in process {os.getpid()}"
            )
        if slots is None:
            raise RuntimeError(
                f"a batch from DataLoader worker {self.worker} refers to batch slots this process no longer "
                "has (its DataLoader iterator was shut down): it cannot be read"
            )
        ring = slots.rings[self.worker]
        out: dict[str, Any] = {}
        try:
            for name, value in self.columns.items():
                if isinstance(value, InSlot):
                    source = ring.array(self.slot, value)
                    tensor = torch.empty(value.shape, dtype=numpy_dtype_to_torch(source.dtype), pin_memory=pin)
                    np.copyto(tensor.numpy(), source)  # one memcpy on this thread: no torch intra-op threads
                    out[name] = tensor
                else:
                    out[name] = pin_memory(value) if pin else value  # nested values (structs) too
        finally:
            ring.release(self.slot, self.worker)
        if self.sizes is None:
            return out
        return split_group(out, self.sizes, _as_is)

    def pin_memory(self, device: Any = None) -> Any:
        """What torch's pin-memory thread calls: the batch copied straight into pinned memory."""
        return self.take(pin=True)

    def __del__(self) -> None:
        slots, self._slots = getattr(self, "_slots", None), None
        if slots is not None and getattr(self, "_receiver", None) == os.getpid():
            # received and never taken (a loop that stopped early): free its slot; a worker that died
            # holding its lock only loses the slot (not worth waiting for at teardown)
            with contextlib.suppress(Exception):
                slots.rings[self.worker].release(self.slot, self.worker, timeout=RELEASE_ON_DROP_TIMEOUT_S)


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


def taken(items: Any) -> Any:
    """``items`` with every :class:`SlotBatch` turned into its batch (pinned ones already are)."""
    for item in items:
        yield item.take() if isinstance(item, SlotBatch) else item


def gather_into_slot(
    slots: WorkerSlots,
    worker: int,
    gather: Callable[[Callable[[np.dtype, tuple[int, ...]], np.ndarray | None]], dict[str, Any]],
    sizes: list[int] | None,
) -> SlotBatch | None:
    """In worker ``worker``: ``gather(allocate)`` with its fixed-width columns in a free slot
    (``allocate(dtype, shape)`` gives an array there, or None when it does not fit), as a
    :class:`SlotBatch`; None when every slot is busy (gather the batch as usual then)."""
    writer = _free_slot_writer(slots, worker)
    if writer is None:
        return None
    with writer.released_on_error(worker):
        columns = gather(writer.allocate)
        placed = {name: writer.place_of(value) or value for name, value in columns.items()}
    return SlotBatch(slots.token, worker, writer.slot, placed, sizes)


def _free_slot_writer(slots: WorkerSlots, worker: int) -> SlotWriter | None:
    """A writer into a free slot of worker ``worker``'s ring; None when it has none (or no ring)."""
    ring = slots.ring(worker)
    slot = ring.acquire() if ring is not None else None
    return None if slot is None else SlotWriter(ring, slot)


# -- a transform's output, lent from a slot -----------------------------------------------------------


@dataclass(frozen=True)
class LentTensor:
    """Where one tensor of a transform's output lies in its slot (contiguous, ``dtype`` a torch dtype)."""

    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def _lendable(value: Any) -> bool:
    return (
        type(value) is torch.Tensor
        and value.device.type == "cpu"
        and value.layout == torch.strided
        and not value.requires_grad
        and not value.is_quantized
    )


def _placed(value: Any, place: Callable[[torch.Tensor], LentTensor | None]) -> Any:
    """``value`` (dicts, lists and tuples of tensors and other values) with each lendable tensor
    replaced by what ``place`` makes of it (None: left as it is)."""
    if _lendable(value):
        return place(value) or value
    if type(value) is dict:
        return {k: _placed(v, place) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_placed(v, place) for v in value)
    return value


def _tensors(value: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    _placed(value, lambda t: out.append(t))  # type: ignore[func-returns-value]
    return out


def lend_into_slot(slots: WorkerSlots, worker: int, value: Any) -> LentBatch | None:
    """In worker ``worker``: a transform's output with its tensors copied into a free slot, as a
    :class:`LentBatch`; None (hand ``value`` over as usual, in fresh shared memory) when it holds
    no tensor, its tensors do not fit a slot (never truncated), or every slot is busy.

    Why: handing a tensor over copies it into fresh shared memory, a zeroed page each 4 KiB (50k
    128x128 images: 31 ms a batch of 256 against 3.6 ms into pages written before, on 2 busy cores)."""
    ring = slots.ring(worker)
    tensors = _tensors(value)
    if ring is None or not tensors:
        return None
    need = sum(-(-t.numel() * t.element_size() // ALIGN) * ALIGN for t in tensors)
    if not ring.size_for(need) or need > ring.slot_bytes:
        return None
    slot = ring.acquire()
    if slot is None:
        return None
    used = 0
    base = slot * ring.slot_bytes

    def place(tensor: torch.Tensor) -> LentTensor:
        nonlocal used
        nbytes = tensor.numel() * tensor.element_size()
        region = torch.from_numpy(ring.block[base + used : base + used + nbytes])
        if nbytes:
            region.copy_(_bytes_of(tensor))
        lent = LentTensor(used, tensor.dtype, tuple(tensor.shape))
        used += -(-nbytes // ALIGN) * ALIGN
        return lent

    try:
        placed = _placed(value, place)
    except BaseException:
        ring.release(slot, worker)
        raise
    return LentBatch(slots.token, worker, slot, ring.slot_bytes, placed, block=ring.unsent_block())


def gather_lent(
    slots: WorkerSlots,
    worker: int,
    gather: Callable[[Callable[[np.dtype, tuple[int, ...]], np.ndarray | None]], dict[str, Any]],
    sizes: list[int] | None = None,
) -> LentBatch | None:
    """In worker ``worker``: ``gather(allocate)`` with its fixed-width arrays placed in a free slot
    (``allocate`` as for :func:`gather_into_slot`; nested dicts too), handed over as a
    :class:`LentBatch`: the training process gets views of the slot. One gather, no copy on either
    side (:func:`gather_into_slot` copies out in the training process; :func:`lend_into_slot`
    copies in, in the worker). ``sizes``: a group's batch sizes (the training process cuts the
    rows into those batches, views too); None for one batch. None when every slot is busy (gather
    the batch as usual then).

    Why: a batch with ``k`` neighbours a row holds ``k + 1`` times a plain batch's rows; copying
    them once more, on either side, halved the rows/s (issue 32)."""
    writer = _free_slot_writer(slots, worker)
    if writer is None:
        return None
    with writer.released_on_error(worker):
        value = _lent_in_place(writer, gather(writer.allocate))
    ring = writer.ring
    return LentBatch(slots.token, worker, writer.slot, ring.slot_bytes, value, block=ring.unsent_block(), sizes=sizes)


def _lent_in_place(writer: SlotWriter, value: Any) -> Any:
    """``value`` with each array the writer placed as its :class:`LentTensor` (nested dicts too)."""
    if type(value) is dict:
        return {name: _lent_in_place(writer, child) for name, child in value.items()}
    place = writer.place_of(value)
    if place is None:
        return value
    return LentTensor(place.offset, numpy_dtype_to_torch(np.dtype(place.dtype)), place.shape)


class _Return:
    """Notes a lent batch's slot as free to reuse once no tensor of the batch is referenced (each
    tensor's array holds this object); the slot is freed at the next batch taken."""

    def __init__(self, slots: WorkerSlots, worker: int, slot: int) -> None:
        self.slots, self.worker, self.slot = slots, worker, slot

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the deque may be gone already
            self.slots.returned.append((self.worker, self.slot))  # a deque's append is atomic: any thread


class _Held(np.ndarray):
    """A view of a slot that keeps the slot's :class:`_Return` alive (``torch.from_numpy`` keeps it)."""

    _return: _Return | None = None


class LentBatch(SlotBatch):
    """A transform's output whose tensors lie in a slot (:func:`lend_into_slot`), or a batch (a
    group of batches) gathered straight into one (:func:`gather_lent`).

    :meth:`take` hands the tensors out as views of the slot, without a copy; the slot is reused only
    once every one of them is gone (however long the loop keeps them: a kept batch only means a
    worker hands later batches over in fresh memory). Pinned, the tensors are copied into pinned
    memory and the slot freed at once.
    """

    def __init__(
        self,
        token: int,
        worker: int,
        slot: int,
        slot_bytes: int,
        value: Any,
        *,
        block: torch.Tensor | None = None,
        sizes: list[int] | None = None,
    ) -> None:
        super().__init__(token, worker, slot, {}, sizes)
        self.slot_bytes, self.value = slot_bytes, value
        self.block = block  # the worker's slot block, with its first batch only (torch passes its descriptor)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "slot_bytes": self.slot_bytes, "value": self.value, "block": self.block}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if self.block is not None and self._slots is not None:
            # a worker's batches are unpickled in the order it sent them: this one comes before any
            # other batch in the block
            self._slots.rings[self.worker].adopt(self.block)
        self.block = None

    def take(self, *, pin: bool = False) -> Any:
        slots, self._slots = self._slots, None
        if slots is None or self._receiver != os.getpid():
            self._slots = slots
            return super().take(pin=pin)  # raises, saying why
        slots.free_returned()
        ring = slots.rings[self.worker]
        if pin:
            try:
                out = _placed_back(
                    self.value,
                    lambda lent: _pinned(ring.array(self.slot, _in_slot(lent), self.slot_bytes), lent),
                    pin_memory,
                )
            finally:
                ring.release(self.slot, self.worker)
            return out if self.sizes is None else split_group(out, self.sizes, _as_is)
        # one array over the whole slot holds ``keeper``, one tensor over it shares its storage with
        # every tensor of the batch (a view each): the slot returns when the last of them goes (none
        # made: at once). Three torch calls a tensor: this runs on the training process, a batch at a time.
        held = ring.block[self.slot * self.slot_bytes : (self.slot + 1) * self.slot_bytes].view(_Held)
        held._return = _Return(slots, self.worker, self.slot)
        whole = torch.from_numpy(held)

        def view(lent: LentTensor) -> torch.Tensor:
            nbytes = math.prod(lent.shape) * lent.dtype.itemsize
            return whole[lent.offset : lent.offset + nbytes].view(lent.dtype).view(lent.shape)

        out = _placed_back(self.value, view, _as_is)
        return out if self.sizes is None else split_group(out, self.sizes, _as_is)


def _in_slot(lent: LentTensor) -> InSlot:
    nbytes = math.prod(lent.shape) * lent.dtype.itemsize
    return InSlot(lent.offset, np.dtype(np.uint8).str, (nbytes,))


def _bytes_of(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor's elements as one row of bytes (a view when it is contiguous)."""
    return tensor.reshape(-1).view(torch.uint8)


def _pinned(source: np.ndarray, lent: LentTensor) -> torch.Tensor:
    out = torch.empty(lent.shape, dtype=lent.dtype, pin_memory=True)
    if source.size:
        _bytes_of(out).copy_(torch.from_numpy(source))
    return out


def _placed_back(value: Any, make: Callable[[LentTensor], torch.Tensor], other: Callable[[Any], Any]) -> Any:
    """``value`` with each :class:`LentTensor` made a tensor by ``make``, and ``other`` of the rest."""
    if isinstance(value, LentTensor):
        return make(value)
    if type(value) is dict:
        return {k: _placed_back(v, make, other) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_placed_back(v, make, other) for v in value)
    return other(value)
