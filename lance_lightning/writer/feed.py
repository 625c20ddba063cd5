"""A bounded hand-over from the predict loop to one writer thread, whose every error reaches the loop.

The loop :meth:`Feed.put`\\ s items; the thread runs ``consume(items)`` over them (a loop of its
own, or lance's ``write_fragments`` reading a ``RecordBatchReader``). The rules that keep it from
hanging:

* the thread never waits for the loop after it stops: when ``consume`` returns or raises, it
  records the outcome and ends; it does not drain the queue waiting for an end marker (the
  marker may already have been read, or never come);
* the loop never waits for a thread that has ended: a put into a full queue re-checks every
  0.1 s whether the thread is still there, and raises its error if not;
* :meth:`finish` sends the end marker (while the thread lives) and waits for the thread, which
  then only has the work already queued; :meth:`abort` makes ``consume``'s items raise at once
  and waits a bounded time;
* every error the thread meets is raised in the loop's thread as a
  :class:`~.stage.PredictionWriteError` naming what was being written.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .stage import PredictionWriteError

QUEUE_BATCHES = 8
"""Batches a writer thread holds at most: memory stays a few batches, whatever the table size."""
ABORT_WAIT_S = 30.0
_END = object()
_POLL_S = 0.1


class Feed:
    """Items from the predict loop to ``consume`` on a thread named ``name``; ``what`` names the
    target in errors (e.g. ``"column(s) ['score'] of table 'rows'"``)."""

    def __init__(self, consume: Callable[[Iterator[Any]], Any], *, name: str, what: str) -> None:
        self.what = what
        self._consume = consume
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
        self._done = threading.Event()
        self._aborted = False
        self._error: BaseException | None = None
        self._result: Any = None
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _items(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if self._aborted:
                raise PredictionWriteError(f"writing {self.what} was aborted")
            if item is _END:
                return
            yield item

    def _work(self) -> None:
        try:
            self._result = self._consume(self._items())
        except BaseException as err:  # noqa: BLE001 - raised in the predict loop's thread
            self._error = err
        finally:
            self._done.set()

    def check(self) -> None:
        """Raise the thread's error, if it met one."""
        err = self._error
        if err is None:
            return
        if isinstance(err, PredictionWriteError) and self.what in str(err):
            raise err
        raise PredictionWriteError(
            f"writing {self.what} failed: {type(err).__name__}: {err}. Nothing was committed"
        ) from err

    def _put(self, item: Any) -> bool:
        """Put ``item``; False when the thread has ended (it takes nothing more)."""
        while True:
            if self._done.is_set():
                return False
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue

    def put(self, item: Any) -> None:
        self.check()
        if not self._put(item):
            self.check()
            raise PredictionWriteError(f"the thread writing {self.what} ended before the predict loop did")

    def finish(self) -> Any:
        """Wait for the thread to write everything queued; returns what ``consume`` returned."""
        self._put(_END)
        while not self._done.wait(_POLL_S * 5):
            pass  # the thread has only the queued work left: it ends (polled, so signals get through)
        self._thread.join(timeout=ABORT_WAIT_S)
        self.check()
        if self._thread.is_alive():  # cannot happen: _done is set as the thread's last act
            raise PredictionWriteError(f"the thread writing {self.what} did not end")
        return self._result

    def abort(self) -> None:
        """Stop the thread at its next item (waits at most ``ABORT_WAIT_S``); its error is dropped."""
        self._aborted = True
        deadline = time.monotonic() + ABORT_WAIT_S
        while not self._done.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                self._queue.get_nowait()  # room for the marker that wakes it
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_END)
            self._done.wait(_POLL_S)
