"""Whom an arena's Unix socket may be trusted with: its directory, and the process across it.

A socket is only as private as the directory it lives in. Whoever can write that directory,
or rename it through a directory above, can put a socket of their own in its place; a
reader that attached there would write the chunks it fills into a stranger's arena and read
whatever bytes the stranger serves. So the socket's directory must be owned by this user or
root and writable by nobody else, and every directory above it owned by this user or root
and, if others may write it, sticky (as ``/tmp`` is: nobody can then rename what is not
theirs). An owner refuses to bind a socket anywhere else, and a reader to connect.

Then each side checks the process at the other end of the connection (``SO_PEERCRED``, set
by the kernel): a reader attaches only to an owner running as its own user or root, and an
owner serves only readers of its own user (or root). Both checks use effective user ids.
"""

from __future__ import annotations

import os
import socket
import stat
import struct

from blobtier.errors import UntrustedPath

_UCRED = struct.Struct("3i")  # pid, uid, gid


def trusted_uid(uid: int) -> bool:
    """This process's own user, or root (who could read our memory anyway)."""
    return uid in (os.geteuid(), 0)


def check_socket_dir(directory: str) -> None:
    """Raise ``UntrustedPath`` naming the path and the fix unless ``directory`` (as given
    and as its symlinks resolve) may hold this user's arena sockets (module docstring).

    A directory that does not exist raises ``FileNotFoundError``.
    """
    given = os.path.abspath(directory)
    real = os.path.realpath(given)
    st = os.stat(real)
    if not stat.S_ISDIR(st.st_mode):
        raise UntrustedPath(f"socket directory {given} is not a directory")
    if not trusted_uid(st.st_uid):
        raise UntrustedPath(
            f"socket directory {given} is owned by uid {st.st_uid}, not by this user (uid "
            f"{os.geteuid()}) or root: another user could serve their own socket there. Put "
            f"the daemon's socket in a directory you own (cache.daemon, or blobtier daemon "
            f"--socket), or remove {given} if it should be yours")
    if st.st_mode & 0o022:
        fix = ("put the socket in a directory of your own inside it (mkdir -m 700 DIR)"
               if st.st_mode & stat.S_ISVTX else
               f"chmod 700 {given}, or put the socket in a directory only you can write")
        raise UntrustedPath(
            f"socket directory {given} is writable by {_who(st.st_mode)} (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): another user could replace the daemon's socket. "
            f"Fix: {fix}")
    for parent in sorted(_parents(given) | _parents(real), key=len):
        _check_parent(parent, given)


def _check_parent(parent: str, directory: str) -> None:
    st = os.stat(parent)
    if trusted_uid(st.st_uid) and (not st.st_mode & 0o022 or st.st_mode & stat.S_ISVTX):
        return
    why = (f"is owned by uid {st.st_uid}" if not trusted_uid(st.st_uid) else
           f"is writable by {_who(st.st_mode)} and not sticky (mode {stat.S_IMODE(st.st_mode):04o})")
    raise UntrustedPath(
        f"socket directory {directory} lies under {parent}, which {why}: another user could "
        f"put a directory of their own in its place. Put the socket in a directory whose "
        f"parents are all yours or root's and not writable by others (or are sticky, as /tmp)")


def _parents(path: str) -> set[str]:
    out = set()
    while True:
        up = os.path.dirname(path)
        if up == path:
            return out
        out.add(up)
        path = up


def _who(mode: int) -> str:
    return " and ".join(w for w, bit in (("its group", 0o020), ("others", 0o002)) if mode & bit)


def peer_uid(sock: socket.socket) -> int:
    """The effective user id of the process at the other end of a Unix socket."""
    _, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return uid


def check_owner(sock: socket.socket, path: str) -> None:
    """Raise ``UntrustedPath`` unless the process serving ``path`` is this user's or root's."""
    uid = peer_uid(sock)
    if not trusted_uid(uid):
        raise UntrustedPath(
            f"the process serving {path} runs as uid {uid}, not as this user (uid "
            f"{os.geteuid()}) or root: not attaching to it. Run a daemon of your own, or set "
            f"cache.daemon to its socket")
