"""One log line while a step that is usually quick has run for seconds: nobody waits in silence.

:func:`notice_if_slow` starts a timer; if the step is still running after :data:`SLOW_AFTER_S`,
the message is logged once (on rank 0, through Lightning's logger, shown by default), saying what
is being read and why. A quick step logs nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from lightning.pytorch.utilities import rank_zero_info

SLOW_AFTER_S = 5.0
"""Seconds a step runs before its notice is logged."""


@contextmanager
def notice_if_slow(message: str, *, after_s: float | None = None) -> Iterator[None]:
    """Log ``message`` once if the body is still running after ``after_s`` (:data:`SLOW_AFTER_S`)."""
    delay = SLOW_AFTER_S if after_s is None else after_s
    if delay <= 0:  # 0: always worth saying (logged now, before the step)
        rank_zero_info(message)
        yield
        return
    timer = threading.Timer(delay, rank_zero_info, args=(message,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
