"""Read ahead of a consumer: an iterator drained on a thread, a few items in advance.

A stage fill reads the table (Lance works off the GIL) and writes files with CRC-32s (zlib and file
writes release the GIL too); one after the other they cost the sum, side by side about the larger.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


def read_ahead(items: Iterable[T], depth: int = 2, *, name: str = "lance-lightning-read-ahead") -> Iterator[T]:
    """Yield ``items`` in order while a thread fetches up to ``depth`` more. An exception raised by
    ``items`` is raised here at the point it happened; closing this generator early (or an exception
    in the consumer) stops the thread at its next item."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth!r}")
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as err:  # handed to the consumer, raised there
            put((_DONE, err))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item, err = ready.get()
            if item is _DONE:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        thread.join()
