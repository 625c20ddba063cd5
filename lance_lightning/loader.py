"""The train/val/test/predict ``DataLoader``: one batch an item, workers that end with the trainer.

:func:`make_loader` builds it from the settings; :class:`LanceDataLoader` hands out batches that
were read together (a :class:`~.batches.BatchGroup`) one by one and names a worker that died.
"""

from __future__ import annotations

import functools
import gc
import itertools
import multiprocessing
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from .batch_keys import keyed
from .batches import BatchGroup
from .options import DataOptions
from .readahead import read_ahead
from .slots import WorkerSlots, output_slots, taken, worker_slots
from .source import LanceSourceError, is_memory_uri
from .workers import init_worker

FORKSERVER_PRELOAD = ("__main__", "lance_lightning.dataset", "lance_lightning.stage", "lance_lightning.workers")
"""What the fork server imports once, so that each worker forks from a process that has it instead of
importing it afresh: the readers (torch, numpy, pyarrow) and the user's script (``__main__``: a
worker then does not import it again, nor the Lightning and Hydra it imports). lancedb is left out:
a worker reading a stage never needs it, and one reading the table imports it after the fork."""

OUTPUT_SLOTS = True
"""Workers of a staged split with a ``transform`` copy its output tensors into reused shared-memory
slots (:func:`~.slots.lend_into_slot`); False: every batch in fresh shared memory (torch's way)."""


def start_forkserver() -> None:
    """Start the fork server (with :data:`FORKSERVER_PRELOAD`) now, in the background: its imports
    then overlap the rest of setup instead of delaying the first batch. Idempotent; a server that
    is already running (started by this or other code) is kept as it is."""
    from multiprocessing import forkserver

    forkserver.set_forkserver_preload(list(FORKSERVER_PRELOAD))  # used only if the server starts now
    forkserver.ensure_running()


def worker_start_method(dataset: Any, options: DataOptions) -> str:
    """How this loader's workers start: ``multiprocessing_context`` where it is set; otherwise
    ``fork`` for a staged reader on Linux, ``forkserver`` for the rest.

    Why fork is safe for a staged reader: its workers only map the stage's files and gather with
    NumPy and Arrow; nothing in them calls lancedb, whose native runtime (threads, locks) does not
    survive a fork. The objects a worker inherits are frozen out of its garbage collector
    (:meth:`LanceDataLoader._get_iterator`), so no lancedb handle is finalised there either. A
    forked worker starts in milliseconds; a forkserver one waits for the server to import the
    user's script, Lightning and lancedb included (~6 s on 2 cores)."""
    if options.multiprocessing_context is not None:
        return options.multiprocessing_context
    if getattr(dataset, "reads_stage", False) and sys.platform.startswith("linux"):
        return "fork"
    return "forkserver"


def make_loader(dataset: Any, sampler: Any, options: DataOptions, *, transform: Any) -> LanceDataLoader:
    """The loader of one stage: ``sampler`` yields whole batches, ``dataset`` reads them."""
    workers = options.num_workers
    sources = dataset.table_sources() if workers and hasattr(dataset, "table_sources") else []  # staged: none
    memory = [s for s in sources if is_memory_uri(s.uri)]
    if memory:
        source = memory[0]
        raise LanceSourceError(
            f"table {source.name!r} is in an in-memory database ({source.uri}): "
            f"num_workers={workers} worker processes cannot reopen it. Use num_workers=0, "
            "staging='always' (workers then read the stage), "
            "or store the table in a directory (lancedb.connect('/path')) or object store."
        )
    kwargs: dict[str, Any] = {}
    if workers:
        method = worker_start_method(dataset, options)
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            start_forkserver()
        kwargs["multiprocessing_context"] = context
        # each worker ends when this process does (lance_lightning/workers.py): a SIGKILLed
        # trainer otherwise leaves the fork server and its workers alive
        kwargs["worker_init_fn"] = functools.partial(init_worker, os.getpid())
        kwargs["persistent_workers"] = options.persistent_workers
        if options.prefetch_factor is not None:
            kwargs["prefetch_factor"] = options.prefetch_factor
    if transform is None:
        # Batches are already tensors: skip DataLoader's default_convert walk over every item
        # (a transform may return NumPy arrays, which default_convert still turns into tensors).
        kwargs["collate_fn"] = batch_as_is
    loader = LanceDataLoader(
        dataset, sampler=sampler, batch_size=None, num_workers=workers, pin_memory=options.pin_memory, **kwargs
    )
    loader.read_ahead = 0 if workers else options.read_ahead
    loader.batch_keys = options.batch_keys
    return loader


class LanceDataLoader(DataLoader):
    """A plain ``DataLoader`` that Lightning recognises as resumable.

    Its position is the datamodule's (:mod:`.state`), stored once per checkpoint by
    :meth:`LanceDataModule.state_dict`; the loader's own ``state_dict`` is empty and its
    ``load_state_dict`` does nothing (they exist so that Lightning treats the loader as resumable).
    """

    read_ahead = 0
    """With no workers: batches read ahead on a background thread (:func:`_reading_ahead`)."""
    batch_keys: tuple[str, ...] | None = None
    """Each batch as the tuple of these keys (:mod:`.batch_keys`); None: the dict."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        return None

    def _get_iterator(self) -> Any:
        """Start the workers, with batch slots where they read a stage (:meth:`_worker_slots`);
        forked ones with every inherited object frozen out of their garbage collector
        (``gc.freeze``), so that a worker never finalises its parent's lancedb handles."""
        if not self.num_workers:
            return super()._get_iterator()
        slots = self._worker_slots()
        if slots is not None:
            self.dataset.slots = slots  # only while the workers start: they inherit it or receive it pickled
        try:
            iterator = self._start_workers()
        finally:
            if slots is not None:  # the workers have them now; nothing else that pickles or forks it may
                self.dataset.slots = None
        iterator._lance_slots = slots  # the slots live as long as the workers that write them
        return iterator

    def _start_workers(self) -> Any:
        context = self.multiprocessing_context
        if context is None or context.get_start_method() != "fork":
            return super()._get_iterator()
        gc.freeze()
        try:
            with warnings.catch_warnings():
                # lance and lancedb warn at every fork (the workers inherit these filters): these
                # workers never call them, which is why they fork (worker_start_method)
                warnings.filterwarnings("ignore", message="lance is not fork-safe")
                warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
                return super()._get_iterator()
        finally:
            gc.unfreeze()

    def _worker_slots(self) -> WorkerSlots | None:
        """Batch slots for the workers about to start (:mod:`.slots`) where they read a stage: sized
        from the rows with no transform; with one, sized by each worker from its first batch's
        output (:func:`~.slots.output_slots`). None for a table reader."""
        dataset = self.dataset
        layout = dataset.slot_layout() if hasattr(dataset, "slot_layout") else None
        if layout is None:
            return None
        if dataset.transform is not None or getattr(dataset, "lends_output", False):
            if not OUTPUT_SLOTS:
                return None
            return output_slots(self.num_workers, self.prefetch_factor or 2, context=self.multiprocessing_context)
        row_bytes, columns = layout
        return worker_slots(
            self.num_workers,
            self.prefetch_factor or 2,
            rows=getattr(self.sampler, "batch_size", 0) * getattr(self.sampler, "group_batches", 1),
            row_bytes=row_bytes,
            columns=columns,
            context=self.multiprocessing_context,
        )

    def __iter__(self) -> Any:
        """Batches one by one: a :class:`~.batches.BatchGroup` read together is handed out whole."""
        items = super().__iter__()
        if self.num_workers:
            items = taken(_naming_dead_workers(items, self.dataset))
        elif self.read_ahead:
            items = _reading_ahead(items, self.read_ahead)
        if getattr(self.sampler, "group_batches", 1) != 1:
            items = (batch for item in items for batch in (item if isinstance(item, BatchGroup) else (item,)))
        return items if self.batch_keys is None else keyed(items, self.batch_keys)


def _reading_ahead(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """``items`` with up to ``depth`` more read on a background thread while the step runs.

    The first item is read here, on the calling thread, as ``iter()`` with workers does: the
    sampler then fixes the epoch's order before Lightning calls ``set_epoch`` (the position it
    reads is :mod:`.state`'s), never concurrently with it. The datamodule's position counts the
    batches Lightning has consumed, not those read ahead (as with workers' prefetch). A pinning
    loader pins on the reading thread with the CUDA device of this one.

    An error reading the first item is raised at the first ``next()``, not here: an ``iter()`` that
    raises leaves Lightning's ``CombinedLoader`` without an iterator, and its teardown then fails
    with ``Please call iter(combined_loader) first``, which hides the error (the real one only in
    the chained traceback). Raised at ``next()``, as a worker's error is, it reaches the user as itself."""
    try:
        first = next(items, _END)
    except Exception as err:  # noqa: BLE001 - raised as it is, one call later
        return _raising(err)
    if first is _END:
        return iter(())
    bind = _cuda_device_binder()

    def rest() -> Iterator[Any]:
        if bind is not None:
            bind()
        yield from items

    return itertools.chain((first,), read_ahead(rest(), depth, name="lance-lightning-loader-read-ahead"))


_END = object()


def _raising(err: BaseException) -> Iterator[Any]:
    """An iterator whose first ``next()`` raises ``err``."""
    raise err
    yield  # a generator: nothing runs before the first next()


def _cuda_device_binder() -> Any:
    """A function that makes this thread's CUDA device current on another thread (pinned memory
    is allocated on the current device; a new thread's is device 0), or None without CUDA."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    index = torch.cuda.current_device()
    return lambda: torch.cuda.set_device(index)


def _naming_dead_workers(items: Any, dataset: Any) -> Any:
    """``items``, where a worker that died is reported by its cause where it can be found: a stage
    whose files changed under the worker (a file truncated under a gather kills it with SIGBUS,
    which DataLoader reports as a lack of shared memory) raises the :class:`~.stage.StageError`
    naming the stage and the file; a worker killed while handing over a batch (its shared-memory
    connection reset) says so instead of a bare ``ConnectionResetError`` / ``EOFError``."""
    try:
        yield from items
    except (ConnectionError, EOFError, RuntimeError) as err:
        damage = dataset.damage() if hasattr(dataset, "damage") else None
        if damage is not None:
            raise damage from err
        if isinstance(err, RuntimeError):
            raise
        raise RuntimeError(
            f"a DataLoader worker died while handing over a batch ({type(err).__name__}: {err}): it was "
            "killed (the OOM killer, a SIGKILL) or crashed. Check the worker's memory use and the system log; "
            "resume from the last checkpoint to continue exactly."
        ) from err


def batch_as_is(batch: Any) -> Any:
    """The DataLoader's collate_fn when batches are already tensors: hand them on unchanged."""
    return batch
