"""``SharedL1Cache``: the L1 tier as a reader of an arena (in this process or another).

A hit is a lookup at the owner (a method call in the owning process, one Unix-socket
round trip per batch elsewhere) and a view of the reader's own mapping of the segment:
no copy. A view holds the reader's mapping (an export of the mmap), so it stays
readable whatever happens to the owner or the cache. Each view pins its slot; when the
last reference to a view goes, the pin is queued (never under a lock: that can happen in
the middle of any call) and handed back with the next request, so releases cost no
round trip of their own. A miss is filled by whoever read the chunk from below. The
chain ``claim``s the slots of its misses before it reads below: a chunk another process
is already fetching comes back ``busy``, and a lookup of it waits for that fill instead
of fetching it a second time (one origin read per chunk per host). The claimed slots are
filled by ``put`` and committed. A claim (or a ``put`` that claims) may name the chunk's
namespace, whose eviction policy then rules it (``owner.py``); without one it falls to
the owner's default policy.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import tempfile
import threading
import weakref
from collections.abc import Mapping, Sequence

from blobtier import checksum as checksums
from blobtier import forks
from blobtier.cache_l1_l2.arena import Segment
from blobtier.cache_l1_l2.owner import BUSY, GRANTED, ArenaOwner
from blobtier.cache_l1_l2.trust import check_socket_dir
from blobtier.cache_l1_l2.wire import OwnerClient, OwnerServer, Refused
from blobtier.chunks import Buffer, ChunkKey
from blobtier.errors import InvalidRequest, TierUnavailable

log = logging.getLogger(__name__)
VERIFY_RATES = {"off": 0.0, "sampled": 1 / 64, "always": 1.0}  # cache.verify_l1 -> share of hits
_FLUSH_RELEASES = 512  # queued releases that force a round trip of their own

Claim = tuple[ChunkKey, int] | tuple[ChunkKey, int, str]
"""(key, size) of a chunk to claim, or (key, size, namespace) to file it under the
namespace of its blob's key (``owner.namespace_of``), whose eviction policy then rules it."""


class _Pin:
    """Lives exactly as long as the views of one slot handed to the caller."""

    __slots__ = ("cache", "offset", "generation", "segment")

    def __init__(self, cache: SharedL1Cache, offset: int, generation: int | None,
                 segment: Segment) -> None:
        self.cache = cache
        self.offset = offset
        self.generation = generation  # the owner connection (session) that pinned it
        self.segment = segment

    def private_pages(self, start: int, length: int) -> memoryview | None:
        """The slot's bytes from ``start`` on copy-on-write pages of their own (``pages.py``):
        the mapping holds this pin, as its unwritten pages show the slot."""
        return self.segment.map_private(self.offset + start, length, self)

    def __del__(self) -> None:
        # A finaliser runs wherever the last reference goes, even inside this cache's or
        # the owner's own calls with their locks held: so it only queues the release.
        self.cache._released(self.offset, self.generation)


class SharedL1Cache:
    """A ``ChunkCache`` over an arena; also a ``ClaimingCache``, ``RecordedFills``,
    ``ReportsCorrupt`` and ``SampledVerify`` (``blobtier.chunks``).

    Args:
        owner: the ``ArenaOwner`` when this process owns the arena, or
        socket_path: the owner's Unix socket when another process does.
        verify: how many hits the read path checks against their record
            (``cache.verify_l1``): ``off``, ``sampled`` (1 in 64) or ``always``.
    """

    name = "l1"
    trusted = True  # but the chain samples its hits (``verify_rate``: chunks.SampledVerify)

    def __init__(self, owner: ArenaOwner | None = None, socket_path: str | None = None,
                 verify: str = "sampled") -> None:
        if (owner is None) == (socket_path is None):
            raise ValueError("give exactly one of owner and socket_path")
        if verify not in VERIFY_RATES:
            raise InvalidRequest(f"verify_l1 {verify!r}: choose one of {', '.join(VERIFY_RATES)}")
        # Bytes in memory can still change after their fill was checked (a stray write
        # through a reader's writable mapping, a bit flip): the chain checks this share
        # of hits against their record (chunks.py).
        self.verify_rate = VERIFY_RATES[verify]
        self._owner = owner
        self._client = OwnerClient(socket_path) if socket_path else None
        self._session = owner.open_session() if owner else 0
        self._segment: Segment | None = owner.segment if owner else None
        self._generation: int | None = None  # the owner connection the segment came from
        # Releases to send, as (connection generation, offset): a pin belongs to the
        # session of its connection, and must never unpin a slot of a later session.
        self._pending: collections.deque[tuple[int | None, int]] = collections.deque()
        self._claims: dict[ChunkKey, tuple[int, int | None]] = {}  # unfilled: (slot, generation)
        self._lock = threading.Lock()
        self._attach_lock = threading.Lock()
        forks.register(self)

    def _after_fork_in_child(self) -> None:
        # The parent's claims are its session's, never filled here; its threads may have
        # held the locks. (Its owner refuses a forked copy; its connection is dropped.)
        self._lock = threading.Lock()
        self._attach_lock = threading.Lock()
        self._claims = {}
        self._pending.clear()

    # -- the owner, near or far ------------------------------------------------------------
    def _attach(self) -> tuple[Segment, int | None]:
        """Map the owner's segment (again, if the owner restarted with a new one).

        Returns it with the connection it belongs to: places from another connection
        (another owner, reached by a reconnect) must not be read in this segment.
        """
        if self._client is None:
            if self._segment.fd < 0:
                raise TierUnavailable(f"L1 arena {self._segment.name} is closed")
            return self._segment, None
        with self._attach_lock:
            if (self._segment is None or not self._client.connected
                    or self._client.generation != self._generation):
                info, fd, generation = self._client.info_of_connection()
                if self._segment is None or self._segment.name != info["name"]:
                    old, self._segment = self._segment, Segment.from_fd(fd, info["name"])
                    if old is not None:
                        old.close()  # unmapped once the last view of it is gone
                else:
                    os.close(fd)
                self._generation = generation
            return self._segment, self._generation

    def _lookup(self, digests: list[bytes], touch: bool, generation: int | None) -> list:
        if self._owner is not None:
            return self._owner.lookup(digests, self._session, touch=touch)
        self._flush_releases()
        return self._client.lookup(digests, touch, generation=generation)

    def _flush_releases(self, wait: bool = True) -> None:
        """Send the queued releases of the current connection; ``wait=False`` (from a
        finaliser) gives up at once if the connection is busy, leaving them queued for
        the next request. Never raises: the pins of a connection that is gone went with
        its session, so its releases are dropped."""
        current = self._client.generation if self._client.connected else None
        offsets = []
        while self._pending:
            try:
                generation, offset = self._pending.popleft()
            except IndexError:
                break
            if generation == current:
                offsets.append(offset)
        if not offsets:
            return
        try:
            sent = self._client.release(offsets, wait=wait, generation=current)
        except TierUnavailable:
            return  # the session is gone, and its pins with it
        if not sent:
            self._pending.extend((current, o) for o in offsets)

    def _released(self, offset: int, generation: int | None) -> None:
        if self._owner is not None:
            self._owner.release_later((offset,), self._session)
            return
        self._pending.append((generation, offset))
        if len(self._pending) >= _FLUSH_RELEASES:
            self._flush_releases(wait=False)

    # -- ChunkCache --------------------------------------------------------------------------
    def get_many(self, keys: Sequence[ChunkKey], touch: bool = True) -> dict[ChunkKey, memoryview]:
        """``touch=False``: a prefetcher's look, not a use the eviction policy should count."""
        segment, generation = self._attach()
        places = self._lookup([k.digest() for k in keys], touch, generation)
        found = {}
        for key, place in zip(keys, places):
            if place is not None:
                found[key] = self._view(segment, place[0], place[1], generation)
        return found

    def _view(self, segment: Segment, offset: int, length: int, generation: int | None) -> memoryview:
        # from_buffer holds an export of the mapping: it stays mapped while the view lives,
        # whatever happens to the segment or the owner (no copy is made).
        try:
            array = (ctypes.c_char * length).from_buffer(segment.buffer, offset)
        except ValueError as exc:  # another thread closed it: the owner restarted
            raise TierUnavailable(f"L1 arena {segment.name} was replaced: {exc}") from None
        # The view keeps the array alive, the array the pin.
        array.pin = _Pin(self, offset, generation, segment)
        array.private_pages = array.pin.private_pages  # a writable alias never writes the arena
        return memoryview(array).cast("B").toreadonly()

    def claim(self, items: Sequence[Claim]) -> tuple[set[ChunkKey], set[ChunkKey]]:
        """Claim the slots of chunks about to be read from below: (claimed, busy).
        An item may name its chunk's namespace (``Claim``)."""
        _, generation = self._attach()
        wanted = [(item[0], item[1], item[2] if len(item) > 2 else "") for item in items if item[1] > 0]
        if self._owner is not None:
            answers = [self._owner.claim(k.digest(), n, self._session, ns) for k, n, ns in wanted]
        else:
            by_ns: dict[str, list[int]] = {}
            for i, (_, _, ns) in enumerate(wanted):
                by_ns.setdefault(ns, []).append(i)
            answers = [(0, None)] * len(wanted)
            for ns, where in by_ns.items():
                got = self._client.claim([(wanted[i][0].digest(), wanted[i][1]) for i in where],
                                         namespace=ns, generation=generation)
                for i, answer in zip(where, got):
                    answers[i] = answer
        claimed, busy = set(), set()
        with self._lock:
            for (key, _, _), (status, offset) in zip(wanted, answers):
                if status == GRANTED:
                    self._claims[key] = (offset, generation)
                    claimed.add(key)
                elif status == BUSY:
                    busy.add(key)
        return claimed, busy

    def unclaim(self, keys: Sequence[ChunkKey]) -> None:
        """Give back claims that will not be filled (the read below failed). Never raises
        for an owner that is gone: its claims ended with the session that held them."""
        by_generation: dict[int | None, list[bytes]] = {}
        with self._lock:
            for key in keys:
                claim = self._claims.pop(key, None)
                if claim is not None:
                    by_generation.setdefault(claim[1], []).append(key.digest())
        for generation, digests in by_generation.items():
            try:
                self._abort(digests, generation)
            except TierUnavailable as exc:
                log.debug("L1 claims not given back: %s", exc)

    def put(self, key: ChunkKey, data: Buffer, touch: bool = True, namespace: str = "",
            checksum: tuple[str, int] | None = None) -> bool:
        """``fill`` (``ChunkCache.put``, with its options)."""
        return self.fill(key, data, touch=touch, namespace=namespace, checksum=checksum)

    def fill(self, key: ChunkKey, data: Buffer, *, touch: bool = True, namespace: str = "",
             checksum: tuple[str, int] | None = None) -> bool:
        """Fill ``key`` (claimed before, or claimed now under ``namespace``); True if it
        is cached now (or was already, or another reader is filling it).

        ``checksum``: (algorithm, value) of ``data`` from the chunk's record. An owner in
        another process checks the slot holds exactly these bytes before it publishes
        them (without it, an xxh3 of ``data`` is taken here); a fill it refuses is
        dropped, with a warning, and the chunk is simply not cached.
        """
        size = len(data)
        with self._lock:
            claim = self._claims.pop(key, None)
        if claim is None:
            if not size:
                return False
            claimed, busy = self.claim([(key, size, namespace)])
            if not claimed:
                return key in busy  # held already, or being filled by another reader
            with self._lock:
                claim = self._claims.pop(key)
        offset, generation = claim
        digest = key.digest()
        segment, attached = self._attach()
        if attached != generation:
            return False  # claimed from an owner that is gone: its slot is not in this segment
        try:
            segment.view[offset:offset + size] = data
        except ValueError as exc:  # another thread closed it: the owner restarted
            raise TierUnavailable(f"L1 arena {segment.name} was replaced: {exc}") from None
        except BaseException:
            self._abort([digest], generation)
            raise
        if self._owner is not None:  # written by this very call: nothing to check
            return self._owner.commit(digest, self._session, accessed=touch)
        algo, value = checksum or ("xxh3", checksums.xxh3(data))
        try:
            self._client.commit([(digest, size, algo, value)], accessed=touch, generation=generation)
        except Refused as exc:
            log.warning("L1 fill of chunk %s not cached: %s", key, exc)
            return False
        return True

    def report_corrupt(self, keys: Sequence[ChunkKey]) -> None:
        """These chunks failed their checksum on a hit: the owner forgets them (a slot
        still pinned is reused once released). An owner that is gone took them along."""
        digests = [k.digest() for k in keys]
        if self._owner is not None:
            self._owner.discard(digests)
            return
        try:
            self._client.discard(digests)
        except TierUnavailable as exc:
            log.debug("L1 not told of corrupt chunks: %s", exc)

    def _abort(self, digests: list[bytes], generation: int | None) -> None:
        if self._owner is not None:
            for digest in digests:
                self._owner.abort(digest, self._session)
        else:
            self._client.abort(digests, generation=generation)

    def contains(self, key: ChunkKey) -> bool:
        if self._owner is not None:
            return self._owner.contains(key.digest())
        found = self.get_many([key])
        return bool(found)

    def announce(self, keys: Sequence[ChunkKey], job: int = 0, namespace: str = "") -> None:
        """Tell the policy of ``namespace`` the order in which ``job`` will read ``keys``."""
        digests = [k.digest() for k in keys]
        if self._owner is not None:
            self._owner.announce(digests, job, namespace)
            return
        try:
            self._client.announce(digests, job, namespace)
        except TierUnavailable as exc:  # a hint: an owner that is down needs none
            log.debug("L1 announcement not delivered: %s", exc)

    def stats(self) -> dict:
        return self._owner.stats() if self._owner is not None else self._client.stats()

    def close(self) -> None:
        if self._client is not None:
            try:
                self._flush_releases()
            except TierUnavailable:
                pass
            self._client.close()
        elif self._owner is not None:
            self._owner.end_session(self._session, grace_s=0)


def socket_dir() -> str:
    """This user's directory for well-known sockets, ``<tmp>/blobtier-<uid>`` (short:
    sun_path is 108 bytes), made 0700. ``UntrustedPath`` if it is another user's (who may
    have made it first) or others may write it (``trust.py``)."""
    path = os.path.join(tempfile.gettempdir(), f"blobtier-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    check_socket_dir(path)
    return path


class OwnedArena:
    """An arena owned by this process and served to its children (DataLoader workers).

    Without a host daemon the process that opens a client owns the L1: the workers it
    forks attach through the socket and share one copy of every chunk with it.
    """

    def __init__(self, capacity: int, policy: str,
                 namespace_policies: Mapping[str, str] | None = None) -> None:
        self.owner = ArenaOwner(capacity, policy, namespace_policies=namespace_policies)
        # A directory of its own, new and 0700: no other user can have made it first (a
        # well-known one can be squatted), so nobody can keep this process from its L1.
        # Its name carries the owner's pid, so directories of owners that died without
        # closing (SIGKILL) are found and removed by the next arena made on the host.
        _sweep_dead_arena_dirs()
        self._dir = tempfile.mkdtemp(prefix=f"{_ARENA_DIR}{os.getpid()}-")
        self.socket_path = os.path.join(self._dir, "owner.sock")
        self.server = OwnerServer(self.owner, self.socket_path)
        # A process that exits without close() still removes its directory (the owning
        # process only: a forked child's exit never touches the parent's socket).
        self._finalizer = weakref.finalize(self, _remove_arena_dir, self._dir, os.getpid())

    def close(self) -> None:
        self.server.close()
        self.owner.close()
        try:
            os.rmdir(self._dir)
        except OSError:
            pass  # a forked child's close: the socket, and so the directory, is the parent's
        else:
            self._finalizer.detach()


_ARENA_DIR = "blobtier-l1-"


def _remove_arena_dir(path: str, pid: int) -> None:
    if os.getpid() != pid:
        return
    for name in ("owner.sock",):
        try:
            os.unlink(os.path.join(path, name))
        except OSError:
            pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def _sweep_dead_arena_dirs() -> None:
    """Remove arena directories of this user whose owner process no longer exists."""
    tmp = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(tmp) if n.startswith(_ARENA_DIR)]
    except OSError:
        return
    for name in names:
        pid = name[len(_ARENA_DIR):].split("-", 1)[0]
        path = os.path.join(tmp, name)
        try:
            if not pid.isdigit() or os.lstat(path).st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _remove_arena_dir(path, os.getpid())
        except OSError:
            continue  # alive under another user (EPERM), or gone already
