"""DataLoader workers end with the training process that started them.

Why they may not: with the ``forkserver`` start method a worker is a child of the fork server,
not of the trainer, and every process the server starts holds the write end of the server's
keep-alive pipe. torch's own watchdog in a worker only asks whether its parent (the server) is
alive, and the server only exits when that pipe is closed by all its clients, workers included.
So after a SIGKILL of the trainer (OOM killer, preemption) the workers and the server kept each
other alive: 6 processes, 2.1 GB survived 60 s.

:func:`init_worker` is the DataLoader's ``worker_init_fn``: it starts a daemon thread in each
worker that waits for the trainer to end and then ends the worker (``os._exit``). Once the last
worker is gone the server would see its keep-alive pipe close and exit by itself, after seconds
of interpreter shutdown; the workers end it at once instead (SIGTERM, only while it is still
their parent). Waiting uses a pidfd where there is one (Linux 5.3+): it becomes readable the
moment the process exits, even while it is an unreaped zombie, and costs nothing until then.
Elsewhere the thread polls every :data:`POLL_S` seconds.

Nothing here is imported into the fork server (``set_forkserver_preload``): importing this
package imports lancedb, which the server must not hold before it forks.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable

from lance_lightning.heap import keep_freed_memory

POLL_S = 0.5
EXIT_CODE = 1


def process_ended(pid: int) -> bool:
    """Whether process ``pid`` has ended: gone, or a zombie no one has reaped yet."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by someone else
    if sys.platform.startswith("linux"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        return state in (b"Z", b"X")
    return False


def waiter(pid: int, *, poll_s: float = POLL_S, use_pidfd: bool = True) -> Callable[[], None]:
    """A function that returns once process ``pid`` has ended (at once if it already has).

    Opened now, so that it keeps following this process even if the pid is reused later.
    """
    if use_pidfd and hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return lambda: None
        except OSError:
            pass  # no pidfds here (old kernel, seccomp): poll
        else:

            def wait_pidfd() -> None:
                select.select([fd], [], [])  # readable when the process exits

            return wait_pidfd

    def wait_poll() -> None:
        while not process_ended(pid):
            time.sleep(poll_s)

    return wait_poll


def exit_with(
    pid: int, *, server: int | None = None, poll_s: float = POLL_S, use_pidfd: bool = True
) -> threading.Thread:
    """Start a daemon thread that ends this process (``os._exit``) as soon as process ``pid`` has ended.

    ``server``: this process's parent (the fork server that started it), ended too (SIGTERM)
    if it is still this process's parent then: without clients it has no use, and ending it
    spares its interpreter shutdown (~4 s with torch loaded, measured here).
    """
    wait = waiter(pid, poll_s=poll_s, use_pidfd=use_pidfd)

    def watch() -> None:
        wait()
        # Still our parent, so still the same process (a parent's pid cannot be reused while
        # its child lives); never the watched process itself, never init.
        if server is not None and server not in (pid, 1) and os.getppid() == server:
            with contextlib.suppress(OSError):
                os.kill(server, signal.SIGTERM)
        os._exit(EXIT_CODE)

    thread = threading.Thread(target=watch, name=f"lance-lightning-exit-with-{pid}", daemon=True)
    thread.start()
    return thread


def init_worker(trainer_pid: int, worker_id: int) -> None:
    """The DataLoader's ``worker_init_fn`` (bound to the trainer's pid with ``functools.partial``):
    the worker ends when the trainer does, and so does the fork server that started it; and it keeps
    its freed memory for the next batch (:mod:`lance_lightning.heap`)."""
    keep_freed_memory()
    parent = os.getppid()
    exit_with(trainer_pid, server=None if parent == trainer_pid else parent)  # spawn: the trainer is the parent
