"""The state file of a running region, and the rule by which clients attach to it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from blobtier import config, runstate
from blobtier import runstate as state
from blobtier.runstate import RegionState, ServiceRecord


@pytest.fixture
def sleeper():
    """A live process that looks like a blobtier service (its command line names blobtier)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "blobtier-test"])
    yield proc.pid
    proc.kill()
    proc.wait()


def record(name: str, kind: str, pid: int, address=None, socket=None) -> ServiceRecord:
    return ServiceRecord(name, kind, pid, address, None, socket, time.time(), f"/logs/{name}.log")


def write_state(root: str, pid: int) -> RegionState:
    st = RegionState(root, services=[
        record("block-0", "block", pid, "127.0.0.1:9000"), record("block-1", "block", pid, "127.0.0.1:9001"),
        record("block-2", "block", pid, "127.0.0.1:9002"), record("flash-0", "flash", pid, "127.0.0.1:9003"),
        record("daemon", "daemon", pid, socket=f"{root}/run/daemon.sock")])
    state.write(st)
    return st


def test_round_trip(tmp_path, sleeper):
    written = write_state(str(tmp_path), sleeper)
    assert state.read(str(tmp_path)) == written
    assert state.read(str(tmp_path / "other")) is None
    state.remove(str(tmp_path))
    assert state.read(str(tmp_path)) is None


def test_clients_attach_to_a_running_region(tmp_path, sleeper):
    root = str(tmp_path)
    plain = runstate.resolve_running(root)
    assert plain.block.endpoints == () and runstate.resolve_running(plain) is plain  # nothing running
    write_state(root, sleeper)
    cfg = runstate.resolve_running(root)
    assert cfg.block.endpoints == ("127.0.0.1:9000", "127.0.0.1:9001", "127.0.0.1:9002")  # in id order
    assert cfg.flash.endpoints == ("127.0.0.1:9003",)
    assert cfg.cache.daemon == f"{root}/run/daemon.sock"
    assert config.resolve(root).block.endpoints == ()  # what `up` itself reads


def test_explicit_settings_win(tmp_path, sleeper, monkeypatch):
    root = str(tmp_path)
    write_state(root, sleeper)
    monkeypatch.setenv("BLOBTIER_CACHE_DAEMON", "off")
    monkeypatch.setenv("BLOBTIER_FLASH_ENDPOINTS", "10.0.0.1:7100")
    cfg = runstate.resolve_running(root)
    assert cfg.cache.daemon == "off" and cfg.flash.endpoints == ("10.0.0.1:7100",)
    assert cfg.block.endpoints[0] == "127.0.0.1:9000"


def test_a_dead_region_is_opened_embedded(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass", "blobtier-test"])
    proc.wait()
    write_state(str(tmp_path), proc.pid)
    assert runstate.resolve_running(str(tmp_path)).block.endpoints == ()


def test_a_zombie_or_foreign_process_is_not_alive():
    proc = subprocess.Popen([sys.executable, "-c", "pass", "blobtier-test"])
    deadline = time.monotonic() + 30
    while _state_of(proc.pid) != "Z":  # exited, not yet reaped: kill(pid, 0) still succeeds
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not state.pid_alive(proc.pid)
    proc.wait()
    other = subprocess.Popen(["sleep", "30"])  # alive, but not a blobtier process
    try:
        assert not state.pid_alive(other.pid)
    finally:
        other.kill()
        other.wait()


def _state_of(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]
