"""What ``blobtier up`` runs: one ``ServiceSpec`` per process, derived from the config.

Layout under the region root (beside the embedded region's ``metadata/`` and ``blocks/``)::

    blocks/NNN/     chunk server NNN's volumes (the directories an embedded client writes)
    flash/NNN/      flash node NNN's regions and index snapshot (``services.flash_dir``)
    redis/NNN/      Redis node NNN's nodes.conf and AOF (metadata.backend redis-cluster; redis.py)
    logs/<name>.log each service's stdout and stderr
    run/region.json the state file (``state.py``); run/daemon.sock the daemon's socket
    run/grant.key   the region key signing grants (0600; with auth.token_file and meta_servers)

Every service is ``python -m blobtier.cli ...`` with the same interpreter as ``up``, but
the Redis nodes (``redis-server``).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from blobtier import tlsconf
from blobtier.cache_l1_l2.l1 import socket_dir
from blobtier.config import RegionConfig
from blobtier.errors import InvalidRequest
from blobtier.tlsconf import TlsFiles

MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes, the last a NUL


@dataclass(frozen=True)
class ServiceSpec:
    name: str  # redis-0, meta-0, block-0, flash-0, daemon
    kind: str  # redis, meta, block, flash, daemon
    argv: list[str]
    address: str | None  # host:port it serves gRPC on
    metrics_port: int | None
    socket: str | None
    log: str
    env: dict[str, str] = field(default_factory=dict)  # more environment for the process


def _under(root: str, path: str, default: str) -> str:
    """``path`` (relative to root), or ``root/default`` when empty."""
    return os.path.join(root, os.path.expanduser(path) if path else default)


def daemon_socket(config: RegionConfig) -> str:
    """``services.daemon_socket``, else ``<root>/run/daemon.sock``, else (a root too deep
    for a Unix socket path) a short path named after the root in this user's socket dir."""
    if config.services.daemon_socket:
        return _under(config.root, config.services.daemon_socket, "")
    path = os.path.join(config.root, "run", "daemon.sock")
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(os.path.abspath(config.root))).hexdigest()[:16]
    return os.path.join(socket_dir(), f"region-{digest}.sock")


def uses_grants(config: RegionConfig) -> bool:
    """Grants need tokens and a metadata service to sign them: clients of a region's
    RocksDB opened directly have nothing to sign their reads (the Unix user is the
    boundary there)."""
    return bool(config.auth.token_file) and config.services.meta_servers > 0


def grant_key_file(config: RegionConfig) -> str:
    """The region key that signs and checks grants (``blobtier/grants.py``); a path in
    argv, the key itself only in the file."""
    return os.path.join(config.root, "run", "grant.key")


def flash_dir(config: RegionConfig) -> str:
    return _under(config.root, config.services.flash_dir, "flash")


def block_dir(root: str, sid: int) -> str:
    return os.path.join(root, "blocks", f"{sid:03d}")


def redis_root(config: RegionConfig) -> str:
    return os.path.join(config.root, "redis")


def redis_dir(config: RegionConfig, n: int) -> str:
    return os.path.join(redis_root(config), f"{n:03d}")


def specs(config: RegionConfig) -> list[ServiceSpec]:
    """The region's services in start order: the Redis nodes, the metadata servers, chunk
    servers in id order, flash nodes, the daemon."""
    sc, root = config.services, config.root
    cli = [sys.executable, "-m", "blobtier.cli"]
    logs = os.path.join(root, "logs")
    ports = sc.ports(config.block.servers, config.metadata.redis_nodes)
    # Every server checks the token file; a flash node reads chunk servers with auth.token.
    # A service given TLS files serves with them and presents them when it calls others.
    token_file = ["--token-file", config.auth.token_file] if config.auth.token_file else []
    if uses_grants(config):  # the metadata service signs grants, data services check them
        token_file += ["--grant-key-file", grant_key_file(config)]

    def auth(name: str) -> list[str]:
        return token_file + tls_flags(config, name)

    token_env = {"BLOBTIER_AUTH_TOKEN": config.auth.token} if config.auth.token else {}
    out = _metadata_specs(config, ports, cli + ["meta", "serve"], auth)
    endpoints = []
    for i in range(config.block.servers):
        port, metrics = ports[f"block-{i}"]
        argv = [*cli, "block", "serve", "--root", block_dir(root, i), "--host", sc.host,
                "--port", str(port), "--id", str(i), *_metrics_flag(metrics), *auth(f"block-{i}")]
        endpoints.append(f"{sc.host}:{port}")
        out.append(ServiceSpec(f"block-{i}", "block", argv, endpoints[-1], metrics, None,
                               os.path.join(logs, f"block-{i}.log")))
    for j in range(sc.flash_nodes):
        port, metrics = ports[f"flash-{j}"]
        argv = [*cli, "flash", "serve", "--dir", os.path.join(flash_dir(config), f"{j:03d}"),
                "--capacity", str(sc.flash_capacity_bytes), "--region-size", str(sc.flash_region_bytes),
                "--admission", sc.flash_admission, "--host", sc.host, "--port", str(port),
                "--id", str(j), "--block-endpoints", ",".join(endpoints), "--region", root,
                *_metrics_flag(metrics), *auth(f"flash-{j}")]
        out.append(ServiceSpec(f"flash-{j}", "flash", argv, f"{sc.host}:{port}", metrics, None,
                               os.path.join(logs, f"flash-{j}.log"), token_env))
    if sc.daemon and sc.hosts > 1:
        flash = [s.address for s in out if s.kind == "flash"]
        out += _host_specs(config, ports, cli + ["daemon"], endpoints, flash, auth, token_env)
    elif sc.daemon:
        _, metrics = ports["daemon"]
        sock = daemon_socket(config)
        argv = [*cli, "daemon", "--memory", str(sc.daemon_memory_bytes), "--policy", sc.daemon_policy,
                "--socket", sock, "--region", root, *_metrics_flag(metrics), *auth("daemon")]
        if sc.daemon_peer_port:  # L2: this host's arena served to the other hosts' daemons
            argv += ["--listen", f"{sc.host}:{sc.daemon_peer_port}"]
            if sc.daemon_peers:
                argv += ["--peers", ",".join(sc.daemon_peers)]
        out.append(ServiceSpec("daemon", "daemon", argv, None, metrics, sock,
                               os.path.join(logs, "daemon.log")))
    return out


def host_socket(config: RegionConfig, n: int) -> str:
    """The socket of host ``n``'s daemon: the region's daemon socket with ``-n`` added."""
    stem, ext = os.path.splitext(daemon_socket(config))
    return f"{stem}-{n}{ext}"


def _host_specs(config: RegionConfig, ports: dict[str, tuple[int | None, int | None]], daemon: list[str],
                block: list[str], flash: list[str], auth: Callable[[str], list[str]],
                env: dict[str, str]) -> list[ServiceSpec]:
    """A daemon per simulated host (``region/hosts.py``): each the others' L2 peer, each
    reading the chunks homed at it through from the flash nodes and chunk servers."""
    from blobtier.region.hosts import host_address, host_id

    sc, logs = config.services, os.path.join(config.root, "logs")
    names = [f"daemon-{h}" for h in range(sc.hosts)]
    listen = [f"{host_address(sc.host, h)}:{ports[name][0]}" for h, name in enumerate(names)]
    out = []
    for h, name in enumerate(names):
        argv = [*daemon, "--memory", str(sc.daemon_memory_bytes), "--policy", sc.daemon_policy,
                "--socket", host_socket(config, h), "--region", config.root, "--host-id", host_id(h),
                "--listen", listen[h],
                "--peers", ",".join(listen), "--fill-block-endpoints", ",".join(block),
                *(["--fill-flash-endpoints", ",".join(flash)] if flash else []),
                *_metrics_flag(ports[name][1]), *auth(name)]
        out.append(ServiceSpec(name, "daemon", argv, listen[h], ports[name][1], host_socket(config, h),
                               os.path.join(logs, f"{name}.log"), env))
    return out


def _metadata_specs(config: RegionConfig, ports: dict[str, tuple[int | None, int | None]],
                    serve: list[str], auth: Callable[[str], list[str]]) -> list[ServiceSpec]:
    """The Redis nodes (``metadata.backend`` redis-cluster) and the metadata servers over
    them, or over the region's RocksDB (``<root>/metadata``, as embedded clients open it)."""
    from blobtier.region import redis

    sc, logs = config.services, os.path.join(config.root, "logs")
    out = []
    nodes = [f"redis-{n}" for n in range(config.metadata.redis_nodes)]
    if nodes:
        server = redis.redis_server()
        for n, name in enumerate(nodes):
            port = ports[name][0]
            out.append(ServiceSpec(name, "redis", redis.server_argv(server, port, redis_dir(config, n)),
                                   f"{redis.HOST}:{port}", None, None, os.path.join(logs, f"{name}.log")))
        # Any node leads a client to the others; with replicas, every commit waits for one.
        backend = "redis://" + ",".join(s.address for s in out)
        backend += f"?wait_replicas={config.metadata.replicas}" if config.metadata.replicas else ""
    else:
        backend = "rocksdb:" + os.path.join(config.root, "metadata")
    for i in range(sc.meta_servers):
        port, metrics = ports[f"meta-{i}"]
        argv = [*serve, "--backend", backend, "--host", sc.host, "--port", str(port),
                *_metrics_flag(metrics), *auth(f"meta-{i}")]
        out.append(ServiceSpec(f"meta-{i}", "meta", argv, f"{sc.host}:{port}", metrics, None,
                               os.path.join(logs, f"meta-{i}.log")))
    return out


def tls_files(config: RegionConfig, name: str) -> TlsFiles | None:
    """The TLS files service ``name`` serves with (None: plaintext): ``up`` makes them
    under the run directory (``tls.mode = "auto"``), or the config names them."""
    tc = config.tls
    if tc.mode == "auto":
        return tlsconf.files_of(config.root, name)
    return TlsFiles(tc.ca, tc.cert, tc.key) if tc.enabled else None


def client_tls_files(config: RegionConfig) -> dict[str, str] | None:
    """What the region's clients connect with (the state file's ``tls``)."""
    files = tls_files(config, tlsconf.CLIENT)
    return None if files is None else {"ca": files.ca, "cert": files.cert, "key": files.key}


def tls_flags(config: RegionConfig, name: str) -> list[str]:
    """File paths only: key material never goes into argv."""
    files = tls_files(config, name)
    if files is None:
        return []
    flags = ["--tls-ca", files.ca, "--tls-cert", files.cert, "--tls-key", files.key]
    return flags + (["--tls-require-client-cert"] if config.tls.require_client_cert else [])


def _metrics_flag(port: int | None) -> list[str]:
    return [] if port is None else ["--metrics-port", str(port)]


def check_directories(config: RegionConfig) -> None:
    """Before ``up``: the directories the config names exist, servers have a certificate
    to serve TLS with, and no chunk data lies beyond the chunk servers it would start (its
    blobs would become unreadable)."""
    if config.tls.enabled and not config.tls.cert:
        raise InvalidRequest("config field tls.cert is empty, but tls.ca is set: the services `blobtier up` "
                             "starts serve TLS with tls.cert and tls.key")
    if config.services.flash_dir and not os.path.isdir(flash_dir(config)):
        raise InvalidRequest(f"config field services.flash_dir names {flash_dir(config)}, "
                             "which is not a directory")
    sock_dir = os.path.dirname(daemon_socket(config))
    if config.services.daemon_socket and not os.path.isdir(sock_dir):
        raise InvalidRequest(f"config field services.daemon_socket: directory {sock_dir} does not exist")
    blocks = os.path.join(config.root, "blocks")
    ids = sorted(int(n) for n in os.listdir(blocks) if n.isdigit()) if os.path.isdir(blocks) else []
    beyond = [i for i in ids if i >= config.block.servers]
    if beyond:
        raise InvalidRequest(f"config field block.servers is {config.block.servers}, but {blocks} "
                             f"holds chunks of server {beyond[0]}: set it to at least {ids[-1] + 1}")
