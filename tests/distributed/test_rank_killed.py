"""One DDP rank SIGKILLed mid-fit (the OOM killer, a lost node's process): the whole job must end
promptly, every rank and every DataLoader worker with it, never hang in a collective and never
leave a process reading on. Real processes: Lightning's own launcher, 2 ranks of 2 workers each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.distributed._ddp import SCRIPT, clean_env, make_table, write_spec
from tests.processes import kill_all, wait_ended

pytestmark = [pytest.mark.distributed, pytest.mark.long]

START_TIMEOUT_S = 180
END_TIMEOUT_S = 60  # Lightning's observer looks every 5 s; gloo notices a dead peer at the next collective


@pytest.mark.parametrize("victim", [1, 0], ids=["rank1", "rank0"])
def test_a_killed_rank_ends_the_job_and_every_process_of_it(tmp_path, victim):
    uri = make_table(tmp_path)
    run = {"tag": "held", "action": "fit", "devices": 2, "epochs": 100, "hold_s": 0.05, "data": {"num_workers": 2}}
    spec = write_spec(tmp_path, uri, [run], "killed")
    out = tmp_path / "out-killed"
    log = (tmp_path / "launcher.log").open("w")
    launcher = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(spec)], env=clean_env(), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    processes: list[psutil.Process] = []
    try:
        markers = [out / f"training-rank{rank}.pid" for rank in (0, 1)]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(m.exists() and m.read_text() for m in markers):
            assert launcher.poll() is None, (tmp_path / "launcher.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the ranks did not start training"
            time.sleep(0.1)
        pids = [int(m.read_text()) for m in markers]
        assert pids[0] == launcher.pid  # rank 0 is the launched process; rank 1 its child
        processes = [psutil.Process(launcher.pid), *psutil.Process(launcher.pid).children(recursive=True)]
        names = {p.pid: " ".join(p.cmdline())[:80] for p in processes}
        assert len(processes) >= 2 + 2 * 2, names  # 2 ranks, 2 workers each (and a fork server or two)
        os.kill(pids[victim], signal.SIGKILL)
        launcher.wait(timeout=END_TIMEOUT_S)
        assert launcher.returncode != 0
        left = wait_ended(list(names), timeout=END_TIMEOUT_S)
        assert not left, f"still running {END_TIMEOUT_S} s after rank {victim} was killed: {[names[p] for p in left]}"
        assert not (out / "held-rank0.json").exists() and not (out / "held-rank1.json").exists()  # no run finished
    finally:
        kill_all(processes)
        if launcher.poll() is None:
            launcher.kill()
        launcher.wait()
        log.close()
