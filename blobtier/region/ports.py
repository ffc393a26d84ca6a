"""Which process is listening on a TCP port (Linux ``/proc``), so ``down`` can stop a
service the state file does not name but that still holds one of the region's ports."""

from __future__ import annotations

import os

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp{,6}


def listening_inodes(ports: set[int]) -> dict[int, int]:
    """Socket inode -> port, for the listening TCP sockets (IPv4 and IPv6) on ``ports``."""
    out: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 10 or cols[3] != _LISTEN:
                continue
            port = int(cols[1].rsplit(":", 1)[1], 16)
            if port in ports:
                out[int(cols[9])] = port
    return out


def holders(ports: set[int]) -> dict[int, int]:
    """Port -> pid of a process of this user listening on it (others' are not visible)."""
    inodes = listening_inodes(ports)
    found: dict[int, int] = {}
    if not inodes:
        return found
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fd_dir = f"/proc/{name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or another user's
            continue
        for fd in fds:
            try:
                link = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                found.setdefault(inodes[int(link[8:-1])], int(name))
    return found
