"""Typed configuration: one frozen dataclass per part, with defaults, units and checks.

``load(path)`` reads a region TOML file; ``from_mapping`` builds from a dict; both apply
the environment overlay ``BLOBTIER_<SECTION>_<FIELD>`` (e.g. ``BLOBTIER_CACHE_L1_BYTES=1GiB``)
and explicit arguments win over both. Any bad value stops startup with a ``InvalidRequest``
naming the field; nothing falls back to defaults silently.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from blobtier.checksum import ALGORITHMS
from blobtier.errors import InvalidRequest

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
_UNITS = {"": 1, "b": 1, "k": KiB, "kb": 1000, "kib": KiB, "m": MiB, "mb": 10**6, "mib": MiB,
          "g": GiB, "gb": 10**9, "gib": GiB, "t": TiB, "tb": 10**12, "tib": TiB}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(value: int | str, what: str = "size") -> int:
    """``4194304``, ``"4MiB"``, ``"50GiB"``, ``"1.5G"`` -> bytes."""
    if isinstance(value, bool):
        raise InvalidRequest(f"{what}: expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidRequest(f"{what}: size must not be negative, got {value}")
        return value
    m = _SIZE.fullmatch(str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise InvalidRequest(f"{what}: {value!r} is not a size like 4MiB or 50GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def default_home() -> str:
    return os.environ.get("BLOBTIER_HOME") or os.path.join(os.path.expanduser("~"), ".blobtier")


@dataclass(frozen=True)
class MetadataConfig:
    block_cache_bytes: int = 64 * MiB  # RocksDB block cache, per process
    row_cache_bytes: int = 128 * MiB  # RocksDB row cache: repeat lookups skip the tables

    def validate(self) -> None:
        pass


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
        for addr in self.endpoints:
            host, _, port = addr.rpartition(":")
            _check(bool(host) and port.isdigit() and 0 < int(port) < 65536, "block.endpoints",
                   f"entry {addr!r} is not host:port")
        _check(len(set(self.endpoints)) == len(self.endpoints), "block.endpoints", "lists a server twice")
        servers = len(self.endpoints) or self.servers
        _check(self.servers >= 1, "block.servers", "must be at least 1")
        _check(1 <= self.replicas <= servers, "block.replicas",
               f"must be between 1 and the number of chunk servers ({servers})")
        _check(self.volume_bytes >= 1 * MiB, "block.volume_bytes", "must be at least 1MiB")
        _check(0 <= self.write_quorum <= self.replicas, "block.write_quorum",
               f"must be between 0 (all) and block.replicas ({self.replicas})")
        _check(self.read_concurrency >= 1, "block.read_concurrency", "must be at least 1")
        _check(self.max_retries >= 0, "block.max_retries", "must not be negative")
        _check(self.request_timeout_s > 0, "block.request_timeout_s", "must be positive")


@dataclass(frozen=True)
class CacheConfig:
    l1_bytes: int = 512 * MiB  # host L1 (shared memory) when no daemon runs; 0: none
    l1_policy: str = "sieve"
    daemon: str = "auto"  # host daemon socket: auto (the well-known one if it answers), off, or a path

    def validate(self) -> None:
        from blobtier.eviction import POLICIES

        _check(self.l1_policy in POLICIES, "cache.l1_policy", f"must be one of {sorted(POLICIES)}")
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
        _check(4 * KiB <= self.chunk_size <= 64 * MiB, "client.chunk_size",
               "must be between 4KiB and 64MiB")
        _check(self.checksum in ALGORITHMS, "client.checksum", f"must be one of {sorted(ALGORITHMS)}")
        _check(self.readahead_chunks >= 0, "client.readahead_chunks", "must not be negative")
        _check(self.prefetch_threads >= 1, "client.prefetch_threads", "must be at least 1")
        _check(self.metadata_staleness_s >= 0, "client.metadata_staleness_s", "must not be negative")
        _check(self.gc_grace_s >= 0, "client.gc_grace_s", "must not be negative")


def parse_endpoint(entry: str, field_name: str = "endpoint") -> tuple[str, float]:
    """``"host:port"`` or ``"host:port@weight"`` -> (``"host:port"``, weight)."""
    addr, at, weight = entry.partition("@")
    host, _, port = addr.rpartition(":")
    _check(bool(host) and port.isdigit() and 0 < int(port) < 65536, field_name,
           f"entry {entry!r} is not host:port or host:port@weight")
    if not at:
        return addr, 1.0
    try:
        w = float(weight)
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

    def nodes(self) -> list[tuple[str, float]]:
        return [parse_endpoint(e, "flash.endpoints") for e in self.endpoints]

    def validate(self) -> None:
        addrs = [addr for addr, _ in self.nodes()]
        _check(len(set(addrs)) == len(addrs), "flash.endpoints", "lists a node twice")
        _check(self.request_timeout_s > 0, "flash.request_timeout_s", "must be positive")
        _check(self.retry_after_s > 0, "flash.retry_after_s", "must be positive")


@dataclass(frozen=True)
class RegionConfig:
    root: str = field(default_factory=default_home)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    block: BlockConfig = field(default_factory=BlockConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    flash: FlashConfig = field(default_factory=FlashConfig)

    def validate(self) -> RegionConfig:
        _check(bool(self.root), "root", "must name a directory")
        self.metadata.validate()
        self.block.validate()
        self.cache.validate()
        self.client.validate()
        self.flash.validate()
        return self


_SECTIONS = {"metadata": MetadataConfig, "block": BlockConfig, "cache": CacheConfig, "client": ClientConfig,
             "flash": FlashConfig}


def _check(ok: bool, name: str, why: str) -> None:
    if not ok:
        raise InvalidRequest(f"config field {name} {why}")


def _coerce(section: str, f: dataclasses.Field, value: Any) -> Any:
    name = f"{section}.{f.name}"
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if f.name.endswith("_bytes") or f.name == "chunk_size":
            return parse_size(value, name)
        if kind == "tuple[str, ...]":
            return _str_tuple(value)
        if kind == "int" and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float" and not isinstance(value, bool):
            return float(value)
        if kind == "str":
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        if kind not in ("int", "float", "str", "tuple[str, ...]"):
            return value
    raise InvalidRequest(f"config field {name}: {value!r} is not a valid {kind}")


def _str_tuple(value: Any) -> tuple[str, ...]:
    """A list of strings from TOML, or a comma-separated string (an environment variable)."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError(value)


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
            top["root"] = os.path.expanduser(str(value))
        else:
            raise InvalidRequest(f"unknown config key {key!r}")
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


def load(path: str) -> RegionConfig:
    """Read a region TOML file (a relative ``root`` is taken relative to the file)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequest(f"{path}: not valid TOML: {exc}") from None
    root = data.get("root")
    if root is not None and not os.path.isabs(os.path.expanduser(str(root))):
        data["root"] = os.path.join(os.path.dirname(os.path.abspath(path)), str(root))
    return from_mapping(data)


def resolve(target: str | os.PathLike | RegionConfig | None) -> RegionConfig:
    """What ``connect()`` accepts: nothing (the default home), a region dir, a TOML file."""
    if isinstance(target, RegionConfig):
        return target.validate()
    if target is None:
        return from_mapping({"root": default_home()})
    path = os.fspath(target)
    if path.endswith(".toml"):
        return load(path)
    return from_mapping({"root": os.path.abspath(os.path.expanduser(path))})


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
