"""Harness processes that start in milliseconds: forked from a server that imported torch and Lightning once.

A fault-matrix or resume-matrix cell runs several short Lightning runs, each in a process of its
own (a run must be SIGSTOPped, SIGKILLed or resumed apart from the test). As fresh interpreters
each paid about 5 s of CPU on 2 cores importing torch and Lightning before its first batch, which
was most of what those cells cost. Here one server per test process imports them once
(``python -m tests.zygote``) and forks a child per run; the child is what ``python SCRIPT ARGS`` /
``python -m MODULE ARGS`` would be: its own session (``start_new_session``), working directory,
environment, ``sys.argv``, ``__main__`` and output file, and it ends with the script's exit status.

Only torch and Lightning are imported before the fork: lancedb starts native threads at import,
which a fork does not carry over, so each run imports lancedb (and lance_lightning) itself, after it.
The server is started with ``OMP_NUM_THREADS=1``: OpenMP reads it when torch loads it, before any fork.

This is for the tests' own harness scripts. What users run themselves (the console scripts, the
examples, Lightning's DDP launcher re-running the script) stays a real ``subprocess`` in its tests.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PRELOAD = ("torch", "lightning.pytorch")


class Forked:
    """A run forked by the server, used like a ``subprocess.Popen`` (``pid``, ``poll``, ``wait``)."""

    def __init__(self, pid: int, status_file: Path) -> None:
        self.pid, self._status_file, self.returncode = pid, status_file, None

    def poll(self) -> int | None:
        """The exit status once the run has ended (negative: killed by that signal), else None."""
        if self.returncode is None and self._status_file.exists():
            self.returncode = int(self._status_file.read_text())
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the run ends; ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.02)
        return self.returncode


class _Server:
    """The server process of this test process, started on first use, ended when this one ends."""

    _lock = threading.Lock()
    _proc: subprocess.Popen | None = None

    @classmethod
    def request(cls, request: dict[str, Any]) -> int:
        with cls._lock:
            if cls._proc is None or cls._proc.poll() is not None:
                env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
                cls._proc = subprocess.Popen(
                    [sys.executable, "-m", "tests.zygote"], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, text=True, bufsize=1,
                )  # fmt: skip
                atexit.register(cls._proc.stdin.close)  # the server ends when its input does
            cls._proc.stdin.write(json.dumps(request) + "\n")
            cls._proc.stdin.flush()
            reply = cls._proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"the test zygote server ended (exit status {cls._proc.poll()})")
        return int(json.loads(reply)["pid"])


def start(args: list[str], *, cwd: Path | str, env: dict[str, str], output: Path | str) -> Forked:
    """Run ``python *args`` (``[script, ...]`` or ``["-m", module, ...]``) as a child of the server,
    its stdout and stderr written to ``output``."""
    output = Path(output)
    status = output.with_name(output.name + ".status")
    status.unlink(missing_ok=True)
    request = {"args": list(args), "cwd": str(cwd), "env": dict(env), "output": str(output), "status": str(status)}
    return Forked(_Server.request(request), status)


def run(
    args: list[str], *, cwd: Path | str, env: dict[str, str], output: Path | str, timeout: float
) -> subprocess.CompletedProcess:
    """``subprocess.run(python *args)``'s answer (stdout and stderr together in ``stdout`` and in ``output``);
    the run is SIGKILLed and ``TimeoutExpired`` raised after ``timeout`` seconds."""
    child = start(args, cwd=cwd, env=env, output=output)
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        raise
    text = Path(output).read_text(errors="replace")
    return subprocess.CompletedProcess(args, child.returncode, text, "")


# -- the server --------------------------------------------------------------------------------------


def _child(request: dict[str, Any]) -> None:
    """In the forked child: become ``python *args``. It never returns: the run's end (or its
    uncaught exception, or ``SystemExit``) unwinds to the top and the interpreter exits as python
    does (atexit, non-daemon threads joined, objects finalised: a lance writer removes its
    temporary files then), with the same exit status."""
    import runpy
    import traceback

    try:
        os.setsid()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        out = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        args = request["args"]
        if args[0] == "-m":
            sys.argv = [args[1], *args[2:]]
            sys.path[0] = request["cwd"]
        else:
            sys.argv = list(args)
            sys.path[0] = str(Path(args[0]).resolve().parent)
    except BaseException:  # noqa: BLE001 - the child could not become the run: say so, exit status 1
        traceback.print_exc()
        os._exit(1)
    if args[0] == "-m":
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(args[0], run_name="__main__")
    sys.exit(0)


def _reap(pending: dict[int, str]) -> None:
    """Write the exit status of every ended child to its status file (``-N``: killed by signal N)."""
    while pending:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        path = pending.pop(pid, None)
        if path is not None:
            code = os.waitstatus_to_exitcode(status)
            Path(path + ".tmp").write_text(str(code))
            os.replace(path + ".tmp", path)


def serve() -> None:
    """Import :data:`PRELOAD`, then fork a child per request line on stdin; answer its pid."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    pending: dict[int, str] = {}
    buffer = b""
    while True:
        ready, _, _ = select.select([0], [], [], 0.02)
        _reap(pending)
        if not ready:
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            break
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _child(request)
            pending[pid] = request["status"]
            os.write(1, (json.dumps({"pid": pid}) + "\n").encode())
    deadline = time.monotonic() + 5  # the test process ended: reap what ends soon, leave the rest
    while pending and time.monotonic() < deadline:
        _reap(pending)
        time.sleep(0.05)


if __name__ == "__main__":
    serve()
