"""Filling a stage in a child process, so that what the fill allocates ends with it.

A fill reads the whole split through pyarrow and lancedb/pylance: their allocators keep much of
what the read used (measured on 50k 5.3 KiB JPEG rows, batch 256, 2 workers: the training process
peaked at +409 MB over a reused stage and held +168 MB for the rest of the run). Run in a child
(``python -m lance_lightning.stage.child``, a fresh interpreter: nothing of the training process's
threads, locks or lancedb runtime is inherited, and no user ``__main__`` is re-run as
``multiprocessing``'s spawn would), that memory is returned to the OS when the child exits; the
training process only maps the finished files.

The parent keeps everything that guards the fill (the node's root lock, the budget check and
eviction, the rename into place, the log line); the child does :func:`.fill._fill_in_budget`
into ``.tmp-<key>``. What the child logs and warns is replayed in the parent; an exception in the
child is raised in the parent as the same type with the same message (the child's traceback as a
note). The child ends itself when the parent does (:func:`..workers.exit_with`), so a filler
killed mid-fill leaves no orphan writing into a directory the next filler clears.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import traceback
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

log = logging.getLogger("lance_lightning.stage")

KNOBS = {
    "fill": ("SCAN_WITH_PYLANCE", "SCAN_FRACTION", "FILL_BATCH_BYTES", "_SCAN_BATCH", "_TAKE_BATCH"),
    "store": ("SEGMENT_BYTES", "VERIFY_THREADS"),
}
"""The module settings the child takes from the parent (a test or a user may have changed them)."""


class ChildNotStarted(Exception):
    """The child gave no answer (it could not start, or was killed): fill in this process instead."""


def _knobs() -> dict[str, dict[str, Any]]:
    from . import fill, store

    modules = {"fill": fill, "store": store}
    return {m: {k: getattr(modules[m], k) for k in names} for m, names in KNOBS.items()}


def _set_knobs(knobs: dict[str, dict[str, Any]]) -> None:
    from . import fill, store

    modules = {"fill": fill, "store": store}
    for m, values in knobs.items():
        for k, v in values.items():
            setattr(modules[m], k, v)


def fill_in_child(job: Any, needed: int) -> dict[str, Any]:
    """Run :func:`.fill._fill_in_budget` for ``job`` in a fresh Python process; its manifest.
    Raises what the fill raised there; :class:`ChildNotStarted` when the child gave no answer."""
    try:
        payload = pickle.dumps((replace(job, table=None), needed, _knobs()), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as err:  # a source that does not pickle
        raise ChildNotStarted(f"its job does not pickle ({type(err).__name__}: {err})") from err
    package_parent = str(Path(__file__).resolve().parents[2])  # the lance_lightning this process runs
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    if os.name != "posix" or not sys.executable:
        raise ChildNotStarted("a child fill needs a POSIX system and sys.executable")
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lance_lightning.stage.child", str(write_end)],
            stdin=subprocess.PIPE,
            pass_fds=(write_end,),
            env=env,
        )
    except OSError as err:  # no such interpreter, no processes left
        os.close(read_end)
        raise ChildNotStarted(f"the stage-fill process could not start ({err})") from err
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as answer:
            try:
                assert proc.stdin is not None
                proc.stdin.write(payload)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # the child ended early: its exit code says so below
            data = answer.read()
        code = proc.wait()
    except BaseException:  # interrupted: the child must be gone before the caller clears .tmp-<key>
        proc.kill()
        proc.wait()
        raise
    if not data:
        raise ChildNotStarted(f"the stage-fill process ended with exit code {code} without an answer")
    result = pickle.loads(data)
    for record in result["records"]:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
    for category, message in result["warnings"]:
        warnings.warn(message, category, stacklevel=5)  # the caller of ensure_stage
    if "error" in result:
        err = result["error"]
        err.add_note(f"(raised in the stage-fill process {proc.pid}:)\n{result['traceback']}")
        raise err
    return result["meta"]


def _run(payload: bytes) -> dict[str, Any]:
    """The child's work: the fill, with what it logged and warned; or the error it raised."""
    from . import fill
    from .write import Progress

    job, needed, knobs = pickle.loads(payload)
    _set_knobs(knobs)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            record.msg, record.args, record.exc_info = record.getMessage(), None, None
            records.append(record)

    root = logging.getLogger("lance_lightning")
    root.addHandler(Keep())
    root.setLevel(logging.DEBUG)
    root.propagate = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bar = Progress(len(job.row_ids), f"split {job.split_name!r}", job.progress)
        try:
            table = job.source.open()
            meta = fill._fill_in_budget(job, table, needed, bar)
            result: dict[str, Any] = {"meta": meta}
        except BaseException as err:  # every error goes to the parent, which raises it
            bar.close()
            tb = traceback.format_exc()
            try:
                pickle.dumps(err)
                pickle.loads(pickle.dumps(err))
            except Exception:
                err = RuntimeError(f"{type(err).__name__}: {err}")
            result = {"error": err, "traceback": tb}
    result["records"] = records
    result["warnings"] = [(w.category, str(w.message)) for w in caught]
    return result


def main(argv: list[str]) -> int:
    """``python -m lance_lightning.stage.child FD``: the pickled job on stdin, the answer on ``FD``."""
    from ..workers import exit_with

    fd = int(argv[0])
    exit_with(os.getppid())  # the parent ended (killed mid-fill): end too, leave no writer behind
    payload = sys.stdin.buffer.read()
    result = _run(payload)
    try:
        data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as err:  # an unpicklable log argument or warning: say what was lost
        data = pickle.dumps({**result, "records": [], "warnings": [(RuntimeWarning, f"lost: {err}")]})
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
