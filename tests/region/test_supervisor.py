"""The supervisor's stopping rules, on real processes that stand in for services."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from blobtier import runstate as state
from blobtier.errors import InvalidRequest, RegionLocked
from blobtier.region import supervisor
from blobtier.runstate import RegionState, ServiceRecord

STUBBORN = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n")


def start(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code, "blobtier-test"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"  # its SIGTERM handler is in place
    return proc


def record(name: str, pid: int, socket: str | None = None) -> ServiceRecord:
    return ServiceRecord(name, "daemon" if socket else "block", pid, None if socket else "127.0.0.1:1",
                         None, socket, time.time(), "")


def test_down_escalates_to_sigkill_and_removes_what_is_left(tmp_path):
    root = str(tmp_path)
    polite = start("import time\nprint('ready', flush=True)\ntime.sleep(120)\n")
    stubborn = start(STUBBORN)
    sock = tmp_path / "run" / "daemon.sock"
    sock.parent.mkdir()
    sock.write_bytes(b"")  # as a daemon killed before it could unlink its socket leaves it
    state.write(RegionState(root, services=[record("block-0", polite.pid),
                                            record("daemon", stubborn.pid, str(sock))]))
    said: list[str] = []
    t0 = time.monotonic()
    supervisor.down(root, timeout_s=1.0, say=said.append)
    assert time.monotonic() - t0 < 10
    # down reaped them (they are its children here), so Popen learns no exit status.
    assert not state.pid_alive(polite.pid) and not state.pid_alive(stubborn.pid)
    polite.wait(5)
    stubborn.wait(5)
    assert any(line.startswith("stopped block-0") for line in said)
    assert any(line.startswith("killed (SIGKILL) daemon") for line in said)
    assert state.read(root) is None and not sock.exists()


def test_a_running_region_is_not_started_twice_but_a_dead_one_is_cleared(tmp_path):
    root = str(tmp_path)
    proc = start("import time\nprint('ready', flush=True)\ntime.sleep(120)\n")
    try:
        state.write(RegionState(root, services=[record("block-0", proc.pid)]))
        with pytest.raises(RegionLocked, match="already up"):
            supervisor._refuse_if_running(root, print)
    finally:
        proc.kill()
        proc.wait()
    said: list[str] = []
    supervisor._refuse_if_running(root, said.append)  # its processes are gone: a stale file
    assert state.read(root) is None and "no longer running" in said[0]


def test_status_of_a_region_that_is_not_up(tmp_path):
    with pytest.raises(InvalidRequest, match="no region is up"):
        supervisor.status(str(tmp_path))


def test_status_says_dead_for_a_service_that_died(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass", "blobtier-test"])
    proc.wait()
    state.write(RegionState(str(tmp_path), services=[record("block-0", proc.pid)]))
    [row] = supervisor.status(str(tmp_path))
    assert row.health == "dead"
    assert "dead" in supervisor.format_status([row])[1]
