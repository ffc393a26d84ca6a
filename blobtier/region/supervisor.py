"""Start, watch and stop a region's processes (``blobtier up`` / ``status`` / ``down``).

``up`` starts every service as a detached child (its own session, so it outlives the
command and a Ctrl-C in the terminal), waits until each answers its health check, then
writes the state file. If any service fails to start, everything started is stopped, no
state file is written, and the error carries the tail of that service's log. ``down``
sends SIGTERM (each service finishes its in-flight requests; flash nodes write their index
snapshot, so the next ``up`` is warm), waits, and escalates to SIGKILL after
``services.stop_timeout_s``. ``restart`` brings back one service (or every one that died)
in a running region, on the same ports, and records its new pid; ``down`` stops every pid
the state file records, then any blobtier process of ours still listening on one of the
region's ports (a service restarted by hand), so no port stays bound.

With ``metadata.backend = "redis-cluster"`` the Redis nodes start first and are formed
into one cluster (``redis.py``) before the rest start (a metadata server connects to it as
it starts); ``down`` stops them last and keeps their data for the next ``up``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from blobtier import runstate as state
from blobtier import tlsconf
from blobtier.config import REDIS_BUS_OFFSET, REDIS_MASTERS, RegionConfig
from blobtier.errors import InvalidRequest, RegionLocked, TierUnavailable
from blobtier.fsutil import private_dir, private_file
from blobtier.lockfile import LockFile
from blobtier.region import ports, probe, redis
from blobtier.region.services import (
    ServiceSpec,
    check_directories,
    client_tls_files,
    flash_dir,
    redis_dir,
    redis_root,
    specs,
)
from blobtier.rpc.tls import Tls
from blobtier.runstate import RegionState, ServiceRecord, pid_alive

LOG_TAIL_LINES = 20
Say = Callable[[str], None]


@dataclass
class _Started:
    spec: ServiceSpec
    proc: subprocess.Popen
    started: float
    log_offset: int  # where this run's output begins in the log

    def record(self) -> ServiceRecord:
        s = self.spec
        return ServiceRecord(s.name, s.kind, self.proc.pid, s.address, s.metrics_port, s.socket,
                             self.started, s.log)


def _lock(root: str) -> LockFile:
    lock = LockFile(os.path.join(root, "run", "supervisor.lock"), f"region {root} (up/down)")
    lock.acquire()
    return lock


def up(config: RegionConfig, say: Say = print) -> RegionState:
    """Start the region's services and wait until every one is healthy."""
    root = config.root
    check_directories(config)
    lock = _lock(root)
    try:
        _refuse_if_running(root, say)
        _refuse_if_embedded_writer(root)
        todo = specs(config)
        _check_ports_free(config.services.host, todo)
        _check_metadata_data(config, todo)
        for d in ("logs", "run", *(os.path.join("blocks", f"{i:03d}") for i in range(config.block.servers))):
            private_dir(os.path.join(root, d))
        for j in range(config.services.flash_nodes):
            private_dir(os.path.join(flash_dir(config), f"{j:03d}"))
        for n in range(config.metadata.redis_nodes):
            private_dir(redis_dir(config, n))
        _make_certificates(config, todo, renew=True)
        _make_grant_key(config)
        started = _start(config, todo, say)
        region = RegionState(root, services=[s.record() for s in started], tls=client_tls_files(config))
        state.write(region)
        for s in region.services:
            say(f"started {s.name:<8} pid {s.pid:<7} {s.address or s.socket}"
                + (f"  metrics :{s.metrics_port}" if s.metrics_port else ""))
        return region
    finally:
        lock.release()


def _start(config: RegionConfig, todo: list[ServiceSpec], say: Say,
           launched: Callable[[list[_Started]], None] = lambda _: None) -> list[_Started]:
    """Start ``todo`` and wait until each is healthy: the Redis nodes first, formed into one
    cluster, then the rest (a metadata server connects to the cluster as it starts).
    ``launched`` sees the processes started so far after each launch. If one fails,
    every process this call started is stopped."""
    started: list[_Started] = []
    try:
        for phase in ([s for s in todo if s.kind == "redis"], [s for s in todo if s.kind != "redis"]):
            if not phase:
                continue
            batch = [_launch(spec) for spec in phase]
            started += batch
            launched(started)
            _wait_healthy(batch, config.services.start_timeout_s, probe.client_tls(client_tls_files(config)))
            if phase[0].kind == "redis":
                _form_cluster(config, say)
    except BaseException:
        _stop([s.record() for s in started], 5.0, lambda _: None)
        raise
    return started


def _make_certificates(config: RegionConfig, todo: list[ServiceSpec], renew: bool) -> None:
    """``tls.mode = "auto"``: the region CA and a certificate for each service of ``todo``
    and for clients, naming every address they are dialled at (Redis: no TLS, loopback)."""
    if config.tls.mode != "auto":
        return
    served = [s for s in todo if s.kind != "redis"]
    hosts = [config.services.host] + [s.address.rpartition(":")[0].strip("[]") for s in served if s.address]
    tlsconf.make_region(config.root, [s.name for s in served], tlsconf.default_hosts(hosts), renew=renew)


def _make_grant_key(config: RegionConfig) -> None:
    """With tokens, the region key its services sign and check grants with (0600, kept
    across restarts; ``blobtier/grants.py``)."""
    from blobtier.region.services import grant_key_file, uses_grants

    if uses_grants(config):
        from blobtier.grants import KeyRing

        KeyRing.create(grant_key_file(config))


def _form_cluster(config: RegionConfig, say: Say) -> None:
    """The region's Redis nodes, all answering, as one healthy cluster with every replica
    in sync (a metadata server that WAITs for replicas refuses to start without them)."""
    nodes = [s.address for s in specs(config) if s.kind == "redis"]
    timeout = config.services.start_timeout_s
    if not os.path.exists(redis.layout_path(redis_root(config))):
        redis.reset_unused(nodes)  # an `up` stopped while it joined them: they never served
    if redis.form(nodes, REDIS_MASTERS, timeout):
        redis.write_layout(redis_root(config), [int(a.rpartition(":")[2]) for a in nodes],
                           config.metadata.replicas)
        say(f"formed a Redis Cluster of {REDIS_MASTERS} masters with {config.metadata.replicas} "
            f"replicas each under {redis_root(config)}")
    redis.wait_replicas(nodes, config.metadata.replicas, timeout)


def _check_metadata_data(config: RegionConfig, todo: list[ServiceSpec]) -> None:
    """Before starting Redis nodes: they go where the region's cluster ran, and a first
    cluster does not hide the records of the region's embedded metadata."""
    nodes = [s for s in todo if s.kind == "redis"]
    if not nodes:
        return
    data = redis_root(config)
    redis.check_layout(data, [int(s.address.rpartition(":")[2]) for s in nodes], config.metadata.replicas)
    embedded = os.path.join(config.root, "metadata")
    if os.path.exists(redis.layout_path(data)) or not os.path.isdir(embedded):
        return
    from blobtier.metadata.rocksdb_store import RocksDBStore

    store = RocksDBStore(embedded, scratch_dir=os.path.join(config.root, "run"))
    try:
        holds = bool(store.scan("", None, 1))
    finally:
        store.close()
    if holds:
        raise InvalidRequest(f"config field metadata.backend is redis-cluster, but the region's blobs "
                             f"are recorded in its embedded metadata ({embedded}); a new cluster "
                             "would not know them (and gc would reclaim their chunks). Moving them "
                             "is not supported: keep backend embedded for this region")


def _refuse_if_running(root: str, say: Say) -> None:
    old = state.read(root)
    if old is None:
        return
    alive = old.alive()
    if alive:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(old.started))
        dead = [s.name for s in old.services if s not in alive]
        hint = f"; `blobtier restart` brings back {', '.join(dead)}" if dead else ""
        raise RegionLocked(f"region {root} is already up since {since} ({len(alive)} services, "
                           f"pids {' '.join(str(s.pid) for s in alive)}); `blobtier down` stops it"
                           + hint)
    say(f"removing the state file of a region that is no longer running ({state.path(root)})")
    _remove_sockets(old.services)
    state.remove(root)


def _refuse_if_embedded_writer(root: str) -> None:
    """A process writing the region embedded writes the chunk directories itself; chunk
    servers must not open them at the same time."""
    writer = LockFile(os.path.join(root, "writer.lock"), f"region {root}")
    try:
        writer.acquire()
    except RegionLocked:
        raise RegionLocked(f"region {root} is open for writing by {writer.holder()}; close it "
                           "before `blobtier up` (its chunk directories are about to be served)") from None
    writer.release()


def _check_ports_free(host: str, todo: list[ServiceSpec]) -> None:
    for spec in todo:
        ports = [(spec.address.rsplit(":", 1)[1], "")] if spec.address else []
        ports += [(str(spec.metrics_port), " metrics")] if spec.metrics_port else []
        where = spec.address.rpartition(":")[0] if spec.kind == "daemon" and spec.address else host
        if spec.kind == "redis":  # on loopback, whatever services.host says
            where = redis.HOST
            ports.append((str(int(ports[0][0]) + REDIS_BUS_OFFSET), " cluster bus"))
        for port, what in ports:
            with socket.socket(socket.AF_INET6 if ":" in where else socket.AF_INET) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
                try:
                    s.bind((where, int(port)))
                except OSError as exc:
                    raise InvalidRequest(f"port {port} for {spec.name}{what} on {where} is not free "
                                         f"({exc.strerror}); change services.base_port or the "
                                         "explicit ports") from None


def _launch(spec: ServiceSpec) -> _Started:
    private_dir(os.path.dirname(spec.log))
    with private_file(spec.log, "ab") as log:
        offset = log.tell()
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(spec.argv)}\n".encode())
        log.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1", **spec.env)
        # A session of its own: the service outlives `up` and ignores the terminal's Ctrl-C.
        # Redis creates its files with the umask; blobtier's services make theirs private.
        proc = subprocess.Popen(spec.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, env=env,
                                umask=0o077 if spec.kind == "redis" else -1)
    return _Started(spec, proc, time.time(), offset)


def _wait_healthy(started: list[_Started], timeout_s: float, tls: Tls | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(started)
    while pending:
        for s in list(pending):
            code = s.proc.poll()
            if code is not None:
                raise TierUnavailable(f"{s.spec.name} exited with status {code} while starting; "
                                      f"{_tail(s)}")
            if probe.health(s.spec.kind, s.proc.pid, s.spec.address, s.spec.socket,
                            timeout_s=0.5, tls=tls) == probe.SERVING:
                pending.remove(s)
        if pending and time.monotonic() > deadline:
            names = ", ".join(s.spec.name for s in pending)
            raise TierUnavailable(f"{names} not healthy after {timeout_s:.0f}s (services.start_timeout_s); "
                                  f"{_tail(pending[0])}")
        if pending:
            time.sleep(0.1)


def _tail(s: _Started) -> str:
    try:
        with open(s.spec.log, "rb") as f:
            f.seek(s.log_offset)
            lines = f.read().decode(errors="replace").splitlines()[1:]  # past the header
    except OSError as exc:
        return f"its log {s.spec.log} is unreadable: {exc}"
    body = "\n".join("  | " + line for line in lines[-LOG_TAIL_LINES:]) or "  | (empty)"
    return f"the end of {s.spec.log}:\n{body}"


# -- stopping ----------------------------------------------------------------------------
def down(root: str, timeout_s: float, say: Say = print, config: RegionConfig | None = None) -> RegionState:
    """Stop every service of the region at ``root`` (SIGTERM, then SIGKILL after ``timeout_s``),
    and any blobtier process of ours still holding one of its ports or its socket. With no
    state file (an ``up`` killed before it wrote one), ``config`` says which ports to free."""
    lock = _lock(root)
    try:
        region = state.read(root)
        known = region.services if region is not None else _unrecorded(config)
        if region is not None:
            _stop(region.services, timeout_s, say)
        strays = _strays(known)
        if region is None and not strays:
            raise InvalidRequest(f"no region is up at {root} (no {state.path(root)})")
        for s in strays:
            say(f"{s.name:<8} pid {s.pid:<7} is not in the state file but holds the region's port "
                "or socket: stopping it")
        _stop(strays, timeout_s, say)
        state.remove(root)
        for port, pid in ports.holders(set(_region_ports(known))).items():
            say(f"warning: port {port} is still bound by pid {pid}, not a blobtier service of yours")
        return region if region is not None else RegionState(root, services=strays)
    finally:
        lock.release()


def _unrecorded(config: RegionConfig | None) -> list[ServiceRecord]:
    """The services ``config`` describes, as records without a pid: where to look for strays."""
    if config is None:
        return []
    return [ServiceRecord(s.name, s.kind, 0, s.address, s.metrics_port, s.socket, 0.0, s.log)
            for s in specs(config)]


def _stop(services: list[ServiceRecord], timeout_s: float, say: Say) -> None:
    """SIGTERM in reverse start order (clients of the block layer before it), then wait."""
    order = list(reversed(services))
    t0 = time.monotonic()
    live = [s for s in order if pid_alive(s.pid)]
    for s in live:
        _signal(s.pid, signal.SIGTERM)
    for s in order:
        if s not in live:
            say(f"{s.name:<8} pid {s.pid:<7} was not running")
            continue
        how = "stopped"
        if not _wait_gone(s.pid, t0 + timeout_s):
            _signal(s.pid, signal.SIGKILL)
            _wait_gone(s.pid, time.monotonic() + 10)
            how = "killed (SIGKILL)"
        say(f"{how} {s.name:<8} pid {s.pid:<7} in {time.monotonic() - t0:.1f}s")
    _remove_sockets(services)


def _region_ports(services: list[ServiceRecord]) -> dict[int, str]:
    """Every TCP port the region's services listen on -> the service's name."""
    out: dict[int, str] = {}
    for s in services:
        if s.address:
            out[int(s.address.rsplit(":", 1)[1])] = s.name
        if s.metrics_port:
            out[s.metrics_port] = s.name
    return out


def _strays(services: list[ServiceRecord]) -> list[ServiceRecord]:
    """Blobtier processes of ours that ``services`` do not name but that hold one of their
    ports or sockets (a service restarted by hand), each as the service it stands in for."""
    by_port = _region_ports(services)
    named = {s.name: s for s in services}
    found: dict[int, ServiceRecord] = {}
    for port, pid in ports.holders(set(by_port)).items():
        found.setdefault(pid, replace(named[by_port[port]], pid=pid))
    for s in services:
        pid = _socket_holder(s.socket) if s.socket else None
        if pid is not None:
            found.setdefault(pid, replace(s, pid=pid))
    return [s for pid, s in found.items() if pid != os.getpid() and pid_alive(pid)]


def _socket_holder(path: str) -> int | None:
    """The pid of the daemon answering on ``path``, if one does."""
    if not os.path.exists(path):
        return None
    from blobtier.cache_l1_l2.daemon import daemon_info

    info = daemon_info(path)
    return info.get("pid") if info else None


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, deadline: float) -> bool:
    while True:
        _reap(pid)
        if not pid_alive(pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _reap(pid: int) -> None:
    """Collect the exit of a service that is our own child (started by this process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _remove_sockets(services: list[ServiceRecord]) -> None:
    """A daemon killed before it could clean up leaves its socket file."""
    for s in services:
        if s.socket and os.path.exists(s.socket) and not pid_alive(s.pid):
            try:
                os.unlink(s.socket)
            except FileNotFoundError:
                pass


# -- restarting --------------------------------------------------------------------------
def restart(config: RegionConfig, names: Sequence[str] = (), say: Say = print) -> list[ServiceRecord]:
    """Bring back services of the region running at ``config.root``: the ones ``names``
    (stopped first if they run), else every one that is dead or does not answer. They
    start as ``up`` starts them, on the same ports, and their new pids are recorded in the
    state file at once, so ``down`` stops them whatever happens next. If one fails to
    become healthy, those this call started are stopped and the error carries its log's
    tail. Returns the new records."""
    root = config.root
    lock = _lock(root)
    try:
        region = state.read(root)
        if region is None:
            raise InvalidRequest(f"no region is up at {root} (no {state.path(root)}); "
                                 "`blobtier up` starts one")
        todo = _to_restart(region, names)
        if not todo:
            say(f"every service of region {root} is running; name one to restart it anyway")
            return []
        todo_specs = _specs_of(config, todo)
        alive = [r for r in todo if pid_alive(r.pid)]
        if alive:
            _stop(alive, config.services.stop_timeout_s, say)
        _remove_sockets(todo)  # a daemon killed by SIGKILL leaves its socket file
        for record, spec in zip(todo, todo_specs):
            _check_port_free_for(config, record, spec)
        _make_certificates(config, todo_specs, renew=False)  # the running ones' CA
        _make_grant_key(config)  # the running ones' key, or a new one if it is gone
        at = {spec.name: region.services.index(record) for record, spec in zip(todo, todo_specs)}

        def record(started: list[_Started]) -> None:
            for s in started:
                region.services[at[s.spec.name]] = s.record()
            state.write(region)  # before waiting: a service that hangs while starting is still ours

        started = _start(config, todo_specs, say, record)
        for s in started:
            say(f"restarted {s.spec.name:<8} pid {s.proc.pid:<7} {s.spec.address or s.spec.socket}")
        return [s.record() for s in started]
    finally:
        lock.release()


def _to_restart(region: RegionState, names: Sequence[str]) -> list[ServiceRecord]:
    if not names:
        tls = probe.client_tls(region.tls)
        return [s for s in region.services if probe.service_health(s, tls) in (probe.DEAD, probe.UNREACHABLE)]
    by_name = {s.name: s for s in region.services}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise InvalidRequest(f"region {region.root} has no service {unknown[0]!r}; its services are "
                             + ", ".join(by_name))
    return [by_name[n] for n in dict.fromkeys(names)]


def _specs_of(config: RegionConfig, records: list[ServiceRecord]) -> list[ServiceSpec]:
    """How to start each service again: as the config says, which must still put it where
    it runs (clients and flash nodes know it by that address)."""
    wanted = {spec.name: spec for spec in specs(config)}
    out = []
    for record in records:
        spec = wanted.get(record.name)
        if spec is None or (spec.address, spec.socket) != (record.address, record.socket):
            now = "nothing" if spec is None else (spec.address or spec.socket)
            raise InvalidRequest(f"{record.name} runs at {record.address or record.socket} but the "
                                 f"config now says {now}; `blobtier down` then `blobtier up` applies it")
        out.append(spec)
    return out


def _check_port_free_for(config: RegionConfig, record: ServiceRecord, spec: ServiceSpec) -> None:
    try:
        _check_ports_free(config.services.host, [spec])
    except InvalidRequest as exc:
        held = ports.holders(set(_region_ports([record])))
        who = "".join(f"; pid {pid} listens on {port}" for port, pid in held.items())
        raise InvalidRequest(f"cannot restart {record.name}: {exc}{who}") from None


# -- watching ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceStatus:
    record: ServiceRecord
    health: str
    uptime_s: float


def status(root: str) -> list[ServiceStatus]:
    region = state.read(root)
    if region is None:
        raise InvalidRequest(f"no region is up at {root} (no {state.path(root)}); `blobtier up` starts one")
    now = time.time()
    tls = probe.client_tls(region.tls)
    return [ServiceStatus(s, probe.service_health(s, tls), now - s.started) for s in region.services]


def format_status(rows: list[ServiceStatus]) -> list[str]:
    lines = [f"{'service':<9} {'pid':>7}  {'address':<30} {'metrics':>7}  {'health':<12} {'uptime':>9}"]
    for r in rows:
        s = r.record
        where = s.address or s.socket or ""
        if len(where) > 30:
            where = "..." + where[-27:]
        metrics = str(s.metrics_port) if s.metrics_port else "-"
        lines.append(f"{s.name:<9} {s.pid:>7}  {where:<30} {metrics:>7}  {r.health:<12} "
                     f"{_duration(r.uptime_s):>9}")
    return lines


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
