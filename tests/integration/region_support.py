"""Helpers for tests that run a whole region with `blobtier up`: free ports, a config,
the CLI in a subprocess (as a user runs it), and a cleanup that leaves no process behind."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time

from blobtier import runstate as state

SPAN = 20  # ports a test region may use from its base: gRPC from base, metrics from base + 10


def ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections: a service port at or above it
    can be taken by any connect() (a Redis node's to another, a test's) before it binds."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_base_port(span: int = SPAN, offsets: tuple[int, ...] = (0,)) -> int:
    """A base port with ``span`` free ports from it, and from each of ``offsets`` above it
    (10000: Redis cluster buses), all below the ephemeral range (checked by binding each)."""
    top = ephemeral_low() - max(offsets) - span
    for _ in range(200):
        base = random.randrange(10000, top)
        try:
            for port in (base + off + i for off in offsets for i in range(span)):
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range")


def write_config(path, root, base: int, extra: str = "") -> str:
    """A small region: 3 chunk servers, 1 flash node, a daemon, 64 KiB chunks."""
    path.write_text(f'''root = "{root}"
[block]
servers = 3
[client]
chunk_size = "64KiB"
[services]
base_port = {base}
metrics_base_port = {base + 10}
flash_capacity_bytes = "32MiB"
flash_region_bytes = "2MiB"
daemon_memory_bytes = "16MiB"
start_timeout_s = 60
stop_timeout_s = 20
{extra}''')
    return str(path)


def blobtier(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the CLI as its own process (``up`` must leave its services running after it exits)."""
    return subprocess.run([sys.executable, "-m", "blobtier.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def kill_leftovers(root: str) -> None:
    """Whatever a failed test left running under ``root`` is killed."""
    try:
        st = state.read(root)
    except OSError:
        return
    if st is None:
        return
    for s in st.services:
        if state.pid_alive(s.pid):
            os.kill(s.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(state.pid_alive(s.pid) for s in st.services) and time.monotonic() < deadline:
        time.sleep(0.05)
    state.remove(root)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def processes_under(root: str) -> list[int]:
    """Live (not zombie) processes whose command line names ``root``: a service of that region."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if os.fsencode(root) in cmdline and state.pid_alive(int(name)):
            found.append(int(name))
    return found
