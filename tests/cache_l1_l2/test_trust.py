"""Arena sockets are trusted only in this user's own directories, and only between
processes of one user (or root): another local user can neither serve a reader's chunks
nor read them (``trust.py``)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import tempfile

import pytest

import blobtier
from blobtier.cache_l1_l2 import l1 as l1_mod
from blobtier.cache_l1_l2.daemon import HostDaemon, daemon_info
from blobtier.cache_l1_l2.owner import ArenaOwner
from blobtier.cache_l1_l2.trust import check_socket_dir
from blobtier.cache_l1_l2.wire import OwnerClient, OwnerServer
from blobtier.errors import Forbidden, UntrustedPath

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="making another user's directory needs root")


@pytest.fixture
def top():
    """A short directory of this user's (sun_path is 108 bytes), 0700."""
    path = tempfile.mkdtemp(prefix="bt-trust-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_dir(path: str, mode: int, uid: int | None = None) -> str:
    os.mkdir(path)
    os.chmod(path, mode)  # whatever the umask
    if uid is not None:
        os.chown(path, uid, uid)
    return path


def assert_client_refuses(region: str, sock: str, match: str) -> None:
    """A client told to use ``sock`` refuses, and never even connects to it."""
    fake = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a stranger's own "daemon"
    fake.bind(sock)
    fake.listen(4)
    fake.setblocking(False)
    try:
        with pytest.raises(UntrustedPath, match=match):
            blobtier.connect(region, cache={"daemon": sock})
        with pytest.raises(BlockingIOError):
            fake.accept()
    finally:
        fake.close()
        os.unlink(sock)


# -- directories ------------------------------------------------------------------------------
@needs_root
def test_a_directory_another_user_made_first_is_refused_by_daemon_and_client(top, region):
    squat = make_dir(os.path.join(top, "run"), 0o777, uid=NOBODY)  # "pre-created by nobody"
    sock = os.path.join(squat, "daemon.sock")
    with pytest.raises(UntrustedPath) as refused:
        HostDaemon(4 << 20, socket_path=sock)
    assert squat in str(refused.value) and "owned by uid 65534" in str(refused.value)
    assert "directory you own" in str(refused.value)  # the fix
    assert os.listdir(squat) == []  # the daemon made nothing there
    assert_client_refuses(region, sock, f"{squat} is owned by uid 65534")


def test_a_directory_of_ours_that_others_may_write_is_refused(top, region):
    loose = make_dir(os.path.join(top, "run"), 0o777)
    sock = os.path.join(loose, "daemon.sock")
    with pytest.raises(UntrustedPath, match=f"chmod 700 {loose}"):
        HostDaemon(4 << 20, socket_path=sock)
    owner = ArenaOwner(1 << 20)
    with pytest.raises(UntrustedPath, match="writable by its group and others"):
        OwnerServer(owner, sock)
    owner.close()
    assert_client_refuses(region, sock, f"chmod 700 {loose}")
    os.chmod(loose, 0o700)  # the fix the message names
    daemon = HostDaemon(4 << 20, socket_path=sock)
    try:
        with blobtier.connect(region, cache={"daemon": sock}) as c:
            assert c._arena is None and c.tiers[0] == "l1"  # attached to the daemon
    finally:
        daemon.stop()


def test_a_shared_sticky_directory_is_refused_with_advice_that_fits_it(top):
    shared = make_dir(os.path.join(top, "tmp"), 0o1777)  # as /tmp
    with pytest.raises(UntrustedPath, match="mode 1777.*mkdir -m 700"):
        check_socket_dir(shared)


def test_a_parent_others_may_write_is_refused_unless_sticky(top):
    parent = make_dir(os.path.join(top, "open"), 0o777)
    run = make_dir(os.path.join(parent, "run"), 0o700)
    with pytest.raises(UntrustedPath, match=f"under {parent}, which is writable by its group and others"):
        check_socket_dir(run)
    os.chmod(parent, 0o1777)  # sticky: nobody else can rename run away
    check_socket_dir(run)


def test_a_symlink_is_judged_by_where_it_leads(top):
    loose = make_dir(os.path.join(top, "loose"), 0o777)
    link = os.path.join(top, "run")
    os.symlink(loose, link)
    with pytest.raises(UntrustedPath, match="writable by"):
        check_socket_dir(link)


@needs_root
def test_a_parent_of_another_user_is_refused(top):
    theirs = make_dir(os.path.join(top, "theirs"), 0o755, uid=NOBODY)
    run = make_dir(os.path.join(theirs, "run"), 0o700)
    with pytest.raises(UntrustedPath, match=f"under {theirs}, which is owned by uid 65534"):
        check_socket_dir(run)


@needs_root
def test_a_squatted_well_known_directory_means_no_daemon_not_a_failed_client(top, region, monkeypatch,
                                                                             caplog):
    monkeypatch.setattr(tempfile, "tempdir", top)
    squat = make_dir(os.path.join(top, f"blobtier-{os.getuid()}"), 0o777, uid=NOBODY)
    with pytest.raises(UntrustedPath):
        l1_mod.socket_dir()
    with caplog.at_level(logging.WARNING):
        assert daemon_info("auto") is None
    assert "owned by uid 65534" in caplog.text
    with blobtier.connect(region) as c:  # cache.daemon = auto: an arena of its own
        assert c._arena is not None
        c.put("ns/k", b"x" * 1000)
        assert bytes(c.get("ns/k")) == b"x" * 1000
        assert os.path.dirname(c._arena.socket_path) != squat  # a directory of its own


# -- the process at the other end ------------------------------------------------------------------
def run_as_nobody(child) -> int:
    """Fork; the child drops to uid nobody, runs ``child()`` and exits with its result."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = child()
        finally:
            os._exit(code)
    return pid


@needs_root
def test_a_reader_never_attaches_to_an_owner_of_another_user(top):
    sock = os.path.join(top, "d.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock)  # in our directory; the process listening there becomes nobody's
    r, w = os.pipe()

    def fake_daemon() -> int:
        s.listen(4)  # the peer credentials a reader sees are those of listen()
        os.write(w, b"1")
        conn, _ = s.accept()
        conn.recv(100)
        return 0

    pid = run_as_nobody(fake_daemon)
    s.close()
    try:
        assert os.read(r, 1) == b"1"
        with pytest.raises(UntrustedPath, match=f"serving {sock} runs as uid 65534"):
            OwnerClient(sock).stats()
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)


@needs_root
def test_an_owner_serves_no_process_of_another_user(top):
    os.chmod(top, 0o711)  # nobody may pass through to the socket ...
    owner = ArenaOwner(1 << 20)
    server = OwnerServer(owner, os.path.join(top, "d.sock"))
    os.chmod(server.path, 0o666)  # ... and connect to it: only its uid stops it now
    r, w = os.pipe()

    def reader() -> int:
        try:
            OwnerClient(server.path).info()
        except Forbidden as exc:
            os.write(w, str(exc).encode())
            return 0
        return 1

    try:
        pid = run_as_nobody(reader)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        message = os.read(r, 1000).decode()
        assert "serves only processes of uid 0" in message and "runs as uid 65534" in message
        own = OwnerClient(server.path)  # held: a dropped client's session may end any moment
        assert own.stats()["chunks"] == 0  # and goes on serving its own
        assert len(owner._session_pins) == 1  # the refused process never had a session
        own.close()
    finally:
        server.close()
        owner.close()
        os.close(r)
        os.close(w)


def test_sockets_live_in_directories_that_pass(top, region):
    with blobtier.connect(region, cache={"daemon": "off"}) as c:
        check_socket_dir(os.path.dirname(c._arena.socket_path))
        assert stat.S_IMODE(os.stat(os.path.dirname(c._arena.socket_path)).st_mode) == 0o700
    check_socket_dir(l1_mod.socket_dir())
