"""Typed configuration: one frozen dataclass per part, with defaults, units and checks.

``load(path)`` reads a region TOML file; ``from_mapping`` builds from a dict; both apply
the environment overlay ``BLOBTIER_<SECTION>_<FIELD>`` (e.g. ``BLOBTIER_CACHE_L1_BYTES=1GiB``)
and explicit arguments win over both. Any bad value stops startup with a ``InvalidRequest``
naming the field; nothing falls back to defaults silently.

Every field has a type and every number a range (``RANGES``: the bound a value may not
pass whatever else the config says; ``validate`` adds the checks between fields), so a
size that overflows, a NaN, an infinite timeout or ``prefetch_threads = 100000`` is
refused with the field and its range, never carried into a server. A ``BLOBTIER_*``
environment variable must name a field (or be one of ``ENV_NOT_FIELDS``): a misspelt one
is an error, as an unknown TOML key is.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from blobtier.checksum import ALGORITHMS
from blobtier.errors import InvalidRequest

KiB, MiB, GiB, TiB, PiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40, 1 << 50
_UNITS = {"": 1, "b": 1, "k": KiB, "kb": 1000, "kib": KiB, "m": MiB, "mb": 10**6, "mib": MiB,
          "g": GiB, "gb": 10**9, "gib": GiB, "t": TiB, "tb": 10**12, "tib": TiB}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", re.ASCII)  # ASCII digits only


def parse_size(value: int | str, what: str = "size") -> int:
    """``4194304``, ``"4MiB"``, ``"50GiB"``, ``"1.5G"`` -> bytes."""
    if isinstance(value, bool):
        raise InvalidRequest(f"{what}: expected a size, got {value!r}")
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)  # 1e9 from TOML
    if isinstance(value, int):
        if value < 0:
            raise InvalidRequest(f"{what}: size must not be negative, got {value}")
        if value >= 2 ** 63:
            raise InvalidRequest(f"{what}: {_shown(value)} is larger than any size blobtier takes")
        return value
    m = _SIZE.fullmatch(str(value)) if isinstance(value, str) and len(value) <= 64 else None
    if not m or m.group(2).lower() not in _UNITS:
        raise InvalidRequest(f"{what}: {_shown(value)} is not a size like 4MiB or 50GiB")
    number = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not number < 2 ** 63:  # also catches inf: "1" * 400 is a float overflow
        raise InvalidRequest(f"{what}: {_shown(value)} is larger than any size blobtier takes")
    return int(number)


def _shown(value: Any) -> str:
    """``repr(value)``, cut short: an error message never carries a megabyte of input."""
    try:
        text = repr(value)
    except RecursionError:  # a list nested a thousand deep
        text = f"a deeply nested {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def default_home() -> str:
    return os.environ.get("BLOBTIER_HOME") or os.path.join(os.path.expanduser("~"), ".blobtier")


METADATA_BACKENDS = ("embedded", "redis-cluster")  # metadata.backend
REDIS_MASTERS = 3  # the masters of the Redis Cluster `blobtier up` runs


@dataclass(frozen=True)
class MetadataConfig:
    block_cache_bytes: int = 64 * MiB  # RocksDB block cache, per process
    row_cache_bytes: int = 128 * MiB  # RocksDB row cache: repeat lookups skip the tables
    # Where clients find the metadata instead of RocksDB under root (at most one of the two):
    # "host:port" of metadata services (blobtier meta serve), or of Redis nodes (any nodes of a
    # Redis Cluster) for direct access from trusted hosts (pip install 'blobtier[redis]').
    # Either lets any number of processes on any number of hosts write the region at once,
    # so the chunks must be on chunk servers (block.endpoints).
    endpoints: tuple[str, ...] = ()
    redis: tuple[str, ...] = ()
    # How long a client serves a record from its read-plan cache without asking the store
    # again (staleness: another host's commit may stay unseen this long); 0: no cache. Only
    # over endpoints/redis: embedded readers catch up every client.metadata_staleness_s.
    record_ttl_s: float = 1.0
    # What `blobtier up` keeps the region's metadata in: "embedded" (RocksDB under root) or
    # "redis-cluster" (3 masters on loopback, served by services.meta_servers metadata servers).
    backend: str = "embedded"
    replicas: int = 0  # redis-cluster: replicas per master (1: a master's death loses nothing)

    @property
    def redis_nodes(self) -> int:
        """The redis-server processes `blobtier up` runs (0 unless backend is redis-cluster)."""
        return REDIS_MASTERS * (1 + self.replicas) if self.backend == "redis-cluster" else 0

    @property
    def remote(self) -> str | None:
        """The field naming remote metadata ("metadata.endpoints" or "metadata.redis"), if any."""
        return "metadata.endpoints" if self.endpoints else "metadata.redis" if self.redis else None

    def validate(self) -> None:
        _check(self.backend in METADATA_BACKENDS, "metadata.backend",
               f"must be one of {', '.join(METADATA_BACKENDS)}, not {_shown(self.backend)}")
        _check_addresses("metadata.endpoints", self.endpoints)
        _check_addresses("metadata.redis", self.redis)
        _check(not (self.endpoints and self.redis), "metadata.redis",
               "and metadata.endpoints are both set: clients use a metadata service or Redis, not both")


@dataclass(frozen=True)
class BlockConfig:
    servers: int = 5  # simulated chunk servers (directories) in an embedded region
    replicas: int = 3
    volume_bytes: int = 1 * GiB  # a volume file rolls over at this size
    endpoints: tuple[str, ...] = ()  # "host:port" of gRPC chunk servers; empty: local directories
    write_quorum: int = 0  # replicas that must be durable before a commit; 0: all of them
    hedge_after_ms: float = 0.0  # hedge a read unanswered this long; 0: automatic (p95); < 0: never
    read_concurrency: int = 16  # chunk reads in flight per client, at most
    max_retries: int = 3  # rounds over the replicas after all failed transiently
    request_timeout_s: float = 30.0  # deadline of one request to a chunk server

    def validate(self) -> None:
        _check_addresses("block.endpoints", self.endpoints)
        servers = len(self.endpoints) or self.servers
        _check(1 <= self.replicas <= servers, "block.replicas",
               f"must be between 1 and the number of chunk servers ({servers})")
        _check(0 <= self.write_quorum <= self.replicas, "block.write_quorum",
               f"must be between 0 (all) and block.replicas ({self.replicas})")


VERIFY_L1 = ("off", "sampled", "always")  # cache.verify_l1


@dataclass(frozen=True)
class CacheConfig:
    l1_bytes: int = 512 * MiB  # host L1 (shared memory) when no daemon runs; 0: none
    l1_policy: str = "sieve"
    daemon: str = "auto"  # host daemon socket: auto (the well-known one if it answers), off, or a path
    # The simulated host of a region `up` runs with services.hosts > 1 that this client is on
    # (host-N; $BLOBTIER_HOST, or --host, when this is empty): its daemon is the client's.
    host: str = ""
    # L1 hits checked against their record: off, sampled (1 in 64, random) or always.
    # Fills are always checked; this catches bytes changed in memory after their fill.
    verify_l1: str = "sampled"

    def validate(self) -> None:
        from blobtier.eviction import POLICIES

        _check(self.l1_policy in POLICIES, "cache.l1_policy", f"must be one of {sorted(POLICIES)}")
        _check(self.verify_l1 in VERIFY_L1, "cache.verify_l1",
               f"must be one of {', '.join(VERIFY_L1)}, not {self.verify_l1!r}")
        _check(self.l1_bytes == 0 or self.l1_bytes >= 1 * MiB, "cache.l1_bytes",
               "must be 0 (no L1) or at least 1MiB")


@dataclass(frozen=True)
class ClientConfig:
    chunk_size: int = 4 * MiB
    checksum: str = "xxh3"
    readahead_chunks: int = 4  # chunks a sequential reader fetches ahead
    # Batches a prefetcher keeps in flight. Each batch's chunks are fetched in parallel
    # already; more threads only fight the trainer for its process's GIL (dataloader_e2e:
    # 16 threads tripled the cold-epoch stall of 2).
    prefetch_threads: int = 2
    prefetch_bytes: int = 256 * MiB  # most bytes fetched ahead of a sampler's position
    metadata_staleness_s: float = 0.5  # how old a reader's view of other writers may be
    gc_grace_s: float = 3600.0  # unreferenced chunks younger than this survive gc
    max_blob_bytes: int = 64 * GiB

    def validate(self) -> None:
        _check(self.checksum in ALGORITHMS, "client.checksum", f"must be one of {sorted(ALGORITHMS)}")


def parse_endpoint(entry: str, field_name: str = "endpoint") -> tuple[str, float]:
    """``"host:port"`` or ``"host:port@weight"`` -> (``"host:port"``, weight)."""
    addr, at, weight = entry.partition("@")
    host, _, port = addr.rpartition(":")
    _check(bool(host) and _digits(port) and 0 < int(port) < 65536, field_name,
           f"entry {entry!r} is not host:port or host:port@weight")
    if not at:
        return addr, 1.0
    try:
        w = float(_ascii(weight))
    except ValueError:
        w = -1.0
    _check(w > 0 and w != float("inf"), field_name, f"entry {entry!r}: the weight must be a positive number")
    return addr, w


@dataclass(frozen=True)
class FlashConfig:
    # "host:port" or "host:port@weight" of the region's flash cache nodes (L3); empty: no L3.
    # Every client must list the same nodes: a chunk's node is a hash over this list.
    endpoints: tuple[str, ...] = ()
    request_timeout_s: float = 10.0  # deadline of one request to a flash node
    retry_after_s: float = 1.0  # a node that failed is skipped this long, doubling per failure
    # Read hits of a node on this host straight from its region files (a short-circuit
    # read, flash_l3/local_reads.py) instead of streaming them over gRPC.
    local_reads: bool = True
    # An embedded region without endpoints has an L3 on local disk under <root>/l3
    # (sdk/local_l3.py), so data read from an origin once survives the process; at most
    # local_bytes (0: a quarter of the disk's free space when first opened). false: none.
    local_l3: bool = True
    local_bytes: int = 0

    def nodes(self) -> list[tuple[str, float]]:
        return [parse_endpoint(e, "flash.endpoints") for e in self.endpoints]

    def validate(self) -> None:
        addrs = [addr for addr, _ in self.nodes()]
        _check(len(set(addrs)) == len(addrs), "flash.endpoints", "lists a node twice")


REDIS_BUS_OFFSET = 10000  # a Redis node's cluster bus port is its port + this (Redis's default)


def _check_port(port: int, name: str) -> None:
    _check(0 < port < 65536, name, f"port {port} is not between 1 and 65535")


@dataclass(frozen=True)
class ServicesConfig:
    """The processes ``blobtier up`` runs for this region, all on one host.

    Chunk server ``i`` serves ``<root>/blocks/NNN`` (``i`` zero-padded), the same directory
    an embedded client writes, so data moves freely between the two modes; there is one
    per ``block.servers``. Metadata stays embedded in every client (RocksDB under root)
    unless ``meta_servers`` metadata servers run: over that RocksDB (at most one, its one
    writer) or, with ``metadata.backend = "redis-cluster"``, over the Redis Cluster that
    ``up`` runs under ``<root>/redis`` (``region/redis.py``).
    Ports are fixed, so that restarts keep every chunk on the same flash node.
    """

    host: str = "127.0.0.1"  # the interface every service binds (loopback unless told)
    base_port: int = 7400  # chunk server i: base_port + i; flash node j: next after the chunk servers
    block_ports: tuple[int, ...] = ()  # explicit ports of chunk servers 0.. (instead of base_port)
    flash_ports: tuple[int, ...] = ()  # explicit ports of flash nodes 0..
    meta_servers: int = 0  # metadata servers (blobtier meta serve); 0: clients open the metadata
    meta_ports: tuple[int, ...] = ()  # explicit ports of metadata servers 0.. (default: after flash)
    # Explicit client ports of the Redis nodes 0.. (default: after the metadata servers); a
    # node's cluster bus listens REDIS_BUS_OFFSET above its port, as Redis does by default.
    redis_ports: tuple[int, ...] = ()
    metrics: bool = True  # a Prometheus endpoint on every service
    metrics_base_port: int = 0  # chunk servers, flash nodes, then the daemon from here; 0: base_port + 100
    flash_nodes: int = 1  # flash cache nodes (L3); 0: none
    flash_dir: str = ""  # parent of the nodes' directories (NNN/); empty: <root>/flash
    flash_capacity_bytes: int = 4 * GiB  # region files of one node, at most
    flash_region_bytes: int = 64 * MiB  # one region file
    flash_admission: str = "all"  # all, second-hit or random
    daemon: bool = True  # a host daemon holding the shared-memory L1
    daemon_memory_bytes: int = 512 * MiB  # the daemon's arena
    daemon_policy: str = "sieve"  # L1 eviction
    daemon_socket: str = ""  # empty: <root>/run/daemon.sock (a short temp path if that is too long)
    # L2: serve the arena to the daemons of other hosts on this port (0: no L2), and the
    # cluster's daemons as each listens (host:port, the same list on every host).
    daemon_peer_port: int = 0
    daemon_peers: tuple[str, ...] = ()
    # Simulated hosts on this machine (region/hosts.py): each its own daemon (daemon-N, L1 +
    # L2 peer on a port of its own, after the Redis nodes unless daemon_peer_port sets the
    # first), all sharing the region's metadata, flash nodes and chunk servers.
    hosts: int = 1
    start_timeout_s: float = 60.0  # how long `up` waits for a service to answer its health check
    stop_timeout_s: float = 20.0  # how long `down` waits after SIGTERM before SIGKILL

    def ports(self, servers: int, redis_nodes: int = 0) -> dict[str, tuple[int | None, int | None]]:
        """Service name -> (gRPC port, metrics port); the daemon's is its L2 port, if any, a
        Redis node's its client port (no metrics). ``redis_nodes``: ``metadata.redis_nodes``."""
        names = [f"block-{i}" for i in range(servers)] + [f"flash-{j}" for j in range(self.flash_nodes)]
        grpc_ports = (list(self.block_ports) or [self.base_port + i for i in range(servers)]) + \
            (list(self.flash_ports) or [self.base_port + servers + j for j in range(self.flash_nodes)])
        after = self.base_port + servers + self.flash_nodes
        if self.daemon and self.hosts > 1:  # their L2 ports after every other service's
            first = self.daemon_peer_port or after + self.meta_servers + redis_nodes
            names += [f"daemon-{h}" for h in range(self.hosts)]
            grpc_ports += [first + h for h in range(self.hosts)]
        elif self.daemon:
            names += ["daemon"]
            grpc_ports += [self.daemon_peer_port or None]
        names += [f"meta-{i}" for i in range(self.meta_servers)]
        grpc_ports += list(self.meta_ports) or [after + i for i in range(self.meta_servers)]
        names += [f"redis-{n}" for n in range(redis_nodes)]
        grpc_ports += list(self.redis_ports) or [after + self.meta_servers + n for n in range(redis_nodes)]
        base = self.metrics_base_port or self.base_port + 100
        return {name: (port, base + k if self.metrics and not name.startswith("redis-") else None)
                for k, (name, port) in enumerate(zip(names, grpc_ports))}

    def validate(self, servers: int, redis_nodes: int = 0) -> None:
        from blobtier.eviction import POLICIES

        _check(bool(self.host), "services.host", "must name an interface, e.g. 127.0.0.1")
        _check_port(self.base_port, "services.base_port")
        if self.metrics_base_port:
            _check_port(self.metrics_base_port, "services.metrics_base_port")
        _check(not self.block_ports or len(self.block_ports) == servers, "services.block_ports",
               f"lists {len(self.block_ports)} ports for {servers} chunk servers (block.servers)")
        _check(not self.flash_ports or len(self.flash_ports) == self.flash_nodes, "services.flash_ports",
               f"lists {len(self.flash_ports)} ports for {self.flash_nodes} flash nodes "
               "(services.flash_nodes)")
        _check(not self.meta_ports or len(self.meta_ports) == self.meta_servers, "services.meta_ports",
               f"lists {len(self.meta_ports)} ports for {self.meta_servers} metadata servers "
               "(services.meta_servers)")
        _check(not self.redis_ports or len(self.redis_ports) == redis_nodes, "services.redis_ports",
               f"lists {len(self.redis_ports)} ports for {redis_nodes} Redis nodes ({REDIS_MASTERS} "
               "masters with metadata.replicas each, when metadata.backend is redis-cluster)")
        self._check_clashes(servers, redis_nodes)
        _check(self.flash_capacity_bytes >= 2 * self.flash_region_bytes, "services.flash_capacity_bytes",
               "must hold at least two regions (services.flash_region_bytes)")
        _check(self.flash_admission in ADMISSION_POLICIES, "services.flash_admission",
               f"must be one of {sorted(ADMISSION_POLICIES)}")
        _check(self.daemon_policy in POLICIES, "services.daemon_policy", f"must be one of {sorted(POLICIES)}")
        _check(len(os.fsencode(self.daemon_socket)) <= 107, "services.daemon_socket",
               "is longer than the 107 bytes a Unix socket path may have")
        for peer in self.daemon_peers:
            _check(parse_endpoint(peer, "services.daemon_peers")[0] == peer, "services.daemon_peers",
                   f"entry {peer!r} must be host:port (peers have no weights)")
        _check(not self.daemon_peers or bool(self.daemon_peer_port), "services.daemon_peers",
               "needs services.daemon_peer_port: a daemon with peers must listen for them")
        _check(self.hosts == 1 or (self.daemon and not self.daemon_peers), "services.hosts",
               "above 1 needs services.daemon (a daemon per host) and no services.daemon_peers "
               "(the hosts' daemons are each other's peers)")

    def _check_clashes(self, servers: int, redis_nodes: int = 0) -> None:
        """Every port in range and used once; an error names the field the port came from."""
        explicit = {"block-": self.block_ports, "flash-": self.flash_ports, "meta-": self.meta_ports,
                    "redis-": self.redis_ports}

        def source(name: str, metrics: bool) -> str:
            if metrics:
                return "services.metrics_base_port" if self.metrics_base_port else "services.base_port"
            kind = name.split("-")[0] + "-"
            if explicit.get(kind):
                return f"services.{kind[:-1]}_ports"
            if name == "daemon" or name.startswith("daemon-"):
                return "services.daemon_peer_port"
            return "services.base_port"

        owner: dict[int, str] = {}
        plan = self.ports(servers, redis_nodes).items()
        # gRPC ports first: a metrics port that lands on one is the metrics setting's fault.
        ports = [(port, name, source(name, False)) for name, (port, _) in plan] + \
            [(port + REDIS_BUS_OFFSET, f"{name} cluster bus", source(name, False))
             for name, (port, _) in plan if name.startswith("redis-")] + \
            [(m, f"{name} metrics", source(name, True)) for name, (_, m) in plan]
        for p, what, field_name in ports:
            if p is None:
                continue
            _check_port(p, field_name)
            _check(p not in owner, field_name, f"gives port {p} to both {owner.get(p)} and {what}")
            owner[p] = what


# The flash tier's admission policies by name (``flash_l3/admission.py`` implements each;
# a test keeps the two equal), so a config is checked without importing the tier.
ADMISSION_POLICIES = ("all", "second-hit", "random")


@dataclass(frozen=True)
class FlashNodeConfig:
    """One flash cache node (``flash_l3/service.py``): what ``blobtier flash serve`` starts,
    and ``blobtier up`` through it from ``[services]``. Checked when made (``InvalidRequest``
    naming the field); the admission policy's name is checked where policies live."""

    root: str  # the node's directory: region files and index snapshot (created if missing)
    capacity_bytes: int  # region files, at most; at least two regions
    region_bytes: int = 64 * MiB  # one region file
    admission: str = "all"  # which offered chunks are written: all, second-hit or random
    reinsert_hits: int = 0  # keep entries read this often when their region is reclaimed; 0: off
    addr: str = "127.0.0.1:0"  # where to listen (host:port; port 0 picks a free one)
    node_id: int = 0  # reported by Stats and in logs
    workers: int = 32  # requests served at once
    metrics_port: int | None = None  # Prometheus series on 127.0.0.1:PORT; 0 picks one; None: off

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("root", "admission", "addr"):
            _check_text(f"flash_node.{name}", getattr(self, name))
        _check(bool(self.root.strip()), "flash_node.root", "must name a directory, not an empty string")
        for name in ("capacity_bytes", "region_bytes", "reinsert_hits", "node_id", "workers"):
            _check_number(f"flash_node.{name}", "int", getattr(self, name))
        if self.metrics_port is not None:
            _check_number("flash_node.metrics_port", "int", self.metrics_port)
        _check(self.capacity_bytes >= 2 * self.region_bytes, "flash_node.capacity_bytes",
               f"must hold at least two regions of {_amount('flash_node.region_bytes', self.region_bytes)} "
               f"(flash_node.region_bytes), got {_amount('flash_node.capacity_bytes', self.capacity_bytes)}")
        host, _, port = self.addr.rpartition(":")
        _check(bool(host) and _digits(port) and int(port) < 65536, "flash_node.addr",
               f"{_shown(self.addr)} is not host:port (port 0: any free one)")


@dataclass(frozen=True)
class AuthConfig:
    """Tokens (``rpc/auth.py``). Servers that ``blobtier up`` starts check ``token_file``;
    clients present ``token`` (better set as ``$BLOBTIER_AUTH_TOKEN`` than in a file)."""

    token: str = ""  # presented on every call; empty: none
    token_file: str = ""  # the [[token]] hashes and rights servers accept; empty: no checks

    def validate(self) -> None:
        _check(not self.token_file or os.path.isfile(self.token_file), "auth.token_file",
               f"names no file: {self.token_file}")


TLS_MODES = ("files", "auto", "off")  # tls.mode


@dataclass(frozen=True)
class TlsConfig:
    """TLS on every gRPC connection of the region (``rpc/tls.py``, ``tlsconf.py``).

    ``files``: TLS when ``ca`` is set; servers serve ``cert``/``key``, clients verify them
    against ``ca`` and present ``cert``/``key`` if set (mutual TLS). ``auto``: ``blobtier
    up`` makes a region CA and a certificate per service under ``<root>/run/tls`` and its
    clients take them from the running region. ``off``: plaintext, whatever the running
    region says. Paths only: never key material in the config or in argv.
    """

    mode: str = "files"
    ca: str = ""  # the CA (PEM) servers and clients trust
    cert: str = ""  # this side's certificate chain (PEM)
    key: str = ""  # its private key (PEM; keep it 0600)
    require_client_cert: bool = False  # servers refuse clients without a certificate signed by ca

    @property
    def enabled(self) -> bool:
        """Whether connections use TLS with the files named here (``auto`` before ``up``
        resolves it: no)."""
        return self.mode == "files" and bool(self.ca)

    def validate(self) -> None:
        _check(self.mode in TLS_MODES, "tls.mode", f"must be one of {', '.join(TLS_MODES)}, not "
               f"{_shown(self.mode)}")
        named = [n for n in ("ca", "cert", "key") if getattr(self, n)]
        if self.mode != "files":
            _check(not named, f"tls.{named[0] if named else 'ca'}",
                   f"is set, but tls.mode is {self.mode}: files are named with tls.mode = \"files\"")
            _check(self.mode == "auto" or not self.require_client_cert, "tls.require_client_cert",
                   "is set, but tls.mode is off")
            return
        for name in named:
            path = getattr(self, name)
            _check(os.path.isfile(path), f"tls.{name}", f"names no file: {path}")
        _check(bool(self.cert) == bool(self.key), "tls.cert" if self.key else "tls.key",
               "must be set with tls.cert and tls.key both, or neither")
        _check(not named or bool(self.ca), "tls.ca", "must be set when tls.cert or tls.key is: "
               "clients verify servers against it")
        _check(not self.require_client_cert or bool(self.ca), "tls.require_client_cert",
               "needs tls.ca: servers verify client certificates against it")


@dataclass(frozen=True)
class RegionConfig:
    root: str = field(default_factory=default_home)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    block: BlockConfig = field(default_factory=BlockConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    flash: FlashConfig = field(default_factory=FlashConfig)
    services: ServicesConfig = field(default_factory=ServicesConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)

    def validate(self) -> RegionConfig:
        _check_text("root", self.root)
        _check(bool(self.root.strip()), "root", "must name a directory, not an empty string")
        for section in _SECTIONS:  # types and ranges first: the checks below compare values
            _check_fields(section, getattr(self, section))
        self.metadata.validate()
        self.block.validate()
        self.cache.validate()
        self.client.validate()
        self.flash.validate()
        self.services.validate(self.block.servers, self.metadata.redis_nodes)
        _check(self.metadata.backend != "embedded" or self.services.meta_servers <= 1,
               "services.meta_servers", f"is {self.services.meta_servers}, but over the embedded "
               "RocksDB (metadata.backend) one metadata server is its one writer; "
               "metadata.backend = \"redis-cluster\" runs several")
        self.auth.validate()
        self.tls.validate()
        return self


_SECTIONS = {"metadata": MetadataConfig, "block": BlockConfig, "cache": CacheConfig, "client": ClientConfig,
             "flash": FlashConfig, "services": ServicesConfig, "auth": AuthConfig,
             "tls": TlsConfig}
_KINDS = ("int", "float", "str", "bool", "tuple[str, ...]", "tuple[int, ...]")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
_DAY = 86400.0

# The inclusive range of every number (of every entry, for lists of ports): beyond the
# largest any deployment needs, inside the formats that store them. None: unbounded
# (finite). ``validate`` adds the rules between fields (replicas <= servers...).
RANGES: dict[str, tuple[float | None, float | None]] = {
    "metadata.block_cache_bytes": (0, TiB),
    "metadata.row_cache_bytes": (0, TiB),
    "metadata.record_ttl_s": (0.0, 3600.0),
    "metadata.replicas": (0, 1),  # per master of the Redis Cluster
    "block.servers": (1, 999),  # blocks/NNN
    "block.replicas": (1, 255),  # one byte in a record
    "block.volume_bytes": (MiB, TiB),
    "block.write_quorum": (0, 255),
    "block.hedge_after_ms": (None, 600_000.0),  # < 0: never
    "block.read_concurrency": (1, 4096),
    "block.max_retries": (0, 100),
    "block.request_timeout_s": (0.001, _DAY),
    "cache.l1_bytes": (0, 4 * TiB),
    "client.chunk_size": (4 * KiB, 64 * MiB),
    "client.readahead_chunks": (0, 4096),
    "client.prefetch_threads": (1, 256),
    "client.prefetch_bytes": (0, TiB),
    "client.metadata_staleness_s": (0.0, 3600.0),
    "client.gc_grace_s": (0.0, 365 * _DAY),
    "client.max_blob_bytes": (1, 64 * TiB),  # metadata.schema.MAX_CHUNKS at 4 MiB chunks
    "flash.request_timeout_s": (0.001, _DAY),
    "flash.retry_after_s": (0.001, 3600.0),
    "flash.local_bytes": (0, 1 * PiB),
    "services.base_port": (1, 65535),
    "services.block_ports": (1, 65535),
    "services.flash_ports": (1, 65535),
    "services.metrics_base_port": (0, 65535),  # 0: base_port + 100
    "services.flash_nodes": (0, 999),  # flash/NNN
    "services.meta_servers": (0, 64),
    "services.meta_ports": (1, 65535),
    "services.redis_ports": (1, 65535),
    "services.flash_capacity_bytes": (2 * MiB, PiB),
    "services.flash_region_bytes": (MiB, 4 * GiB),
    "services.daemon_memory_bytes": (MiB, 4 * TiB),
    "services.daemon_peer_port": (0, 65535),  # 0: no L2
    "services.hosts": (1, 64),
    "services.start_timeout_s": (0.001, 3600.0),
    "services.stop_timeout_s": (0.001, 3600.0),
    "flash_node.capacity_bytes": (0, PiB),  # and at least two regions (validate)
    "flash_node.region_bytes": (MiB, 4 * GiB),
    "flash_node.reinsert_hits": (0, 1 << 30),
    "flash_node.node_id": (0, 2 ** 32 - 1),  # uint32 in Stats
    "flash_node.workers": (1, 4096),
    "flash_node.metrics_port": (0, 65535),  # 0: any free port
}
# The most entries of every list.
MAX_ITEMS = {"metadata.endpoints": 999, "metadata.redis": 999,
             "block.endpoints": 999, "flash.endpoints": 4096, "services.block_ports": 999,
             "services.flash_ports": 999, "services.daemon_peers": 4096, "services.meta_ports": 64,
             "services.redis_ports": 64}
MAX_TEXT = 4096  # characters of any string (a Linux path is at most 4096 bytes)
# BLOBTIER_* environment variables that are documented and are not config fields.
ENV_NOT_FIELDS = frozenset({"BLOBTIER_HOME", "BLOBTIER_HOST"})


def _check(ok: bool, name: str, why: str) -> None:
    if not ok:
        raise InvalidRequest(f"config field {name} {why}")


def _check_addresses(name: str, entries: tuple[str, ...]) -> None:
    """Every entry "host:port", none twice."""
    for addr in entries:
        host, _, port = addr.rpartition(":")
        _check(bool(host) and _digits(port) and 0 < int(port) < 65536, name,
               f"entry {addr!r} is not host:port")
    _check(len(set(entries)) == len(entries), name, "lists a server twice")


def _is_size(name: str) -> bool:
    return name.endswith("_bytes") or name.endswith(".chunk_size")


def _amount(name: str, value: float) -> str:
    """A bound or a value as the user would write it: sizes with units."""
    if _is_size(name) and isinstance(value, int) and value > 0:
        for unit, n in (("PiB", PiB), ("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
            if value % n == 0:
                return f"{value // n}{unit}"
    return _shown(value)


def _range_text(name: str, kind: str) -> str:
    lo, hi = RANGES[name]
    what = "an integer" if kind == "int" else "a finite number"
    if lo is None:
        return f"{what} of at most {_amount(name, hi)}"
    return f"{what} between {_amount(name, lo)} and {_amount(name, hi)}"


def _check_number(name: str, kind: str, value: Any) -> None:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok = is_int or (kind == "float" and isinstance(value, float))
    lo, hi = RANGES[name]  # a KeyError here is a field added without its range
    inside = ok and math.isfinite(value) and (lo is None or value >= lo) and (hi is None or value <= hi)
    _check(inside, name, f"must be {_range_text(name, kind)}, got {_amount(name, value)}")


def _check_text(name: str, value: Any) -> None:
    _check(isinstance(value, str), name, f"must be a string, got {_shown(value)}")
    _check(len(value) <= MAX_TEXT and "\x00" not in value, name,
           f"must be a string of at most {MAX_TEXT} characters without NUL")


def _check_fields(section: str, part: Any) -> None:
    """Type and range of every field of one section (lists: of every entry)."""
    for f in fields(part):
        name, kind, value = f"{section}.{f.name}", _kind(f), getattr(part, f.name)
        if kind == "bool":
            _check(isinstance(value, bool), name, f"must be true or false, got {_shown(value)}")
        elif kind in ("int", "float"):
            _check_number(name, kind, value)
        elif kind == "str":
            _check_text(name, value)
        else:
            _check(isinstance(value, tuple), name, f"must be a list, got {_shown(value)}")
            _check(len(value) <= MAX_ITEMS[name], name,
                   f"lists {len(value)} entries; at most {MAX_ITEMS[name]} are allowed")
            for v in value:
                _check_text(name, v) if kind == "tuple[str, ...]" else _check_number(name, "int", v)


def _kind(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else f.type.__name__


def _check_env(env: Mapping[str, str]) -> None:
    """Every ``BLOBTIER_*`` variable names a field (or is documented as something else)."""
    known = {f"BLOBTIER_{s.upper()}_{f.name.upper()}" for s, cls in _SECTIONS.items() for f in fields(cls)}
    for name in env:
        if name.startswith("BLOBTIER_") and name not in known and name not in ENV_NOT_FIELDS:
            near = difflib.get_close_matches(name, sorted(known | ENV_NOT_FIELDS), n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            raise InvalidRequest(f"environment variable {name} names no config field "
                                 f"(BLOBTIER_<SECTION>_<FIELD>, e.g. BLOBTIER_CACHE_L1_BYTES){hint}")


def _coerce(section: str, f: dataclasses.Field, value: Any) -> Any:
    name = f"{section}.{f.name}"
    kind = _kind(f)
    try:
        if f.name.endswith("_bytes") or f.name == "chunk_size":
            return parse_size(value, name)
        if kind == "tuple[str, ...]":
            return _str_tuple(value)
        if kind == "tuple[int, ...]":
            return tuple(int(_ascii(v)) for v in _int_list(value))
        if kind == "bool":
            return _bool(value)
        if kind == "int" and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(_ascii(value))
        if kind == "float" and not isinstance(value, bool):
            return float(_ascii(value))
        if kind == "str":
            return _text(value)
    except InvalidRequest:
        raise  # parse_size says what a size looks like
    except (TypeError, ValueError):
        pass
    else:
        if kind not in _KINDS:
            return value
    raise InvalidRequest(f"config field {name}: {_shown(value)} is not a valid {kind}")


def _ascii(value: Any) -> Any:
    """``value``, unless it is a string with non-ASCII characters: int() and float() take
    any Unicode digit ("１" or "٣"), which no config number should be written in."""
    if isinstance(value, str) and not value.isascii():
        raise ValueError(value)
    return value


def _digits(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` takes any Unicode digit)."""
    return text.isascii() and text.isdigit()


def _text(value: Any) -> str:
    """A string field: a string, or a path object (never a number or a table made one)."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str):
        raise TypeError(value)
    return text


def _str_tuple(value: Any) -> tuple[str, ...]:
    """A list of strings from TOML, or a comma-separated string (an environment variable)."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError(value)


def _int_list(value: Any) -> list[int]:
    """Ports from TOML (a list of integers) or an environment variable ("7000,7001")."""
    if isinstance(value, str):
        return [int(v) for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool)
                                                for v in value):
        return list(value)
    raise TypeError(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(value)


def from_mapping(data: Mapping[str, Any], *, env: Mapping[str, str] | None = None) -> RegionConfig:
    """Build and validate a RegionConfig; unknown sections or fields are errors."""
    env = os.environ if env is None else env
    merged: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    top: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, Mapping):
                raise InvalidRequest(f"config section [{key}] must be a table")
            merged[key].update(value)
        elif key == "root":
            top["root"] = _root(value)
        else:
            raise InvalidRequest(f"unknown config key {_shown(key)}")
    _check_env(env)
    for section, cls in _SECTIONS.items():
        names = {f.name for f in fields(cls)}
        for key in merged[section]:
            if key not in names:
                raise InvalidRequest(f"unknown config field {section}.{key}; "
                                     f"known: {', '.join(sorted(names))}")
        for f in fields(cls):
            env_value = env.get(f"BLOBTIER_{section.upper()}_{f.name.upper()}")
            if env_value is not None:
                merged[section][f.name] = env_value
    sections = {s: cls(**{f.name: _coerce(s, f, merged[s][f.name])
                          for f in fields(cls) if f.name in merged[s]})
                for s, cls in _SECTIONS.items()}
    return RegionConfig(**top, **sections).validate()


def _root(value: Any) -> str:
    try:
        root = _text(value)
    except TypeError:
        raise InvalidRequest(f"config field root must be a directory path (a string), "
                             f"got {_shown(value)}") from None
    _check(bool(root.strip()), "root", "must name a directory, not an empty string")
    for home in ("$BLOBTIER_HOME", "${BLOBTIER_HOME}"):  # the default home, set or not
        if root == home or root.startswith(home + "/"):
            root = default_home() + root[len(home):]
    return os.path.expanduser(root)


def load(path: str) -> RegionConfig:
    """Read a region TOML file (a relative ``root``, ``auth.token_file`` or ``tls`` file is
    taken relative to the file)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise InvalidRequest(f"{path}: not valid TOML: nested too deeply") from None
    here = os.path.dirname(os.path.abspath(path))
    if "root" in data:  # relative to the file; "" would silently be the file's directory
        root = _root(data["root"])
        data["root"] = root if os.path.isabs(root) else os.path.join(here, root)
    for section, name in _FILE_FIELDS:
        table = data.get(section)
        value = table.get(name) if isinstance(table, dict) else None
        if isinstance(value, str) and value and not os.path.isabs(value):
            table[name] = os.path.join(here, os.path.expanduser(value))
    return from_mapping(data)


# Paths a region TOML may give relative to itself.
_FILE_FIELDS = (("auth", "token_file"), ("tls", "ca"), ("tls", "cert"), ("tls", "key"))


def resolve(target: str | os.PathLike | RegionConfig | None) -> RegionConfig:
    """What ``connect()`` accepts: nothing (the default home), a region dir, a TOML file.

    The config as written; ``blobtier.runstate.resolve_running`` adds the services of a
    region that ``blobtier up`` is running.
    """
    if isinstance(target, RegionConfig):
        return target.validate()
    if target is None:
        return from_mapping({"root": default_home()})
    path = os.fspath(target)
    if not isinstance(path, str) or not path.strip():
        raise InvalidRequest(f"region {_shown(path)}: name a region directory or a region TOML file")
    return (load(path) if path.endswith(".toml")
            else from_mapping({"root": os.path.abspath(os.path.expanduser(path))}))


def with_overrides(config: RegionConfig, **sections: Mapping[str, Any]) -> RegionConfig:
    """A copy of ``config`` with some fields of some sections replaced (validated)."""
    changes = {}
    for section, values in sections.items():
        if section not in _SECTIONS:
            raise InvalidRequest(f"unknown config section {section!r}")
        current = getattr(config, section)
        known = {f.name: f for f in fields(current)}
        for k in values:
            if k not in known:
                raise InvalidRequest(f"unknown config field {section}.{k}; "
                                     f"known: {', '.join(sorted(known))}")
        changes[section] = replace(current, **{k: _coerce(section, known[k], v)
                                               for k, v in values.items()})
    return replace(config, **changes).validate()
