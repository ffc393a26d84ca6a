"""`blobtier restart`: a chunk server, flash node or daemon killed with SIGKILL in a running
region comes back on its ports, `status` shows it healthy, reads work, and `down` stops it
(and a service restarted by hand behind the state file's back) leaving no process or port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import blobtier
from blobtier import runstate as state
from blobtier.cli import main
from blobtier.errors import InvalidRequest
from blobtier.region import supervisor
from blobtier.runstate import RegionState, ServiceRecord
from tests.integration.region_support import blobtier as run_cli
from tests.integration.region_support import (
    free_base_port,
    kill_leftovers,
    port_free,
    processes_under,
    write_config,
)


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    while state.pid_alive(pid):  # a zombie until its parent (init, here) reaps it: dead enough
        time.sleep(0.02)


def ports_of(region: RegionState) -> list[int]:
    return [p for s in region.services
            for p in (s.metrics_port, int(s.address.rsplit(":", 1)[1]) if s.address else None) if p]


def status_lines(path: str, capsys) -> dict[str, str]:
    code = main(["status", "-c", path])
    lines = capsys.readouterr().out.splitlines()[2:]
    return {line.split()[0]: line for line in lines} | {"code": str(code)}


@pytest.mark.slow  # a whole region, three restarts and a down: about 10 s
def test_killed_services_come_back_and_down_leaves_nothing(tmp_path, capsys):
    root = str(tmp_path / "region")
    path = write_config(tmp_path / "region.toml", root, free_base_port())
    try:
        killed_and_restarted(path, root, capsys)
    finally:
        kill_leftovers(root)


def killed_and_restarted(path: str, root: str, capsys) -> None:
    up = run_cli("up", "-c", path)
    assert up.returncode == 0, up.stderr
    blobs = {f"ds/{i}": os.urandom(150_000) for i in range(6)}
    with blobtier.connect(path) as c:
        c.put_many(blobs)
    before = state.read(root)
    victims = {s.name: s.pid for s in before.services if s.name in ("block-1", "flash-0", "daemon")}
    for pid in victims.values():
        kill9(pid)
    rows = status_lines(path, capsys)
    assert rows["code"] == "1" and all("dead" in rows[name] for name in victims)

    again = run_cli("up", "-c", path)  # up refuses, and says what brings them back
    assert again.returncode == 1 and "`blobtier restart` brings back block-1, flash-0, daemon" in again.stderr

    assert main(["restart", "-c", path]) == 0  # no names: every service that is down
    out = capsys.readouterr().out
    assert all(f"restarted {name}" in out for name in victims)
    after = state.read(root)
    assert [s.name for s in after.services] == [s.name for s in before.services]
    assert [s.address for s in after.services] == [s.address for s in before.services]
    for s in after.services:
        assert (s.pid != victims[s.name]) if s.name in victims else (s.pid == before.services[
            [b.name for b in before.services].index(s.name)].pid)
    rows = status_lines(path, capsys)
    assert rows["code"] == "0" and all("SERVING" in rows[s.name] for s in after.services)

    with blobtier.connect(path) as c:  # the new daemon's L1, the new flash node, the new server
        assert c.tiers == ["l1", "l3"]
        assert {k: bytes(v) for k, v in zip(blobs, c.get_many(list(blobs)))} == blobs
        c.put("ds/after", b"written with every replica up again")
        assert c.scrub().clean  # block-1's replicas are all there

    assert main(["restart", "block-0", "-c", path]) == 0  # a running one: stopped, then started
    assert "stopped block-0" in capsys.readouterr().out
    with blobtier.connect(path, cache={"l1_bytes": 0, "daemon": "off"}, flash={"endpoints": []}) as c:
        assert bytes(c.get("ds/after")) == b"written with every replica up again"

    final = state.read(root)
    assert main(["down", "-c", path]) == 0
    assert "is down (5 services stopped)" in capsys.readouterr().out
    assert processes_under(root) == []
    assert not any(state.pid_alive(p) for p in list(victims.values()) + [s.pid for s in final.services])
    assert all(port_free(p) for p in ports_of(final))
    assert not os.path.exists(final.of_kind("daemon")[0].socket)


def test_down_stops_a_service_restarted_by_hand(tmp_path, capsys):
    """A chunk server started again by hand (so not in the state file) on its old port is
    found by the port it holds and stopped too."""
    root = str(tmp_path / "region")
    path = write_config(tmp_path / "region.toml", root, free_base_port(),
                        "flash_nodes = 0\ndaemon = false\n")
    try:
        by_hand = None
        assert run_cli("up", "-c", path).returncode == 0
        region = state.read(root)
        dead = region.of_kind("block")[2]
        kill9(dead.pid)
        port = dead.address.rsplit(":", 1)[1]
        by_hand = subprocess.Popen(
            [sys.executable, "-m", "blobtier.cli", "block", "serve", "--root",
             os.path.join(root, "blocks", "002"), "--port", port, "--id", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        assert "serving" in by_hand.stdout.readline()
        assert main(["down", "-c", path]) == 0
        out = capsys.readouterr().out
        assert f"pid {by_hand.pid}" in out and "not in the state file" in out
        assert by_hand.wait(10) is not None
        assert all(port_free(p) for p in ports_of(region))
        assert processes_under(root) == []
    finally:
        kill_leftovers(root)
        if by_hand is not None and by_hand.poll() is None:
            by_hand.kill()
            by_hand.wait()


def test_restart_names_what_it_cannot_do(tmp_path):
    from blobtier.config import resolve

    config = resolve(str(tmp_path / "r"))
    with pytest.raises(InvalidRequest, match="no region is up"):
        supervisor.restart(config, ["block-0"])
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "blobtier-test"])
    try:
        rec = ServiceRecord("block-0", "block", proc.pid, "127.0.0.1:1", None, None, time.time(), "")
        state.write(RegionState(config.root, services=[rec]))
        with pytest.raises(InvalidRequest, match="has no service 'flash-7'; its services are block-0"):
            supervisor.restart(config, ["flash-7"])
        with pytest.raises(InvalidRequest, match="block-0 runs at 127.0.0.1:1 but the config now says"):
            supervisor.restart(config, ["block-0"])
        assert state.read(config.root).services == [rec]  # nothing was touched
        assert state.pid_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_down_without_a_state_file_frees_the_configs_ports_and_socket(tmp_path, capsys):
    """An `up` killed before it wrote the state file leaves services nobody recorded: `down`
    finds them by the ports and the socket the config gives them."""
    root = tmp_path / "region"
    base = free_base_port()
    path = write_config(tmp_path / "region.toml", root, base, "flash_nodes = 0\n")
    (root / "run").mkdir(parents=True)
    sock = str(root / "run" / "daemon.sock")
    cli = [sys.executable, "-m", "blobtier.cli"]
    orphans = [subprocess.Popen(cli + ["block", "serve", "--root", str(root / "blocks" / "001"),
                                       "--port", str(base + 1), "--id", "1"],
                                stdout=subprocess.PIPE, text=True, start_new_session=True),
               subprocess.Popen(cli + ["daemon", "--memory", "4MiB", "--socket", sock],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)]
    try:
        for proc in orphans:
            assert proc.stdout.readline()  # each says so once it serves
        assert main(["down", "-c", path]) == 0
        out = capsys.readouterr().out
        assert all(f"pid {p.pid}" in out for p in orphans) and "is down (2 services stopped)" in out
        assert all(p.wait(10) is not None for p in orphans)
        assert port_free(base + 1) and not os.path.exists(sock)
        assert main(["down", "-c", path]) == 1  # nothing left: no region is up
    finally:
        for proc in orphans:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
