"""The metadata store on Redis: one node, or a Redis Cluster for regions that outgrow one
machine (``redis`` client with ``hiredis``: ``pip install 'blobtier[redis]'``).

Key layout. The store keeps the base class's raw keys (``b"R" + key`` -> encoded
BlobRecord, ``b"O" + url`` -> origin, see ``schema``); ``P`` is the store's key prefix
(``bt:`` by default), a "directory" is a raw key up to a "/", and ``h`` is the 16 hex
digits of xxh3-64 of ``P + dir``::

    {}P<raw key>    string  the value (a record: open = one GET)
    {h}P D<dir>     zset    the directory's children, score 0, by lex: "name" for a key,
                            "name/" for a subdirectory (the root dir is "": b"Rns/", ...)
    {h}P I<dir>     hash    the directory's index state: "seq" (a token that changes
                            with every index write) and "p:<name>" (writers in flight)

The leading ``{}`` is an empty hash tag: Redis Cluster then hashes the whole key, so a
``{...}`` inside a user's key cannot pin keys to one slot, and records spread over all
16384 slots (a namespace is never one slot). A directory's zset and hash share ``{h}``,
so one script updates both; the record and its index entry live in different slots.

Commit: a Lua compare-and-set on the record's one key is the commit point, so a reader
sees the old or the new bytes, never a mix, and of two writers expecting the same
version exactly one wins (the other gets ``False``, then ``VersionConflict``). Before it,
the key's name is added to the index of every ancestor directory (``INDEX_ADD``, which
also marks the writer in flight); after it, the mark is cleared (``INDEX_DONE``). A
commit batch is atomic per key, not across keys (they live on different nodes).

Listing walks the directory index (``ZRANGEBYLEX``, one page per round trip), never the
key space: a delimiter listing reads one directory, ``scan`` walks the tree depth-first,
which yields keys in bytewise order. An index entry whose record is gone (a delete, a
writer that lost its compare-and-set or died) is skipped and removed, but only when no
writer is in flight for it and the directory's ``seq`` is unchanged since before the
record was seen missing: an entry is never removed under a commit that is landing.

Requirements on the server (checked at start):

- ``maxmemory-policy noeviction``: an evicted record is a lost blob. The store refuses
  to start otherwise (``CONFIG SET maxmemory-policy noeviction``, and in redis.conf).
- Durability: Redis acknowledges a write before it is on disk or on a replica. So that an
  acknowledged commit survives the kill of a master, run either
  ``appendonly yes`` + ``appendfsync always`` on every master, or replicas and
  ``wait_replicas=N``: every commit (and the index entries before it) then waits for
  ``WAIT N wait_timeout_ms`` and raises ``TierUnavailable`` when fewer replicas confirm.
  Without either, a warning is logged at start.

Every Redis error becomes a blobtier one: unreachable nodes ``TierUnavailable`` (naming
the endpoints) after ``retry_s`` of retries; a full server ``StorageFull``; a key of the
wrong type or a malformed record ``MetadataCorrupt``. Cluster redirections (``MOVED``,
``ASK``, ``TRYAGAIN``), failovers and lost script caches (``NOSCRIPT``) are retried.

Transport: redis-py keeps the slot map; the store groups each batch by node and writes
every node's pipeline before reading any reply. redis-py's own ``ClusterPipeline`` (and
``mget_nonatomic`` on it) also follows MOVED/ASK/TRYAGAIN, by resending the failed
commands one at a time, but a ``WAIT`` must travel on the connection that carried the
writes it waits for, which a resend elsewhere breaks; and per key it costs several times
more (measured: 12k against 32k-86k keys/s for 256-key batches on a loaded 2-core host).
A resent compare-and-set (after a dropped link) that finds its own bytes in place counts
as applied, so a commit whose reply was lost is not reported as a conflict.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
import time
from binascii import crc_hqx
from collections.abc import Callable, Iterator, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

import xxhash

from blobtier import forks
from blobtier.errors import (
    Forbidden,
    InvalidRequest,
    MetadataCorrupt,
    StorageFull,
    TierUnavailable,
    TimedOut,
)
from blobtier.metadata.store import ABSENT, ANY, MetadataStore

try:
    import redis
    from redis import exceptions as rex
    from redis.backoff import NoBackoff
    from redis.crc import key_slot
    from redis.retry import Retry
except ImportError:  # pragma: no cover - the error says how to install it
    redis = None

try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - redis-py packs in Python then
    _pack = None

log = logging.getLogger(__name__)

# -- scripts (each touches keys of one slot only) ------------------------------------------
# ARGV: expected ("any", "absent" or the version as u64 LE), "set"/"del", value, "1" when
# resent after a dropped link -> 1 applied, 0 compare failed, -1 current value not a record
_CAS = """
local cur = redis.call('GET', KEYS[1])
local exp, op, new, retry = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if retry == '1' and ((op == 'set' and cur == new) or (op == 'del' and not cur)) then
  return 1
end
if cur and exp ~= 'any' and (string.len(cur) < 32 or string.sub(cur, 1, 2) ~= 'BT') then
  return -1
end
if exp == 'absent' then
  if cur then return 0 end
elseif exp ~= 'any' then
  if not cur or string.sub(cur, 25, 32) ~= exp then return 0 end
end
if op == 'del' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], new) end
return 1
"""
# ARGV: seq token, names...
_INDEX_ADD = """
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 0, ARGV[i])
  redis.call('HINCRBY', KEYS[2], 'p:' .. ARGV[i], 1)
end
redis.call('HSET', KEYS[2], 'seq', ARGV[1])
return 1
"""
_INDEX_DONE = """
for i = 2, #ARGV do
  if redis.call('HINCRBY', KEYS[2], 'p:' .. ARGV[i], -1) <= 0 then
    redis.call('HDEL', KEYS[2], 'p:' .. ARGV[i])
  end
end
redis.call('HSET', KEYS[2], 'seq', ARGV[1])
return 1
"""
# ARGV: min, max, count -> {seq, names}
_PAGE = """#!lua flags=no-writes
local seq = redis.call('HGET', KEYS[2], 'seq') or ''
return {seq, redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, ARGV[3])}
"""
# ARGV: seq seen before the names were found stale, names... -> entries left, or -1
_PRUNE = """
if (redis.call('HGET', KEYS[2], 'seq') or '') ~= ARGV[1] then return -1 end
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[2], 'p:' .. ARGV[i]) == 0 then
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
local n = redis.call('ZCARD', KEYS[1])
if n == 0 and redis.call('HLEN', KEYS[2]) <= 1 then redis.call('DEL', KEYS[2]) end
return n
"""
_SCRIPTS = {hashlib.sha1(s.encode()).hexdigest(): s for s in (_CAS, _INDEX_ADD, _INDEX_DONE, _PAGE, _PRUNE)}
_SHA = {s: sha for sha, s in _SCRIPTS.items()}

_BUSY = ()  # errors after which a command surely did not run, and may soon
if redis is not None:
    _BUSY = (rex.ClusterDownError, rex.MasterDownError, rex.BusyLoadingError, rex.ReadOnlyError,
             rex.SlotNotCoveredError)


class _Cmd:
    """One keyed command; ``result`` is its reply or the exception it got."""

    __slots__ = ("key", "args", "result", "idempotent", "ask")

    def __init__(self, key: bytes, args: list, idempotent: bool = True) -> None:
        self.key = key
        self.args = args
        self.result: object = None
        # False: not resent when a connection drops after sending (the outcome is unknown)
        self.idempotent = idempotent
        self.ask: tuple[str, int] | None = None


def _one(name: str, key: bytes, *args: bytes | str) -> _Cmd:
    """A command on one key."""
    return _Cmd(key, [name, key, *args])


def _script(script: str, keys: Sequence[bytes], args: Sequence[bytes | str | int],
            idempotent: bool = True) -> _Cmd:
    return _Cmd(keys[0], ["EVALSHA", _SHA[script], len(keys), *keys, *args], idempotent)


@functools.lru_cache(maxsize=65536)
def _dir_keys(prefix: bytes, d: bytes) -> tuple[bytes, bytes]:
    """(zset, hash) of directory ``d``: one slot, chosen by a hash of the directory."""
    tag = b"{" + xxhash.xxh3_64_hexdigest(prefix + d).encode() + b"}" + prefix
    return tag + b"D" + d, tag + b"I" + d


def _ancestry(key: bytes) -> list[tuple[bytes, bytes]]:
    """(directory, name in it) for every level of ``key``: b"ns/a/b" ->
    [(b"", b"ns/"), (b"ns/", b"a/"), (b"ns/a/", b"b")]."""
    out, start = [], 0
    while (i := key.find(b"/", start)) >= 0:
        out.append((key[:start], key[start:i + 1]))
        start = i + 1
    out.append((key[:start], key[start:]))
    return out


def _parent(d: bytes) -> tuple[bytes, bytes]:
    """(parent directory, name of ``d`` in it) for a directory b"ns/a/"."""
    i = d.rfind(b"/", 0, len(d) - 1)
    return d[:i + 1], d[i + 1:]


class _Stale:
    """Index entries seen dangling, grouped by (directory, seq at the time it was read)."""

    def __init__(self) -> None:
        self.groups: dict[tuple[bytes, bytes], list[bytes]] = {}

    def add(self, d: bytes, seq: bytes, name: bytes) -> None:
        self.groups.setdefault((d, seq), []).append(name)


class RedisStore(MetadataStore):
    """``MetadataStore`` on one Redis node or a Redis Cluster.

    Args:
        endpoints: "host:port" strings (any nodes of a cluster: the rest is discovered).
        cluster: True/False, or None to ask the first reachable node (``INFO cluster``).
        prefix: prefix of every key this store writes (several regions can share a server).
        wait_replicas: after each write round, ``WAIT`` for this many replicas (0: no WAIT).
        wait_timeout_ms: how long a ``WAIT`` may block.
        retry_s: how long redirections, failovers and unreachable nodes are retried
            before ``TierUnavailable``.
        socket_timeout_s: per-request socket timeout.
        username, password: Redis ACL credentials.

    Raises (at start): ``TierUnavailable`` when no endpoint answers; ``InvalidRequest``
    when a node's ``maxmemory-policy`` is not ``noeviction`` or a master has fewer
    replicas than ``wait_replicas``.
    """

    def __init__(self, endpoints: Sequence[str] | str, *, cluster: bool | None = None,
                 prefix: str = "bt:", wait_replicas: int = 0, wait_timeout_ms: int = 1000,
                 retry_s: float = 10.0, socket_timeout_s: float = 5.0,
                 username: str | None = None, password: str | None = None) -> None:
        if redis is None:
            raise InvalidRequest("the Redis metadata store needs the redis client: "
                                 "pip install 'blobtier[redis]'")
        self.endpoints = _parse_endpoints(endpoints)
        _check(wait_replicas >= 0, "wait_replicas", "must not be negative")
        _check(wait_timeout_ms > 0, "wait_timeout_ms", "must be positive")
        _check(retry_s >= 0, "retry_s", "must not be negative")
        self.where = "Redis " + ",".join(f"{h}:{p}" for h, p in self.endpoints)
        self.prefix = prefix
        self._p = prefix.encode()
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.retry_s = retry_s
        # No retries inside redis-py (its default backs off for up to 30 s): _execute
        # retries what is worth retrying, within retry_s.
        kw = dict(socket_timeout=socket_timeout_s, socket_connect_timeout=min(socket_timeout_s, 2.0),
                  username=username, password=password, retry=Retry(NoBackoff(), 0))
        self._kw = kw
        self._rc = self._single = None
        self._slots: list[redis.Redis | None] | None = None
        self._pid = 0
        self._closed = False
        self.cluster = self._is_cluster() if cluster is None else cluster
        try:
            self._connect()
            self._check_servers()
            forks.register(self)
        except (rex.RedisError, rex.RedisClusterException) as exc:
            self.close()
            raise self._error(exc) from exc
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        """This process's clients (a forked child makes its own: ``_after_fork_in_child``)."""
        if self.cluster:
            self._rc = redis.RedisCluster(
                startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in self.endpoints], **self._kw)
        else:
            (host, port), = self.endpoints[:1]
            self._single = redis.Redis(host=host, port=port, **self._kw)
        self._pid = os.getpid()

    @classmethod
    def from_url(cls, url: str, **overrides) -> RedisStore:
        """``redis://[user:password@]host:port[,host:port...][?prefix=..&wait_replicas=N
        &wait_timeout_ms=..&retry_s=..&cluster=0|1]``; keyword arguments override the URL."""
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise InvalidRequest(f"metadata URL {url!r} must start with redis://")
        creds, _, hosts = parts.netloc.rpartition("@")
        user, _, password = creds.partition(":")
        kw: dict = {"username": unquote(user) or None, "password": unquote(password) or None}
        for name, (values) in parse_qs(parts.query, strict_parsing=bool(parts.query)).items():
            kw[name] = _url_value(name, values[-1])
        kw.update(overrides)
        return cls(hosts.split(","), **kw)

    # -- start-up ---------------------------------------------------------------------------
    def _is_cluster(self) -> bool:
        errors = []
        for host, port in self.endpoints:
            client = redis.Redis(host=host, port=port, **self._kw)
            try:
                return bool(int(client.info("cluster").get("cluster_enabled", 0)))
            except rex.RedisError as exc:
                errors.append(f"{host}:{port}: {exc}")
            finally:
                client.close()
        raise TierUnavailable(f"cannot reach the metadata store at {self.where}: " + "; ".join(errors))

    def _clients(self) -> list[tuple[str, redis.Redis]]:
        if self._single is not None:
            (host, port), = self.endpoints[:1]
            return [(f"{host}:{port}", self._single)]
        return [(n.name, self._rc.get_redis_connection(n)) for n in self._rc.get_nodes()]

    def _check_servers(self) -> None:
        volatile = []
        for name, client in self._clients():
            policy = client.info("memory").get("maxmemory_policy")
            if policy != "noeviction":
                raise InvalidRequest(
                    f"Redis at {name} has maxmemory-policy {policy}; the metadata store needs "
                    "noeviction (an evicted record is a lost blob): run CONFIG SET "
                    "maxmemory-policy noeviction there and set it in its redis.conf")
            repl = client.info("replication")
            if repl.get("role") != "master":
                continue
            if self.wait_replicas > int(repl.get("connected_slaves", 0)):
                raise InvalidRequest(
                    f"wait_replicas={self.wait_replicas} but the Redis master at {name} has "
                    f"{repl.get('connected_slaves', 0)} connected replicas: every commit would fail")
            if not self.wait_replicas and not self._aof_always(client):
                volatile.append(name)
        if volatile:
            log.warning("Redis at %s: neither appendfsync always nor wait_replicas, so an "
                        "acknowledged commit can be lost when a master dies", ",".join(volatile))

    @staticmethod
    def _aof_always(client: redis.Redis) -> bool:
        try:
            conf = client.config_get("append*")
        except rex.ResponseError:  # CONFIG disabled (managed Redis): cannot tell
            return False
        return conf.get("appendonly") == "yes" and conf.get("appendfsync") == "always"

    # -- reads ------------------------------------------------------------------------------
    def _rk(self, rkey: bytes) -> bytes:
        return b"{}" + self._p + rkey

    def _get_raw(self, rkey: bytes) -> bytes | None:
        cmd = _one("GET", self._rk(rkey))
        self._execute([cmd])
        return self._value(cmd)

    def _get_many_raw(self, rkeys: Sequence[bytes]) -> list[bytes | None]:
        cmds = [_one("GET", k) for k in map(self._rk, rkeys)]
        self._execute(cmds)
        return [self._value(c) for c in cmds]

    def _value(self, cmd: _Cmd):
        if isinstance(cmd.result, BaseException):
            raise self._error(cmd.result, cmd.key)
        return cmd.result

    # -- commits ----------------------------------------------------------------------------
    def _cas_many(self, items: Sequence[tuple[bytes, int, bytes | None]]) -> list[bool]:
        if not items:
            return []
        token = os.urandom(8).hex()
        writes: dict[bytes, list[bytes]] = {}  # dir -> names to index (deduplicated)
        deletes: set[bytes] = set()
        for rkey, _, value in items:
            if value is None:
                deletes.add(_ancestry(rkey)[-1][0])
                continue
            for d, name in _ancestry(rkey):
                names = writes.setdefault(d, [])
                if name not in names:
                    names.append(name)
        adds = [_script(_INDEX_ADD, _dir_keys(self._p, d), [token, *names]) for d, names in writes.items()]
        seqs = {d: _one("HGET", _dir_keys(self._p, d)[1], "seq") for d in deletes}
        try:
            self._execute([*adds, *seqs.values()], wait=bool(adds))
            for c in [*adds, *seqs.values()]:
                self._value(c)
            cas = [_script(_CAS, [self._rk(rkey)], [_expected(exp), "set" if value is not None else "del",
                                                    value or b"", b"0"])
                   for rkey, exp, value in items]
            self._execute(cas, wait=True)
            return self._cas_results(items, cas, seqs)
        finally:
            # A seq of its own: a listing that read a directory after INDEX_ADD (and found no
            # record yet) must not see its seq unchanged after the commit landed, or its repair
            # would remove the entries of a committed key.
            token = os.urandom(8).hex()
            done = [_script(_INDEX_DONE, _dir_keys(self._p, d), [token, *names], idempotent=False)
                    for (d, names), add in zip(writes.items(), adds) if add.result == 1]
            self._best_effort(done)

    def _cas_results(self, items, cas: list[_Cmd], seqs: dict[bytes, _Cmd]) -> list[bool]:
        out, stale = [], _Stale()
        for (rkey, _, value), c in zip(items, cas):
            if c.result == -1:
                raise MetadataCorrupt(f"{rkey[1:].decode(errors='replace')}: the stored value is "
                                      "not a blobtier record; only an unconditional write replaces it")
            ok = self._value(c) == 1
            out.append(ok)
            if ok and value is None:
                d, name = _ancestry(rkey)[-1]
                stale.add(d, seqs[d].result or b"", name)
        self._prune(stale)
        return out

    # -- listing ----------------------------------------------------------------------------
    def _scan_raw(self, prefix: bytes, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        stale = _Stale()
        rows = list(itertools.islice(self._rows(prefix, start, min(max(limit, 16), 1024), stale), limit))
        self._prune(stale)
        return rows

    def _listing_raw(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """One walk of the tree (not a walk per page, as pages of ``_scan_raw`` would be)."""
        stale = _Stale()
        yield from self._rows(prefix, prefix, 1024, stale)
        self._prune(stale)

    def _rows(self, prefix: bytes, start: bytes, page: int, stale: _Stale) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of every key >= ``start`` under ``prefix`` in bytewise order: the
        directory index walked, the values looked up ``page`` at a time; dangling
        entries go to ``stale``."""
        d = prefix[:prefix.rfind(b"/") + 1]
        walk = self._walk(d, prefix[len(d):], start if start > prefix else None, page)
        try:
            while batch := self._candidates(walk, page, stale):
                for (key, dd, seq, name), raw in zip(batch, self._get_many_raw([b[0] for b in batch])):
                    if raw is None:
                        stale.add(dd, seq, name)
                    else:
                        yield key, raw
        finally:
            walk.close()

    @staticmethod
    def _candidates(walk: Iterator[tuple], n: int, stale: _Stale) -> list[tuple]:
        """The walk's next ``n`` keys; the empty subdirectories it passes go to ``stale``."""
        batch = []
        for key, d, seq, name in walk:
            if key is None:
                stale.add(d, seq, name)
                continue
            batch.append((key, d, seq, name))
            if len(batch) == n:
                break
        return batch

    def _walk(self, d: bytes, head: bytes, lower: bytes | None, page: int,
              entry: tuple[bytes, bytes, bytes] | None = None) -> Iterator[tuple]:
        """Depth first over directory ``d``'s entries starting with ``head``: (key, d, seq,
        name) for every blob key >= ``lower`` in bytewise order. Index entries only: a
        record may be gone. ``entry`` is d's own (parent, seq, name): when d turns out to
        be empty, (None, parent, seq, name) says that entry is stale."""
        if lower is not None and not lower.startswith(d):
            if lower > d:
                return
            lower = None
        empty = True
        for seq, name in self._entries(d, head, _lower_bound(d, lower), page):
            empty = False
            full = d + name
            if name.endswith(b"/"):
                sub_lower = lower if lower is not None and lower.startswith(full) else None
                yield from self._walk(full, b"", sub_lower, page, (d, seq, name))
            else:
                yield full, d, seq, name
        if empty and entry is not None and lower is None:
            yield (None, *entry)

    def _entries(self, d: bytes, head: bytes, lo: bytes | None, page: int) -> Iterator[tuple[bytes, bytes]]:
        """(seq, name) of ``d``'s entries that start with ``head`` and are >= ``lo``, a page
        (one round trip) at a time."""
        low, high = _bounds(head, lo, inclusive=True)
        while True:
            seq, names = self._page(d, low, high, page)
            for name in names:
                yield seq, name
            if len(names) < page:
                return
            low = b"(" + names[-1]

    def _page(self, d: bytes, low: bytes, high: bytes, n: int) -> tuple[bytes, list[bytes]]:
        """(seq, up to ``n`` names of ``d`` in the lex range)."""
        cmd = _script(_PAGE, _dir_keys(self._p, d), [low, high, n])
        self._execute([cmd])
        seq, names = self._value(cmd)
        return seq, names

    def _dir_raw(self, prefix: bytes, d: bytes, start: bytes,
                 limit: int) -> Iterator[tuple[bytes, bytes | None]]:
        """The base class's delimiter listing from directory ``d``'s index alone: one
        page of names, then their records (and whether each subdirectory still holds
        something) in one round trip; never a key below a subdirectory."""
        if not start.startswith(d):
            return  # start is past the directory (it is never before it)
        low, high = _bounds(prefix[len(d):], start[len(d):], inclusive=True)
        stale, n = _Stale(), 0
        while n < limit:
            want = limit - n
            seq, names = self._page(d, low, high, want)
            for entry in self._resolve(d, [(seq, name) for name in names], stale):
                n += 1
                yield entry
            if len(names) < want:
                break
            low = b"(" + names[-1]
        self._prune(stale)

    def _resolve(self, d: bytes, entries: list[tuple[bytes, bytes]],
                 stale: _Stale) -> list[tuple[bytes, bytes | None]]:
        """A page's entries as (key, value) for a record, (subdirectory, None) for a
        subdirectory that still holds something; the rest go to ``stale``."""
        cmds = [_one("EXISTS", _dir_keys(self._p, d + name)[0]) if name.endswith(b"/")
                else _one("GET", self._rk(d + name)) for _, name in entries]
        self._execute(cmds)
        out: list[tuple[bytes, bytes | None]] = []
        for (seq, name), cmd in zip(entries, cmds):
            value = self._value(cmd)
            if not value:
                stale.add(d, seq, name)
            else:
                out.append((d + name, None if name.endswith(b"/") else value))
        return out

    # -- index repair -----------------------------------------------------------------------
    def _prune(self, stale: _Stale) -> None:
        """Remove dangling index entries; then the entries of directories left empty, up the
        tree. Best effort: what fails stays for a later listing to remove."""
        groups = stale.groups
        while groups:
            cmds = {dg: _script(_PRUNE, _dir_keys(self._p, dg[0]), [dg[1], *names], idempotent=False)
                    for dg, names in groups.items()}
            self._best_effort(list(cmds.values()))
            emptied = [d for (d, _), c in cmds.items() if c.result == 0 and d]
            groups = self._emptied_parents(emptied) if emptied else {}

    def _emptied_parents(self, emptied: list[bytes]) -> dict[tuple[bytes, bytes], list[bytes]]:
        """For directories found empty: their entries in their parents, with each parent's
        seq read BEFORE the directory is checked empty again (the order pruning needs)."""
        parents = {d: _parent(d) for d in emptied}
        seqs = {p: _one("HGET", _dir_keys(self._p, p)[1], "seq") for p, _ in parents.values()}
        if not self._best_effort(list(seqs.values())):
            return {}
        cards = {d: _one("EXISTS", _dir_keys(self._p, d)[0]) for d in emptied}
        if not self._best_effort(list(cards.values())):
            return {}
        out: dict[tuple[bytes, bytes], list[bytes]] = {}
        for d, (p, name) in parents.items():
            if cards[d].result == 0:
                out.setdefault((p, seqs[p].result or b""), []).append(name)
        return out

    def _best_effort(self, cmds: list[_Cmd]) -> bool:
        """Run index housekeeping whose failure loses nothing; True if every command ran."""
        if not cmds:
            return True
        try:
            self._execute(cmds)
        except Exception as exc:  # noqa: BLE001 - housekeeping: logged, retried by later listings
            log.warning("%s: index housekeeping failed (left for later): %s", self.where, exc)
            return False
        return not any(isinstance(c.result, BaseException) for c in cmds)

    # -- transport --------------------------------------------------------------------------
    def _execute(self, cmds: list[_Cmd], *, wait: bool = False) -> None:
        """Run ``cmds``, pipelined per node (all nodes' requests written before any reply is
        read), retrying what Redis redirected or refused for now; ``wait``: each node's
        batch ends with ``WAIT wait_replicas``. Each command's ``result`` is its reply or,
        for a final error, the exception."""
        if self._pid != os.getpid():
            self._reconnect()
        wait = wait and self.wait_replicas > 0
        todo, deadline, pause, short = cmds, None, 0.01, []
        while todo:
            short += self._round(todo, wait)
            todo, refresh, sleep = self._triage(todo)
            if not todo:
                break
            now = time.monotonic()
            deadline = deadline or now + self.retry_s
            if now > deadline:
                raise self._error(todo[0].result, todo[0].key)
            if refresh:
                self._refresh()
            if sleep:
                time.sleep(pause)
                pause = min(pause * 2, 0.25)
        if short:
            raise TierUnavailable(
                f"{self.where}: only {min(short)} of {self.wait_replicas} replicas confirmed a write "
                f"within {self.wait_timeout_ms} ms; it is applied but may not survive a failover")

    def _after_fork_in_child(self) -> None:
        """The parent's clients (their sockets, and locks a parent thread may have held at
        the fork) are dropped, never used nor closed here; the child connects on first use."""
        forks.keep_inherited(self._rc, self._single)
        self._rc = self._single = self._slots = None
        self._pid = 0

    def _reconnect(self) -> None:
        """First use in a forked child (or after close: an error)."""
        if self._closed:
            raise TierUnavailable(f"{self.where}: the metadata store is closed")
        self._rc = self._single = self._slots = None
        try:
            self._connect()
        except (rex.RedisError, rex.RedisClusterException) as exc:
            raise self._error(exc) from exc

    def _triage(self, cmds: list[_Cmd]) -> tuple[list[_Cmd], bool, bool]:
        """(commands to resend, whether the slot map needs a refresh, whether to back off)."""
        again, refresh, sleep = [], False, False
        for c in cmds:
            r = c.result
            if not isinstance(r, rex.RedisError):
                continue
            if isinstance(r, rex.MovedError):  # before AskError: redis-py derives it from that
                c.ask = None
                if self._rc is not None:
                    self._rc.nodes_manager.move_slot(r)
                    self._slots = None
            elif isinstance(r, rex.AskError):
                c.ask = (r.host, int(r.port))
            elif isinstance(r, rex.NoScriptError):
                c.args[0:2] = ["EVAL", _SCRIPTS[c.args[1]]]
            elif isinstance(r, (rex.TryAgainError, *_BUSY)):
                refresh = refresh or not isinstance(r, rex.TryAgainError)
                sleep = True
            elif isinstance(r, (rex.ConnectionError, rex.TimeoutError)) and c.idempotent:
                if c.args[0] in ("EVALSHA", "EVAL") and c.args[1] in (_SHA[_CAS], _CAS):
                    c.args[-1] = b"1"  # a resent commit that had landed is recognised as such
                refresh, sleep = True, True
            else:
                continue
            again.append(c)
        return again, refresh, sleep

    def _refresh(self) -> None:
        if self._rc is not None:
            try:
                self._rc.nodes_manager.initialize()
            except (rex.RedisError, rex.RedisClusterException) as exc:
                log.debug("%s: slot map refresh failed: %s", self.where, exc)
            self._slots = None

    def _client(self, cmd: _Cmd) -> redis.Redis:
        if self._single is not None:
            return self._single
        if cmd.ask:
            node = self._rc.nodes_manager.get_node(cmd.ask[0], cmd.ask[1])
            if node is not None:
                return self._rc.get_redis_connection(node)
        table = self._slots or self._slot_table()
        key = cmd.key
        # "{}..." hashes whole (the same rule as key_slot, without its searches)
        client = table[crc_hqx(key, 0) & 16383 if key[:2] == b"{}" else key_slot(key)]
        if client is None:
            raise rex.SlotNotCoveredError(f"no master serves the slot of {cmd.key!r}")
        return client

    def _slot_table(self) -> list[redis.Redis | None]:
        """slot -> its master's client, from redis-py's slot map (looked up per key there,
        it costs more than the request); rebuilt after every redirection or refresh."""
        table: list[redis.Redis | None] = [None] * 16384
        clients: dict[str, redis.Redis] = {}
        for slot, nodes in list(self._rc.nodes_manager.slots_cache.items()):
            if nodes:
                name = nodes[0].name
                if name not in clients:
                    clients[name] = self._rc.get_redis_connection(nodes[0])
                table[slot] = clients[name]
        self._slots = table
        return table

    def _round(self, cmds: list[_Cmd], wait: bool) -> list[int]:
        """One pipelined round trip per node; returns the replica counts of WAITs that fell
        short."""
        groups: dict[int, tuple[redis.Redis, list[_Cmd]]] = {}
        for c in cmds:
            try:
                client = self._client(c)
            except (rex.RedisError, rex.RedisClusterException) as exc:
                c.result = exc if isinstance(exc, rex.RedisError) else rex.ClusterDownError(str(exc))
                continue
            groups.setdefault(id(client), (client, []))[1].append(c)
        sent = []
        for client, group in groups.values():
            pool = client.connection_pool
            conn = None
            try:
                conn = pool.get_connection()
                conn.send_packed_command(self._pack(conn, group, wait))
                sent.append((pool, conn, group))
            except rex.RedisError as exc:
                for c in group:
                    c.result = exc
                if conn is not None:
                    conn.disconnect()
                    pool.release(conn)
        short = []
        for pool, conn, group in sent:
            n = self._read(conn, group, wait)
            pool.release(conn)
            if n is not None and n < self.wait_replicas:
                short.append(n)
        return short

    def _pack(self, conn, group: list[_Cmd], wait: bool) -> list[bytes]:
        args = []
        for c in group:
            c.result = None
            if c.ask:
                args.append(("ASKING",))
            args.append(c.args)
        if wait:
            args.append(("WAIT", self.wait_replicas, self.wait_timeout_ms))
        if _pack is not None:
            return [b"".join(_pack(tuple(a)) for a in args)]
        return conn.pack_commands(args)

    def _read(self, conn, group: list[_Cmd], wait: bool) -> int | None:
        """Read a node's replies into its commands; the WAIT count when some command of
        the group ran (a group that was only redirected needs no confirmation)."""
        read = _reply_reader(conn)
        done, replicas = 0, None
        try:
            for c in group:
                if c.ask:
                    read()  # ASKING's +OK
                c.result = read()
                done += 1
            if wait:
                replicas = read()
                if isinstance(replicas, rex.ResponseError):  # e.g. the node is a replica now
                    replicas = 0
        except (rex.RedisError, OSError) as exc:  # the link dropped: the rest's outcome is unknown
            conn.disconnect()
            if not isinstance(exc, rex.RedisError):
                exc = (rex.TimeoutError if isinstance(exc, TimeoutError) else rex.ConnectionError)(
                    f"{conn.host}:{conn.port}: {exc}")
            for c in group[done:]:
                c.result = exc
            replicas = 0
        ran = any(not isinstance(c.result, rex.RedisError) for c in group)
        return replicas if wait and ran else None

    # -- errors -----------------------------------------------------------------------------
    def _error(self, exc: BaseException, key: bytes = b"") -> Exception:
        """The blobtier exception for a Redis one."""
        what = key.decode(errors="replace")
        if isinstance(exc, rex.TimeoutError):
            return TimedOut(f"{self.where} did not answer in time ({what}): {exc}")
        if isinstance(exc, (rex.ConnectionError, rex.RedisClusterException, *_BUSY, rex.TryAgainError)):
            return TierUnavailable(f"metadata store unavailable: {self.where}: {exc}")
        if isinstance(exc, rex.OutOfMemoryError):
            return StorageFull(f"{self.where} is full (maxmemory reached, noeviction): {exc}")
        if isinstance(exc, (rex.AuthenticationError, rex.NoPermissionError)):
            return Forbidden(f"{self.where} refused the credentials: {exc}")
        if isinstance(exc, rex.ResponseError) and str(exc).startswith("WRONGTYPE"):
            return MetadataCorrupt(f"{self.where}: key {what} holds a value of the wrong type "
                                   "(written by something else than blobtier?)")
        return TierUnavailable(f"{self.where} refused a request ({what}): {exc}")

    def close(self) -> None:
        self._closed = True
        if self._pid == os.getpid():
            for client in (self._rc, self._single):
                if client is not None:
                    client.close()
        self._rc = self._single = None
        self._pid = -1  # the next request finds the store closed


def _reply_reader(conn) -> Callable[[], object]:
    """Reads one reply, returning an error reply as its exception rather than raising it.
    The connection's parser does that without the per-reply bookkeeping of
    ``Connection.read_response`` (a third of a batched GET's time)."""
    parser = getattr(conn, "_parser", None)
    if parser is not None and hasattr(parser, "read_response"):
        return parser.read_response

    def read() -> object:
        try:
            return conn.read_response()
        except rex.ResponseError as exc:
            return exc
    return read


def _expected(expected: int) -> bytes:
    if expected == ANY:
        return b"any"
    if expected == ABSENT:
        return b"absent"
    return expected.to_bytes(8, "little")


def _bounds(head: bytes, start: bytes | None, inclusive: bool) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX (min, max) for names starting with ``head`` from ``start`` on."""
    low = b"[" + head if head else b"-"
    if start is not None and (start > head or (start == head and not inclusive)):
        low = (b"[" if inclusive else b"(") + start
    return low, (b"[" + head + b"\xff" if head else b"+")


def _lower_bound(d: bytes, lower: bytes | None) -> bytes | None:
    """The smallest name in directory ``d`` whose subtree can hold a key >= ``lower``
    (``lower`` starts with ``d``): the name itself, or the subdirectory holding it."""
    if lower is None:
        return None
    rest = lower[len(d):]
    i = rest.find(b"/")
    return rest[:i + 1] if i >= 0 else rest


def _parse_endpoints(endpoints: Sequence[str] | str) -> list[tuple[str, int]]:
    if isinstance(endpoints, str):
        endpoints = endpoints.split(",")
    out = []
    for ep in endpoints:
        host, _, port = ep.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidRequest(f"Redis endpoint {ep!r} must be host:port")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise InvalidRequest("no Redis endpoint given")
    return out


_URL_PARAMS = {"prefix": str, "wait_replicas": int, "wait_timeout_ms": int, "retry_s": float,
               "socket_timeout_s": float, "cluster": lambda v: v.lower() in ("1", "true", "yes")}


def _url_value(name: str, value: str):
    if name not in _URL_PARAMS:
        raise InvalidRequest(f"unknown Redis URL parameter {name!r}; known: {', '.join(_URL_PARAMS)}")
    try:
        return _URL_PARAMS[name](value)
    except ValueError:
        raise InvalidRequest(f"Redis URL parameter {name}={value!r} is not valid") from None


def _check(ok: bool, field: str, why: str) -> None:
    if not ok:
        raise InvalidRequest(f"RedisStore {field} {why}")
