"""The state file of a region started by ``blobtier up``, and how clients attach to it.

``<root>/run/region.json`` (written atomically by ``up``, removed by ``down``)::

    {"version": 1, "started": 1718000000.0, "root": "/data/region",
     "services": [{"name": "block-0", "kind": "block", "pid": 4242,
                   "address": "127.0.0.1:7400", "metrics_port": 7500,
                   "socket": null, "started": 1718000000.1, "log": "/data/region/logs/block-0.log"},
                  ...],
     "tls": {"ca": ".../run/tls/ca.pem", "cert": ".../client.pem", "key": ".../client.key"}}

Chunk servers are listed in id order (a blob record names its replicas by server id =
position in ``block.endpoints``). The rule clients follow (``attach``): while any process
of the file is alive, every client of that root reads through the running services (its
metadata through the metadata servers, ``metadata.endpoints``, or without them through the
region's Redis nodes, ``metadata.redis``); fields the config sets explicitly
(``block.endpoints``, ``flash.endpoints``, ``metadata.endpoints`` or ``metadata.redis``, a
``cache.daemon`` other than ``auto``, ``tls.ca`` or ``tls.mode = "off"``) win. ``tls`` (null
when the services speak plaintext) names the files clients connect with, never their
contents. With no state file, or only dead processes in it, the region is opened
embedded: the same chunk directories, read and written directly.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace

from blobtier.config import MetadataConfig, RegionConfig, TlsConfig, resolve
from blobtier.fsutil import private_dir

VERSION = 1


@dataclass(frozen=True)
class ServiceRecord:
    name: str  # redis-0, meta-0, block-0, flash-0, daemon
    kind: str  # redis, meta, block, flash, daemon
    pid: int
    address: str | None  # host:port of a gRPC service
    metrics_port: int | None
    socket: str | None  # the daemon's Unix socket
    started: float  # seconds since the epoch
    log: str


@dataclass
class RegionState:
    root: str
    started: float = field(default_factory=time.time)
    services: list[ServiceRecord] = field(default_factory=list)
    # The files the region's clients connect with ({"ca", "cert", "key"}: paths, never key
    # material), when its services serve TLS; None: plaintext.
    tls: dict[str, str] | None = None

    def of_kind(self, kind: str) -> list[ServiceRecord]:
        return [s for s in self.services if s.kind == kind]

    def alive(self) -> list[ServiceRecord]:
        return [s for s in self.services if pid_alive(s.pid)]

    def to_json(self) -> str:
        return json.dumps({"version": VERSION, "started": self.started, "root": self.root,
                           "services": [asdict(s) for s in self.services], "tls": self.tls}, indent=1)


def path(root: str) -> str:
    return os.path.join(root, "run", "region.json")


def read(root: str) -> RegionState | None:
    """The state file under ``root``, or None if there is none."""
    try:
        with open(path(root)) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OSError(f"{path(root)}: unreadable region state ({exc}); remove it if no "
                      "region is running") from None
    return RegionState(data["root"], data["started"], [ServiceRecord(**s) for s in data["services"]],
                       data.get("tls"))


def write(state: RegionState) -> None:
    """Publish atomically: a reader sees the old file or the new one, never half."""
    target = path(state.root)
    private_dir(os.path.dirname(target))
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".region-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(state.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def remove(root: str) -> None:
    try:
        os.unlink(path(root))
    except FileNotFoundError:
        pass


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is still one of our services: it runs (a zombie, dead but not yet
    reaped, does not) and is a blobtier process (after a reboot the pid may be another's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: not a service we started
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"blobtier" in f.read()
    except (OSError, IndexError):
        return True  # no /proc to ask: trust the signal


def resolve_running(target: str | os.PathLike | RegionConfig | None) -> RegionConfig:
    """``config.resolve(target)``, reading through the region's services if ``blobtier up``
    runs them: endpoints the config does not set come from the state file under its root."""
    return attach(resolve(target))


def attach(config: RegionConfig) -> RegionConfig:
    """``config`` reading through the services running for its root, if any (see above)."""
    try:
        state = read(config.root)
    except OSError:
        return config
    if state is None or not state.alive():
        return config
    block, flash, cache = config.block, config.flash, config.cache
    if not block.endpoints and state.of_kind("block"):
        block = replace(block, endpoints=tuple(s.address for s in state.of_kind("block")))
    if not flash.endpoints and state.of_kind("flash"):
        flash = replace(flash, endpoints=tuple(s.address for s in state.of_kind("flash")))
    daemon = host_daemon(config, state)
    if cache.daemon == "auto" and daemon is not None and daemon.socket:
        cache = replace(cache, daemon=daemon.socket)
    metadata = _metadata(config, state)
    tls = _tls(config, state)
    if (block, flash, cache, metadata, tls) == (config.block, config.flash, config.cache, config.metadata,
                                                config.tls):
        return config
    return replace(config, block=block, flash=flash, cache=cache, metadata=metadata, tls=tls).validate()


def _tls(config: RegionConfig, state: RegionState) -> TlsConfig:
    """The region's client certificate files (``tls.mode = "auto"``, or files its config
    named), unless the config names its own or says ``off``."""
    tc = config.tls
    if tc.mode == "off" or tc.ca or not state.tls:
        return tc
    return TlsConfig(ca=state.tls["ca"], cert=state.tls.get("cert", ""), key=state.tls.get("key", ""))


def host_daemon(config: RegionConfig, state: RegionState) -> ServiceRecord | None:
    """The daemon of the host this client is on: ``cache.host``, else ``$BLOBTIER_HOST``
    (``host-N`` or ``N``), else the first. A region of simulated hosts names its daemons
    ``daemon-N`` (``region/hosts.py``); a single host's is ``daemon``, host 0.

    Raises ``InvalidRequest`` for a host the region does not run, naming those it runs."""
    daemons = state.of_kind("daemon")
    wanted = config.cache.host or os.environ.get("BLOBTIER_HOST", "")
    if not wanted:
        return daemons[0] if daemons else None
    n = wanted.removeprefix("host-")
    by_host = {s.name.removeprefix("daemon").lstrip("-") or "0": s for s in daemons}
    if n not in by_host:
        from blobtier.errors import InvalidRequest

        where = "cache.host" if config.cache.host else "BLOBTIER_HOST"
        hosts = ", ".join(f"host-{h}" for h in by_host) or "none"
        raise InvalidRequest(f"{where} is {wanted!r}, but region {state.root} runs hosts: {hosts}")
    return by_host[n]


def _metadata(config: RegionConfig, state: RegionState) -> MetadataConfig:
    """The region's metadata servers as ``metadata.endpoints``, else its Redis nodes as
    ``metadata.redis``, unless the config names remote metadata itself."""
    md = config.metadata
    if md.remote:
        return md
    if state.of_kind("meta"):
        return replace(md, endpoints=tuple(s.address for s in state.of_kind("meta")))
    if state.of_kind("redis"):
        return replace(md, redis=tuple(s.address for s in state.of_kind("redis")))
    return md
