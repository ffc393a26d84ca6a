"""The host-local protocol between an arena's owner and reader processes (Unix socket).

One connection is one session: its pins and unfinished fills die with it. Frames are
little-endian binary, small and fixed per op, so a batch of 64 lookups costs one round
trip of about two kilobytes::

    request  op u8 | count u32 | body length u32 | body
    reply    status u8 | body length u32 | body      (status 0 ok, else body = message:
             1 a malformed frame, the connection is closed; 2 a request refused, the
             session goes on; 3 this process's user may not use this owner, closed)

    op  body                                   reply body
    1   INFO                                   json {"name", "size", "policy", "pid", and for
                                               a daemon with L2 peers "peer", "peers"}, after
                                               a 1-byte message carrying the segment's fd
    2   LOOKUP   count x digest 16s            count x (found u8, offset u64, length u32)
    9   PEEK     as LOOKUP, not counted as a use by the eviction policy (prefetch)
    3   RESERVE  count x (digest 16s, len u32) count x (status u8, offset u64)
                                               status 0 refused, 1 granted, 2 held or busy
    4   COMMIT   count x (digest 16s, len u32, count x 1 u8, or status 2 when a chunk was
                 algo u8, checksum u64)        not claimed by this session, is committed
                                               already, or its slot does not hold len bytes
                                               with that checksum (algo: checksum.py's id);
                                               the refused fill and the rest of the batch
                                               are then dropped
    10  STAGE    as COMMIT, for a prefetched chunk (not a use yet)
    13  DISCARD  count x digest 16s            count x held u8: forget chunks a reader
                                               found corrupt
    5   ABORT    count x digest 16s            -
    6   RELEASE  count x offset u64            no reply at all: a reader hands back pins
                                               without waiting (a round trip per batch of
                                               hits would halve the small-hit rate)
    7   ANNOUNCE job u64 | count x digest 16s  -
    8   STATS                                  json
    11  CLAIM    ns | as RESERVE's body        as RESERVE's; the chunks are filed under the
                                               namespace ns (its eviction policy rules them)
    12  ANNOUNCE_NS  ns | as ANNOUNCE's body   -, for the policy of namespace ns

    where ns is  length u8 | utf-8 bytes  (a namespace; RESERVE and ANNOUNCE mean ns "")

A malformed frame gets an error reply and the connection is closed; a well-formed request
the owner will not carry out (a COMMIT out of order) is refused and the session goes on;
either way the owner goes on serving everyone else. The owner verifies every fill a reader
commits (the slot holds the bytes of the chunk's checksum) before any reader can see it.

Only one user's processes (and root's) ever talk: the socket lives in a directory nobody
else can write, and each end checks the other's user id (``SO_PEERCRED``) before the first
request (``trust.py``); a reader of another user gets status 3 to its first request.
"""

from __future__ import annotations

import array
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Sequence

from blobtier import checksum, forks
from blobtier.cache_l1_l2.owner import GRANTED, MAX_NAMESPACE_BYTES, ArenaOwner, Place
from blobtier.cache_l1_l2.trust import check_owner, check_socket_dir, peer_uid, trusted_uid
from blobtier.errors import Forbidden, InvalidRequest, TierUnavailable, UntrustedPath

log = logging.getLogger(__name__)

INFO, LOOKUP, RESERVE, COMMIT, ABORT, RELEASE, ANNOUNCE, STATS, PEEK, STAGE = range(1, 11)
CLAIM, ANNOUNCE_NS, DISCARD = 11, 12, 13
OK, MALFORMED, REFUSED, FORBIDDEN = range(4)  # reply statuses
_REQ = struct.Struct("<BII")
_COMMIT = struct.Struct("<16sIBQ")
_REP = struct.Struct("<BI")
_PLACE = struct.Struct("<BQI")
_GRANT = struct.Struct("<BQ")
MAX_COUNT = 1 << 20
MAX_BODY = 64 << 20


class Refused(InvalidRequest):
    """A well-formed request the owner will not carry out; the session goes on."""


def _recv_fd(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One byte and the descriptor sent with it (SCM_RIGHTS), close-on-exec from the moment
    it arrives: ``socket.recv_fds`` drops its flags argument (Python 3.11), and setting the
    flag afterwards leaves a moment in which another thread's fork and exec inherits it."""
    fds = array.array("i")
    msg, ancdata, _, _ = sock.recvmsg(1, socket.CMSG_LEN(fds.itemsize), socket.MSG_CMSG_CLOEXEC)
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return msg, list(fds)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise ConnectionError("peer closed the connection")
        got += k
    return bytes(buf)


class OwnerServer:
    """Serves one ``ArenaOwner`` on a Unix socket, a thread per connection."""

    def __init__(self, owner: ArenaOwner, path: str) -> None:
        self.owner = owner
        self.path = path
        self.info: dict = {}  # more INFO fields (a daemon's L2 peers)
        check_socket_dir(os.path.dirname(path) or ".")  # before touching anything there
        if os.path.exists(path):
            os.unlink(path)  # a socket file left by a dead owner
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        os.chmod(path, 0o600)
        self._sock.listen(64)
        self._closed = self._forked = False
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="blobtier-l1-owner", daemon=True)
        self._thread.start()
        forks.register(self)

    def _after_fork_in_child(self) -> None:
        """Close the child's copies of the listening socket and of every session: a child
        holding them would keep a dead owner's readers waiting on sockets nobody answers.
        Closed, not shut down, and the socket file stays: they are the parent's."""
        self._closed = self._forked = True
        self._lock = threading.Lock()
        for sock in [self._sock, *self._conns]:
            sock.close()
        self._conns = set()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True,
                             name="blobtier-l1-session").start()

    def _admit(self, conn: socket.socket) -> bool:
        """Serve only processes of this owner's user, and root's; tell another why not."""
        uid = peer_uid(conn)
        if trusted_uid(uid):
            return True
        log.warning("refused an L1 session of a process of uid %d", uid)
        _send_error(conn, FORBIDDEN, f"it serves only processes of uid {os.geteuid()} (and root), "
                                     f"and this one runs as uid {uid}: run a daemon of your own "
                                     f"(blobtier daemon), or set cache.daemon to off")
        try:  # close once the request it answers is in: a reply sent before would be lost
            conn.settimeout(5.0)
            conn.recv(_REQ.size)
        except OSError:
            pass
        with self._lock:
            self._conns.discard(conn)
        conn.close()
        return False

    def _serve(self, conn: socket.socket) -> None:
        if not self._admit(conn):
            return
        session = self.owner.open_session()
        try:
            while True:
                op, count, size = _REQ.unpack(_recv_exact(conn, _REQ.size))
                if count > MAX_COUNT or size > MAX_BODY:
                    raise InvalidRequest(f"frame too large: {count} items, {size} bytes")
                body = _recv_exact(conn, size)
                try:
                    reply = self._handle(op, count, body, session)
                except Refused as exc:
                    log.warning("refused an L1 request: %s", exc)
                    _send_error(conn, REFUSED, exc)
                    continue
                if op == INFO:
                    socket.send_fds(conn, [b"S"], [self.owner.segment.fd])
                if op != RELEASE:
                    conn.sendall(_REP.pack(OK, len(reply)) + reply)
        except (ConnectionError, OSError):
            pass
        except (InvalidRequest, struct.error, ValueError) as exc:
            log.warning("closing an L1 session after a bad request: %s", exc)
            _send_error(conn, MALFORMED, exc)
        finally:
            self.owner.end_session(session)
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _handle(self, op: int, count: int, body: bytes, session: int) -> bytes:
        owner = self.owner
        if op == INFO:
            return json.dumps({"name": owner.segment.name, "size": owner.segment.size,
                               "policy": owner.policy_name, "pid": os.getpid(), **self.info}).encode()
        if op == STATS:
            return json.dumps(owner.stats()).encode()
        namespace = ""
        if op in (CLAIM, ANNOUNCE_NS):
            namespace, body = _namespace(body)
            op = RESERVE if op == CLAIM else ANNOUNCE
        if op == ANNOUNCE:
            (job,) = struct.unpack_from("<Q", body)
            owner.announce(_digests(body[8:], count), job, namespace)
            return b""
        if op in (LOOKUP, PEEK):
            places = owner.lookup(_digests(body, count), session, touch=op == LOOKUP)
            return b"".join(_PLACE.pack(1, *p) if p else _PLACE.pack(0, 0, 0) for p in places)
        if op == RESERVE:
            _expect(body, count * 20)
            out = []
            for i in range(count):
                digest, length = struct.unpack_from("<16sI", body, i * 20)
                status, offset = owner.claim(digest, length, session, namespace)
                out.append(_GRANT.pack(status, offset or 0))
            return b"".join(out)
        if op in (COMMIT, STAGE):
            return _commit(owner, session, _fills(body, count), accessed=op == COMMIT)
        if op == DISCARD:
            return bytes(owner.discard([d]) for d in _digests(body, count))
        if op == ABORT:
            for d in _digests(body, count):
                owner.abort(d, session)
            return b""
        if op == RELEASE:
            _expect(body, count * 8)
            owner.release(struct.unpack(f"<{count}Q", body), session)
            return b""
        raise InvalidRequest(f"unknown op {op}")

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._forked:
            return  # the socket file is the parent's
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _send_error(conn: socket.socket, status: int, why: object) -> None:
    msg = str(why).encode()[:1000]
    try:
        conn.sendall(_REP.pack(status, len(msg)) + msg)
    except OSError:
        pass


def _expect(body: bytes, n: int) -> None:
    if len(body) != n:
        raise InvalidRequest(f"body of {len(body)} bytes where {n} were expected")


def _namespace(body: bytes) -> tuple[str, bytes]:
    """(namespace, the rest of the body) of a CLAIM or ANNOUNCE_NS body."""
    if not body or len(body) < 1 + body[0]:
        raise InvalidRequest("a namespaced op without its namespace")
    try:
        return body[1:1 + body[0]].decode(), body[1 + body[0]:]
    except UnicodeDecodeError:
        raise InvalidRequest("a namespace that is not UTF-8") from None


def _ns_prefix(namespace: str) -> bytes:
    raw = namespace.encode()
    if len(raw) > MAX_NAMESPACE_BYTES:
        raise InvalidRequest(f"namespace {namespace[:40]!r}... is longer than {MAX_NAMESPACE_BYTES} bytes")
    return bytes((len(raw),)) + raw


def _fills(body: bytes, count: int) -> list[tuple[bytes, int, int, int]]:
    _expect(body, count * _COMMIT.size)
    return list(_COMMIT.iter_unpack(body))


def _commit(owner: ArenaOwner, session: int, fills: list[tuple[bytes, int, int, int]],
            accessed: bool) -> bytes:
    """Commit ``fills`` in order; at the first refused, drop the rest of the batch."""
    for i, (digest, length, algo_id, expected) in enumerate(fills):
        try:
            algo = checksum.BY_ID.get(algo_id)
            if algo is None:
                raise InvalidRequest(f"commit refused: unknown checksum id {algo_id}")
            owner.commit_written(digest, session, length, algo, expected, accessed)
        except InvalidRequest as exc:
            for later, *_ in fills[i:]:
                owner.abort(later, session)
            raise Refused(str(exc)) from None
    return b"\x01" * len(fills)


def _digests(body: bytes, count: int) -> list[bytes]:
    _expect(body, count * 16)
    return [body[i:i + 16] for i in range(0, 16 * count, 16)]


class OwnerClient:
    """A reader's connection to an owner. Thread-safe; every failure is TierUnavailable."""

    def __init__(self, path: str, timeout_s: float = 30.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self.generation = 0  # counts connections: places are only valid on their own
        self._lock = threading.Lock()
        forks.register(self)

    def _after_fork_in_child(self) -> None:
        # The parent's session is not the child's: closing the copy (never shutting it
        # down) leaves it to the parent, and the next call here connects a session of its own.
        self._lock = threading.Lock()
        self._drop()

    def _call(self, op: int, count: int, body: bytes, generation: int | None = None) -> bytes:
        return self._call_fd(op, count, body, generation)[0]

    def _call_fd(self, op: int, count: int, body: bytes, generation: int | None = None,
                 wait: bool = True) -> tuple[bytes, int, int] | None:
        """(reply, fd, connection generation). With ``generation``, refuse to send on any
        other connection (a reconnect reaches what may be another owner, whose places mean
        nothing in the caller's segment). ``wait=False``: None if the connection is busy."""
        if not self._lock.acquire(blocking=wait):
            return None
        fd = -1
        try:
            if generation is not None and (self._sock is None or generation != self.generation):
                raise TierUnavailable(f"L1 owner at {self.path}: the connection changed; attach again")
            try:
                if self._sock is None:
                    self._sock = self._connect()
                    self.generation += 1
                self._sock.sendall(_REQ.pack(op, count, len(body)) + body)
                if op == RELEASE:  # answered by nothing; a bad one shows on the next call
                    return b"", fd, self.generation
                head = b""
                if op == INFO:
                    first, fds = _recv_fd(self._sock)
                    fd = fds[0] if fds else -1
                    if first != b"S":  # no segment: the reply that follows says why
                        head = first
                status, size = _REP.unpack(head + _recv_exact(self._sock, _REP.size - len(head)))
                reply = _recv_exact(self._sock, size)
            except UntrustedPath:
                self._drop()
                raise
            except OSError as exc:
                self._drop()
                if fd >= 0:
                    os.close(fd)
                raise TierUnavailable(f"L1 owner at {self.path}: {exc}") from exc
            if status != OK:
                if fd >= 0:
                    os.close(fd)
                self._fail(status, reply.decode(errors="replace"))
            return reply, fd, self.generation
        finally:
            self._lock.release()

    def _connect(self) -> socket.socket:
        """A connection to the owner, only in a directory and to a process this user can
        trust (``trust.py``); ``UntrustedPath`` otherwise."""
        check_socket_dir(os.path.dirname(self.path) or ".")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout_s)
            sock.connect(self.path)
            check_owner(sock, self.path)
        except BaseException:
            sock.close()
            raise
        return sock

    def _fail(self, status: int, message: str) -> None:
        if status == REFUSED:  # the session goes on
            raise Refused(f"L1 owner at {self.path}: {message}")
        self._drop()
        if status == FORBIDDEN:
            raise Forbidden(f"L1 owner at {self.path} refused this process: {message}")
        raise TierUnavailable(f"L1 owner at {self.path} refused a request: {message}")

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def info(self) -> tuple[dict, int]:
        """The owner's description and a descriptor of its segment (the caller owns it)."""
        return self.info_of_connection()[:2]

    def info_of_connection(self) -> tuple[dict, int, int]:
        """``info``, and the generation of the connection it came over."""
        reply, fd, generation = self._call_fd(INFO, 0, b"")
        if fd < 0:
            raise TierUnavailable(f"L1 owner at {self.path} sent no segment")
        return json.loads(reply), fd, generation

    def stats(self) -> dict:
        return json.loads(self._call(STATS, 0, b""))

    def lookup(self, digests: Sequence[bytes], touch: bool = True,
               generation: int | None = None) -> list[Place | None]:
        reply = self._call(LOOKUP if touch else PEEK, len(digests), b"".join(digests), generation)
        out: list[Place | None] = []
        for found, offset, length in _PLACE.iter_unpack(reply):
            out.append((offset, length) if found else None)
        return out

    def claim(self, items: Sequence[tuple[bytes, int]], namespace: str = "",
              generation: int | None = None) -> list[tuple[int, int | None]]:
        """(status, slot) per (digest, length), filed under ``namespace``: see
        ``ArenaOwner.claim``."""
        body = b"".join(struct.pack("<16sI", d, n) for d, n in items)
        op = RESERVE
        if namespace:
            op, body = CLAIM, _ns_prefix(namespace) + body
        return [(status, off if status == GRANTED else None)
                for status, off in _GRANT.iter_unpack(self._call(op, len(items), body, generation))]

    def reserve(self, items: Sequence[tuple[bytes, int]]) -> list[int | None]:
        return [off for _, off in self.claim(items)]

    def commit(self, fills: Sequence[tuple[bytes, int, str, int]], accessed: bool = True,
               generation: int | None = None) -> None:
        """Publish filled slots, each as (digest, length, checksum algorithm, checksum of
        the bytes written): the owner checks each slot holds them. Raises ``Refused`` if
        one was not this session's claim or does not hold its bytes (that fill and the
        rest of the batch are dropped; those before it are committed)."""
        body = b"".join(_COMMIT.pack(d, n, checksum.algorithm_id(algo), value)
                        for d, n, algo, value in fills)
        self._call(COMMIT if accessed else STAGE, len(fills), body, generation)

    def discard(self, digests: Sequence[bytes]) -> list[bool]:
        """Have the owner forget chunks found corrupt; whether each was held."""
        return [bool(b) for b in self._call(DISCARD, len(digests), b"".join(digests))]

    def abort(self, digests: Sequence[bytes], generation: int | None = None) -> None:
        self._call(ABORT, len(digests), b"".join(digests), generation)

    def release(self, offsets: Sequence[int], wait: bool = True, generation: int | None = None) -> bool:
        """Hand back pins; ``wait=False`` sends nothing (False) if the connection is busy."""
        body = struct.pack(f"<{len(offsets)}Q", *offsets)
        return self._call_fd(RELEASE, len(offsets), body, generation, wait=wait) is not None

    def announce(self, digests: Sequence[bytes], job: int = 0, namespace: str = "") -> None:
        body = struct.pack("<Q", job) + b"".join(digests)
        if namespace:
            self._call(ANNOUNCE_NS, len(digests), _ns_prefix(namespace) + body)
        else:
            self._call(ANNOUNCE, len(digests), body)

    def close(self) -> None:
        with self._lock:
            self._drop()
