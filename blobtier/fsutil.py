"""Private files: what blobtier creates under a region is readable by its user alone.

Every directory it makes is 0700 and every file 0600, whatever the process's umask: the
mode is set again with chmod/fchmod after creation, because the one given to ``mkdir``
is masked by the umask (and ``os.makedirs`` gives parents 0777 & ~umask), so a umask of
000 would leave chunks, metadata and flash regions world-readable. What other code
creates inside (RocksDB's tables, a Unix socket) is private through its directory.

A directory that already exists keeps its mode (an operator may share it on purpose);
if other users may enter it, a warning names it, once per process.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from typing import IO

DIR_MODE, FILE_MODE = 0o700, 0o600
log = logging.getLogger(__name__)
_FLAGS = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
          "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL}
_warned: set[str] = set()
_warned_lock = threading.Lock()


def private_dir(path: str | os.PathLike, *, tighten: bool = False) -> str:
    """Create the directory ``path`` and its missing parents, each 0700; return ``path``.

    An existing ``path`` open to others is warned about, or with ``tighten`` (a directory
    only blobtier uses, such as the metadata) set to 0700.

    Raises:
        OSError: as ``os.makedirs`` (e.g. ``FileExistsError`` for a file in the way).
    """
    path = os.fspath(path)
    missing = []
    at = os.path.abspath(path)
    while not os.path.isdir(at):
        missing.append(at)
        parent = os.path.dirname(at)
        if parent == at:
            break
        at = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(d):
                raise
            continue  # made by a racing process, with its own mode
        os.chmod(d, DIR_MODE)  # mkdir's mode went through the umask
    if not missing:
        _check_existing(path, tighten)
    return path


def _check_existing(path: str, tighten: bool) -> None:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if not mode & 0o077:
        return
    if tighten:
        try:
            os.chmod(path, DIR_MODE)
            return
        except PermissionError:
            pass  # another user's directory: say so below
    with _warned_lock:
        if path in _warned:
            return
        _warned.add(path)
    log.warning("%s is open to other users (mode %03o): blobtier data under it may be readable "
                "by them; run `chmod -R go= %s` unless that is intended", path, mode, path)


def open_private(path: str | os.PathLike, flags: int) -> int:
    """``os.open`` for a file only this user may read: a file it creates (or an existing one
    of ours it opens with ``O_CREAT``) is 0600, and the descriptor is close-on-exec."""
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    if flags & os.O_CREAT:
        try:
            os.fchmod(fd, FILE_MODE)  # an older, wider file of ours is narrowed too
        except PermissionError:
            pass  # not ours: opened, not created
    return fd


def private_file(path: str | os.PathLike, mode: str = "wb") -> IO:
    """``open(path, mode)`` (``w``, ``a`` or ``x``, binary or text) through ``open_private``."""
    try:
        flags = _FLAGS[mode.replace("b", "").replace("t", "")]
    except KeyError:
        raise ValueError(f"private_file opens for writing only (w, a, x), not {mode!r}") from None
    fd = open_private(path, flags)
    try:
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise
