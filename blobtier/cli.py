"""The ``blobtier`` command line. User errors print one line and exit 1; no tracebacks.

This module is the wiring point for servers; it imports torch only inside ``demo``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence

from blobtier.errors import BlobtierError

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
STOP_GRACE_S = 5.0  # on SIGTERM a server refuses new calls and gives in-flight ones this long


def _connect(args: argparse.Namespace, creates: bool = False):
    """A client of ``--region``; unless the command ``creates`` a region, one naming a
    place that holds none is an error (a typo must not read as an empty region)."""
    from blobtier import connect
    from blobtier.region.browse import require_region
    from blobtier.runstate import resolve_running

    config = resolve_running(args.region)
    if not creates:
        require_region(config, args.region)
    return connect(config)


def _shown(text: str) -> str:
    """``text`` for one line of output: characters that are not printable (a newline in a
    key would split its line) escaped as in a Python literal. Characters the terminal's
    encoding cannot show are escaped when printed (``main``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def cmd_put(args: argparse.Namespace) -> None:
    with _connect(args, creates=True) as client:
        if args.file == "-":
            info = client.put(args.key, sys.stdin.buffer)
        else:
            with open(args.file, "rb") as f:
                info = client.put(args.key, f)
        print(f"{_shown(info.key)}\t{info.size}\tversion {info.version}")


def cmd_get(args: argparse.Namespace) -> None:
    with _connect(args) as client, client.open(args.key) as src:
        if args.file in (None, "-"):
            shutil.copyfileobj(src, sys.stdout.buffer, client.config.client.chunk_size)
            sys.stdout.buffer.flush()
        else:
            with open(args.file, "wb") as out:
                shutil.copyfileobj(src, out, client.config.client.chunk_size)


def cmd_ls(args: argparse.Namespace) -> None:
    from blobtier.region.browse import ls_lines

    with _connect(args) as client:
        # One directory level, printed page by page as the store answers (--recursive:
        # every key below); a subdirectory is one line however many keys it holds.
        entries = client.iter_ls(args.prefix) if args.recursive else client.iter_dir(args.prefix)
        for line in ls_lines(entries, args.prefix, long=args.long, human=args.human,
                             grouped=args.recursive and args.long, shown=_shown):
            print(line)


def cmd_du(args: argparse.Namespace) -> None:
    from blobtier.region.browse import du_lines, nothing_under, usage

    with _connect(args) as client:
        use = usage(client.iter_ls(args.prefix), args.prefix)
    if not use.total.blobs:
        raise nothing_under(args.prefix)
    print("\n".join(du_lines(use, args.prefix, args.human, _shown)))


def cmd_stat(args: argparse.Namespace) -> None:
    with _connect(args) as client:
        info = client.stat(args.key)
        for name in ("key", "size", "version", "created", "chunk_size", "chunks", "checksum"):
            print(f"{name:<11} {_shown(str(getattr(info, name)))}")
        for k, v in info.attrs.items():
            print(f"attr.{_shown(k):<6} {_shown(v)}")


def cmd_rm(args: argparse.Namespace) -> int:
    from blobtier.region.browse import remove_tree

    with _connect(args) as client:
        if not args.recursive:
            for key in args.keys:
                client.delete(key)
            return 0
        return remove_tree(client, args.keys, yes=args.yes, shown=_shown)


def cmd_ingest(args: argparse.Namespace) -> int:
    """Exit 1 when a file was skipped (a bad name, unreadable): the others are stored."""
    from blobtier.humanize import plural
    from blobtier.progress import progress_bar
    from blobtier.sdk.ingest import ingest, register

    with _connect(args, creates=True) as client, progress_bar("ingest", quiet=args.quiet) as show:
        if args.reference:
            report = register(client, args.src, args.dest, threads=args.threads, progress=show)
        else:
            report = ingest(client, args.src, args.dest, threads=args.threads, progress=show,
                            force=args.force)
    for path, why in report.skipped:
        print(f"blobtier: skipped {_shown(path)}: {_shown(why)}", file=sys.stderr)
    how = "registered by reference" if args.reference else "ingested"
    left_out = f" ({len(report.skipped)} skipped)" if report.skipped else ""
    if report.unchanged:
        left_out += (f"; {plural(report.unchanged, 'file')} unchanged, not written again "
                     "(--force rewrites)")
    print(f"{how} {plural(report.files, 'file')}, {plural(report.bytes, 'byte')} into "
          f"{_shown(args.dest)}{left_out}")
    return EXIT_ERROR if report.skipped else 0


def cmd_block_serve(args: argparse.Namespace) -> None:
    import signal

    from blobtier.blockstore_sim.chunk_server import ChunkServer

    server = ChunkServer(args.root, addr=f"{args.host}:{args.port}", server_id=args.id,
                         faults=_fault_profile(args), seed=args.seed, metrics_port=args.metrics_port,
                         auth=_token_table(args), tls=_server_tls(args), grants=_grant_ring(args))
    signal.signal(signal.SIGTERM, lambda *_: server.server.stop(STOP_GRACE_S))
    extra = f", metrics on 127.0.0.1:{server.metrics_port}" if server.metrics_port is not None else ""
    print(f"chunk server {args.id} serving {args.root} on {server.address}{extra}", flush=True)
    try:
        server.wait()
    finally:
        server.stop(STOP_GRACE_S)


def cmd_block_faults(args: argparse.Namespace) -> None:
    from blobtier.blockstore_sim.remote import RemoteChunkStore

    changes = {k: v for k, v in vars(_fault_args(args)).items() if v is not None}
    store = RemoteChunkStore(args.addr, timeout_s=10, token=_client_token(args), tls=_client_tls(args.region))
    try:
        state = (store.set_faults(reset=args.reset, **changes) if changes or args.reset
                 else store.fault_state())
    finally:
        store.close()
    print(f"chunk server {state.server_id} at {args.addr}")
    for name, value in state.profile.as_dict().items():
        print(f"  {name:<22} {value}")
    print("  counters: " + ", ".join(f"{k} {v}" for k, v in state.counters.items()))


def _token_table(args: argparse.Namespace):
    """The tokens a server started with ``--token-file`` accepts (None: it checks none)."""
    if not args.token_file:
        return None
    from blobtier.rpc.auth import TokenTable

    return TokenTable.load(args.token_file)


def _grant_ring(args: argparse.Namespace):
    """The region key ring of a server started with ``--grant-key-file`` (None: it needs
    and signs no grants; ``blobtier/grants.py``)."""
    if not args.grant_key_file:
        return None
    from blobtier.grants import KeyRing

    return KeyRing.load(args.grant_key_file)


def _add_grant_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grant-key-file", default=None, metavar="PATH",
                   help="the region key (0600): sign (meta) or require (data services) grants "
                        "for every chunk (blobtier/grants.py)")


def _client_token(args: argparse.Namespace) -> str | None:
    """The token this command presents: ``auth.token`` of ``--region``, or
    ``$BLOBTIER_AUTH_TOKEN``."""
    from blobtier.config import resolve

    return resolve(args.region).auth.token or None


def _client_tls(region: str | None):
    """The TLS a command connects with: ``[tls]`` of ``region``, or of the region
    ``blobtier up`` runs there (``tls.mode = "auto"``); None: plaintext."""
    from blobtier.rpc.tls import Tls
    from blobtier.runstate import resolve_running

    return Tls.from_config(resolve_running(region).tls)


def _server_tls(args: argparse.Namespace):
    """What a server serves with ``--tls-cert``/``--tls-key`` (None: plaintext), checking
    clients against ``--tls-ca``; also what it presents when it calls other servers."""
    import os

    from blobtier.errors import InvalidRequest
    from blobtier.rpc.tls import Tls

    if not (args.tls_ca or args.tls_cert or args.tls_key or args.tls_require_client_cert):
        return None
    for flag, path in (("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not os.path.isfile(path):
            raise InvalidRequest(f"{flag} names no file: {path}")
    if not (args.tls_cert and args.tls_key):
        raise InvalidRequest("a TLS server needs both --tls-cert and --tls-key")
    if args.tls_require_client_cert and not args.tls_ca:
        raise InvalidRequest("--tls-require-client-cert needs --tls-ca (client certificates are "
                             "verified against it)")
    return Tls(args.tls_cert, args.tls_key, args.tls_ca, args.tls_require_client_cert)


def _add_tls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="serve TLS with this certificate chain")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="the certificate's private key file")
    p.add_argument("--tls-ca", default=None, metavar="PEM",
                   help="the CA client certificates are verified against (and, calling other "
                        "servers, theirs)")
    p.add_argument("--tls-require-client-cert", action="store_true",
                   help="refuse clients without a certificate signed by --tls-ca (mutual TLS)")


def _fault_args(args: argparse.Namespace) -> argparse.Namespace:
    """The fault flags given (None where not), with --down/--up folded into ``down``."""
    down = True if args.down else (False if args.up else None)
    return argparse.Namespace(latency_ms=args.latency_ms, tail_p=args.tail_p,
                              tail_factor=args.tail_factor, bandwidth_bytes_per_s=args.bandwidth,
                              error_rate=args.error_rate, corrupt_rate=args.corrupt_rate, down=down)


def _fault_profile(args: argparse.Namespace):
    from blobtier.blockstore_sim.faults import FaultProfile

    return FaultProfile(**{k: v for k, v in vars(_fault_args(args)).items() if v is not None})


def _add_fault_flags(p: argparse.ArgumentParser) -> None:
    from blobtier.config import parse_size

    p.add_argument("--latency-ms", type=float, help="added before each request is served")
    p.add_argument("--tail-p", type=float, help="share of requests that are stragglers (0-1)")
    p.add_argument("--tail-factor", type=float, help="a straggler waits this many times --latency-ms")
    p.add_argument("--bandwidth", type=parse_size, metavar="BYTES_PER_S",
                   help="cap on bytes per second, e.g. 100MiB (0: none)")
    p.add_argument("--error-rate", type=float, help="share of requests answered UNAVAILABLE (0-1)")
    p.add_argument("--corrupt-rate", type=float, help="share of reads with one byte flipped (0-1)")
    updown = p.add_mutually_exclusive_group()
    updown.add_argument("--down", action="store_true", help="refuse every request")
    updown.add_argument("--up", action="store_true", help="serve again")


def cmd_flash_serve(args: argparse.Namespace) -> None:
    import signal
    from contextlib import ExitStack

    from blobtier.config import FlashNodeConfig, parse_size
    from blobtier.flash_l3.service import FlashNode

    config = FlashNodeConfig(args.dir, parse_size(args.capacity, "--capacity"),
                             region_bytes=parse_size(args.region_size, "--region-size"),
                             admission=args.admission, reinsert_hits=args.reinsert_hits,
                             addr=f"{args.host}:{args.port}", node_id=args.id,
                             metrics_port=args.metrics_port)
    with ExitStack() as stack:  # closed in reverse: the node first, then what it read from
        source = _flash_source(args)
        stack.callback(source.close)
        origins, metadata = _flash_origins(args)
        if metadata is not None:
            stack.callback(metadata.close)
        node = FlashNode(config, source, auth=_token_table(args), origins=origins,
                         tls=_server_tls(args), grants=_grant_ring(args))
        stack.callback(node.stop, STOP_GRACE_S)  # writes the index snapshot: the next start is warm
        if metadata is not None:  # the namespaces' L3 shares, read again while it serves
            from blobtier.sdk.namespaces import SettingsRefresher, l3_shares

            stack.callback(SettingsRefresher(metadata, lambda specs: node.cache.set_namespace_shares(
                l3_shares(specs))).close)
        signal.signal(signal.SIGTERM, lambda *_: node.server.stop(STOP_GRACE_S))
        stats = node.cache.stats()
        extra = f", metrics on 127.0.0.1:{node.metrics_port}" if node.metrics_port is not None else ""
        print(f"flash node {args.id} serving {args.dir} ({int(stats['entries'])} entries from "
              f"{node.cache.recovered_from}) on {node.address}{extra}", flush=True)
        node.wait()


def _flash_origins(args: argparse.Namespace):
    """The origins a flash node may read through from: ``--origin`` prefixes, and those
    registered in the metadata of ``--region`` (then also the metadata store to close)."""
    import os

    from blobtier.origins import OriginAllowList

    region = args.flash_region or args.region
    if not region:
        return OriginAllowList(args.origin), None
    from blobtier.config import resolve
    from blobtier.metadata.rocksdb_store import RocksDBStore

    root = resolve(region).root
    store = RocksDBStore(os.path.join(root, "metadata"), scratch_dir=os.path.join(root, "tmp"))
    try:
        return OriginAllowList(args.origin, store.origins), store
    except BaseException:
        store.close()
        raise


def _flash_source(args: argparse.Namespace):
    """The block layer a flash node reads its misses from: ``--block-endpoints`` (in the
    region's ``block.endpoints`` order: records name chunk servers by position), else the
    region's own chunk servers, or the block directories of an embedded region. Blobs
    registered by reference are read from their origin."""
    import os

    from blobtier.blockstore_sim.replicated import ReadPolicy, ReplicatedBlockStore
    from blobtier.errors import InvalidRequest
    from blobtier.runstate import resolve_running
    from blobtier.sdk.routing import RoutingSource

    region = args.flash_region or args.region
    if not args.block_endpoints and not region:
        raise InvalidRequest("name the block layer to read misses from: --block-endpoints or --region")
    if args.block_endpoints:
        endpoints, root = [a.strip() for a in args.block_endpoints.split(",") if a.strip()], ""
    else:
        config = resolve_running(region)
        endpoints, root = list(config.block.endpoints), config.root
    if endpoints:
        from blobtier.blockstore_sim.remote import RemoteChunkStore

        token, tls = _client_token(args), _outgoing_tls(args)
        servers = {sid: RemoteChunkStore(addr, token=token, tls=tls) for sid, addr in enumerate(endpoints)}
    else:
        from blobtier.blockstore_sim.volume import VolumeStore

        blocks = os.path.join(root, "blocks")
        if not os.path.isdir(blocks):
            raise InvalidRequest(f"region {root} has no chunk servers and no blocks/ directory")
        servers = {int(n): VolumeStore(os.path.join(blocks, n)) for n in sorted(os.listdir(blocks))
                   if n.isdigit()}
    # Read-only: a node never writes the block layer, so one "replica" and no writable servers.
    policy = ReadPolicy(hedge_after_ms=args.hedge_after_ms)
    return RoutingSource(ReplicatedBlockStore(servers, 1, writable_ids=(), policy=policy))


def _outgoing_tls(args: argparse.Namespace):
    """What a server presents when it calls others (a flash node its chunk servers, a
    host's daemon what it fills from): its own certificate, trusting ``--tls-ca``; without
    that flag, the ``[tls]`` of ``--region``."""
    from blobtier.rpc.tls import Tls

    if args.tls_ca:
        return Tls(args.tls_cert, args.tls_key, args.tls_ca)
    region = getattr(args, "flash_region", None) or args.region
    return _client_tls(region) if region else None


def cmd_meta_serve(args: argparse.Namespace) -> None:
    import signal

    from blobtier.metadata.service import MetadataServer, open_backend

    auth = _token_table(args)
    store = open_backend(args.backend)
    try:
        server = MetadataServer(store, addr=f"{args.host}:{args.port}", metrics_port=args.metrics_port,
                                auth=auth, tls=_server_tls(args), grants=_grant_ring(args))
    except BaseException:
        store.close()
        raise
    signal.signal(signal.SIGTERM, lambda *_: server.server.stop(STOP_GRACE_S))
    extra = f", metrics on 127.0.0.1:{server.metrics_port}" if server.metrics_port is not None else ""
    print(f"metadata service serving {store.where} on {server.address}{extra}", flush=True)
    try:
        server.wait()
    finally:
        server.stop(STOP_GRACE_S)  # then closes the store: RocksDB's writer lock goes with it


def cmd_daemon(args: argparse.Namespace) -> None:
    from blobtier.cache_l1_l2.daemon import HostDaemon
    from blobtier.config import parse_endpoint, parse_size
    from blobtier.errors import InvalidRequest

    peers = tuple(p.strip() for p in (args.peers or "").split(",") if p.strip())
    for peer in peers:
        if parse_endpoint(peer, "--peers")[0] != peer:
            raise InvalidRequest(f"--peers: {peer!r} must be host:port (peers have no weights)")
    from blobtier.cache_l1_l2.owner import parse_namespace_policies

    namespace_policies = parse_namespace_policies(args.namespace_policy)
    source = None
    if args.fill_block_endpoints:  # the chunks homed here are read through (region/hosts.py)
        import os

        from blobtier.region.hosts import home_source

        source = home_source(_csv(args.fill_block_endpoints), _csv(args.fill_flash_endpoints or ""),
                             token=os.environ.get("BLOBTIER_AUTH_TOKEN") or None, tls=_outgoing_tls(args))
    daemon = HostDaemon(parse_size(args.memory, "--memory"), args.policy, args.socket,
                        args.metrics_port, listen=args.listen, peers=peers,
                        namespace_policies=namespace_policies, auth=_token_table(args),
                        tls=_server_tls(args), fill_source=source, host_id=args.host_id or "",
                        grants=_grant_ring(args))
    extra = f", metrics on 127.0.0.1:{daemon.metrics_port}" if daemon.metrics_port else ""
    if daemon.peer_server is not None:
        extra += f", L2 peers served on {daemon.peer_server.address}"
    refresher = None
    if args.daemon_region:  # the namespaces' L1 shares and policies, read again while it serves
        from blobtier.sdk.namespaces import SettingsRefresher, l1_settings

        refresher = SettingsRefresher(lambda: _region_metadata(args.daemon_region),
                                      lambda specs: daemon.owner.configure_namespaces(*l1_settings(specs)))
    try:
        daemon.serve_until_signalled(ready=lambda: print(
            f"blobtier daemon: {args.memory} L1 ({args.policy}) on {daemon.socket_path}{extra}", flush=True))
    finally:
        if refresher is not None:
            refresher.close()


def _region_metadata(region: str):
    """A reader of ``region``'s metadata (its RocksDB, or its metadata service or Redis)."""
    import os

    from blobtier.runstate import resolve_running

    config = resolve_running(region)
    if config.metadata.remote:
        from blobtier.sdk.stores import RegionStores

        return RegionStores(config).shared_metadata()
    from blobtier.metadata.rocksdb_store import RocksDBStore

    return RocksDBStore(os.path.join(config.root, "metadata"), scratch_dir=os.path.join(config.root, "tmp"))


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def cmd_gc(args: argparse.Namespace) -> None:
    from blobtier.humanize import plural

    with _connect(args) as client:
        report = client.gc(args.grace, force=args.force)
        print(f"live chunks {report.live_chunks}, deleted {plural(report.deleted_chunks, 'replica')}, "
              f"spared {report.spared_young} younger than the grace period, "
              f"{report.reclaimed_bytes:,} bytes of disk given back")


NS_FLAGS = ("--quota-bytes", "--quota-blobs", "--ttl", "--l1-share", "--l3-share", "--policy")


def cmd_ns(args: argparse.Namespace) -> None:
    from blobtier.sdk.namespaces import run_command

    flags = {f: getattr(args, f[2:].replace("-", "_"), None) for f in NS_FLAGS}
    with _connect(args) as client:
        print("\n".join(run_command(client.namespaces, args.ns_command, getattr(args, "name", None), flags)))


def cmd_scrub(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry, write_to_textfile

    from blobtier.metrics import serve_metrics, stop_metrics
    from blobtier.progress import progress_bar
    from blobtier.sdk.scrub import ScrubMetrics

    registry = CollectorRegistry()
    metrics = ScrubMetrics(registry)
    http = serve_metrics(args.metrics_port, registry) if args.metrics_port is not None else None
    try:
        with _connect(args) as client, progress_bar("scrub", "blobs", quiet=args.quiet) as show:
            report = client.scrub(args.prefix, repair=args.repair, progress=show, threads=args.threads,
                                  metrics=metrics)
    finally:
        if http is not None:
            stop_metrics(http)
    if args.metrics_file:
        write_to_textfile(args.metrics_file, registry)
    print("\n".join(report.table()))
    return 0 if report.clean else 1  # 1: a replica is still missing, corrupt or unverified


def cmd_demo(args: argparse.Namespace) -> None:
    from blobtier import connect, demo
    from blobtier.runstate import resolve_running

    config = resolve_running(args.demo_region or args.region)
    if args.demo_region:  # the demo against a region: L1 below the dataset, so L3 serves too
        config = demo.with_l1_below(config, args.samples)
    with connect(config) as client:
        recorder = None
        if args.report or args.json:
            from blobtier.region.report import recorder_for

            recorder = recorder_for(client).start()
        epochs = demo.run(client, samples=args.samples, epochs=args.epochs, workers=args.workers,
                          batch_size=args.batch_size)
    if recorder is not None:
        from blobtier.region.report import save_run

        record = {"source": "blobtier demo", "epochs": epochs, "timeline": recorder.stop()}
        print("\n".join(save_run(record, args.json, args.report)))


def cmd_report(args: argparse.Namespace) -> None:
    from blobtier.region import report

    if args.source:
        record = report.load(args.source)
    else:
        from blobtier.config import resolve

        record = report.record_region(resolve(args.region).root, args.duration, args.interval)
    print("\n".join(report.save_run(record, None, args.out)))


def cmd_plan(args: argparse.Namespace) -> int:
    from blobtier.plan.command import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blobtier", description=__doc__.splitlines()[0])
    parser.add_argument("--region", "-r", default=None,
                        help="region directory or region TOML (default: $BLOBTIER_HOME or ~/.blobtier)")
    parser.add_argument("--host", dest="client_host", default=None, metavar="host-N",
                        help="in a region of simulated hosts, the one this command runs on "
                             "(default: $BLOBTIER_HOST, else host-0)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help: str, **kw) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, **kw)
        p.set_defaults(func=func)
        return p

    p = add("put", cmd_put, "store a file (or stdin with -) as KEY")
    p.add_argument("file")
    p.add_argument("key")
    p = add("get", cmd_get, "write KEY's bytes to FILE (default stdout)")
    p.add_argument("key")
    p.add_argument("file", nargs="?")
    # -h is --human, as in `ls -lh`; --help stays.
    p = add("ls", cmd_ls, "list PREFIX's directory: blobs (size, version, created, key) and "
                          "subdirectories (dir); exit 1 when nothing matches", conflict_handler="resolve")
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument("-r", "--recursive", action="store_true", help="every blob under PREFIX instead")
    p.add_argument("-l", "--long", action="store_true",
                   help="end with a total (with -r: blobs grouped under a heading per directory)")
    p.add_argument("-h", "--human", action="store_true", help="sizes in KiB, MiB, GiB")
    p = add("du", cmd_du, "bytes and blobs under PREFIX, per subdirectory, and the total",
            conflict_handler="resolve")
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument("-h", "--human", action="store_true", help="sizes in KiB, MiB, GiB")
    p = add("stat", cmd_stat, "show one blob's metadata")
    p.add_argument("key")
    p = add("rm", cmd_rm, "delete blobs (-r: every blob under each PREFIX)")
    p.add_argument("keys", nargs="+", metavar="key")
    p.add_argument("-r", "--recursive", action="store_true",
                   help="the arguments are prefixes: delete every blob under them (asks first)")
    p.add_argument("-y", "--yes", action="store_true", help="with -r: delete without asking")
    p = add("ingest", cmd_ingest, "copy a directory or fsspec URL into DEST_PREFIX")
    p.add_argument("src")
    p.add_argument("dest", metavar="DEST_PREFIX")
    p.add_argument("--threads", type=int, default=8, help="parallel file readers")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--reference", action="store_true",
                   help="register the objects where they are (checksummed, not copied); reads "
                        "fetch byte ranges of SRC")
    p.add_argument("--force", action="store_true",
                   help="write every file again, even one whose size and checksums match the "
                        "key's current version (skipped by default)")
    p = add("gc", cmd_gc, "reclaim chunks no blob references any more")
    p.add_argument("--grace", type=float, default=None,
                   help="spare chunks younger than this many seconds (default: config)")
    p.add_argument("--force", action="store_true",
                   help="collect even when the metadata lists no blob while chunk servers hold "
                        "chunks (refused by default: lost metadata looks like that)")
    p = add("ns", None, "namespaces as managed objects: quotas, TTL, L1/L3 shares, policy")
    ns = p.add_subparsers(dest="ns_command", required=True, metavar="SUBCOMMAND")
    for name, what in (("create", "create namespace NAME"), ("set", "change namespace NAME ('none' clears)"),
                       ("show", "show NAME's settings and usage"), ("ls", "every namespace and its usage")):
        p = ns.add_parser(name, help=what, description=what)
        p.set_defaults(func=cmd_ns)
        if name != "ls":
            p.add_argument("name")
        if name in ("create", "set"):
            p.add_argument("--quota-bytes", metavar="SIZE", help="most bytes, e.g. 50GiB")
            p.add_argument("--quota-blobs", metavar="N", help="most blobs")
            p.add_argument("--ttl", metavar="DURATION", help="blobs expire this long after commit, e.g. 7d")
            p.add_argument("--l1-share", metavar="FRACTION", help="L1 kept for it, e.g. 0.3 or 30%%")
            p.add_argument("--l3-share", metavar="FRACTION", help="L3 flash kept for it, e.g. 0.5")
            p.add_argument("--policy", metavar="NAME", help="L1 eviction policy, e.g. clairvoyant")
    p = add("scrub", cmd_scrub, "read every replica of the blobs under PREFIX and verify it; "
                                "--repair writes good copies back (exit 1 unless all are good)")
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument("--repair", action="store_true",
                   help="write a verified copy to each server of a chunk's placement that lost or "
                        "damaged its own (embedded: takes the writer lock on the first repair)")
    p.add_argument("--threads", type=int, default=8, help="chunks checked at once")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve the blobtier_scrub_* counters on 127.0.0.1:PORT while it runs")
    p.add_argument("--metrics-file", default=None, metavar="PATH",
                   help="write the blobtier_scrub_* counters to PATH at the end (node_exporter "
                        "textfile format)")
    p = add("block", None, "simulated chunk servers: serve one, or change one's faults")
    block = p.add_subparsers(dest="block_command", required=True, metavar="SUBCOMMAND")
    p = block.add_parser("serve", help="serve a chunk server's volume directory over gRPC")
    p.set_defaults(func=cmd_block_serve)
    p.add_argument("--root", required=True, help="the server's disk (a directory)")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    p.add_argument("--id", type=int, default=0, help="server id, reported by the admin RPC")
    p.add_argument("--seed", type=int, default=None, help="seed of the fault draws")
    p.add_argument("--token-file", default=None, metavar="TOML",
                   help="check a bearer token with the call's right on every call (rpc/auth.py)")
    _add_grant_flag(p)
    _add_tls_flags(p)
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on 127.0.0.1:PORT (0: any free port)")
    _add_fault_flags(p)
    p = block.add_parser("faults", help="show or change the faults of the chunk server at ADDR")
    p.set_defaults(func=cmd_block_faults)
    p.add_argument("addr", help="host:port")
    p.add_argument("--reset", action="store_true", help="clear every fault and counter first")
    _add_fault_flags(p)
    p = add("flash", None, "regional flash cache nodes (L3)")
    flash = p.add_subparsers(dest="flash_command", required=True, metavar="SUBCOMMAND")
    p = flash.add_parser("serve", help="serve a flash cache directory over gRPC, reading misses "
                                       "through from the block layer")
    p.set_defaults(func=cmd_flash_serve)
    p.add_argument("--dir", required=True, help="the cache directory (region files, index snapshot)")
    p.add_argument("--capacity", required=True, help="most bytes of region files, e.g. 50GiB")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    p.add_argument("--id", type=int, default=0, help="node id, reported by Stats")
    p.add_argument("--region-size", default="64MiB", help="bytes per region file")
    p.add_argument("--admission", default="all", help="all, second-hit or random")
    p.add_argument("--reinsert-hits", type=int, default=0,
                   help="keep entries read this often when their region is reclaimed (0: FIFO only)")
    p.add_argument("--block-endpoints", default=None, metavar="HOST:PORT,...",
                   help="chunk servers to read misses from, in the region's block.endpoints order")
    p.add_argument("--region", dest="flash_region", default=None, metavar="DIR_OR_TOML",
                   help="the region whose registered origins to read through from, and (without "
                        "--block-endpoints) whose block layer: its chunk servers, or an embedded "
                        "region's block directories")
    p.add_argument("--origin", action="append", default=[], metavar="URL_PREFIX",
                   help="also read blobs registered by reference under this fsspec URL prefix "
                        "(repeatable); a record naming any other origin is refused")
    p.add_argument("--hedge-after-ms", type=float, default=0.0,
                   help="reads from chunk servers: hedge after this long (0: automatic, < 0: never)")
    p.add_argument("--token-file", default=None, metavar="TOML",
                   help="check a bearer token with the call's right on every call (rpc/auth.py)")
    _add_grant_flag(p)
    _add_tls_flags(p)
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on 127.0.0.1:PORT (0: any free port)")
    p = add("meta", None, "the metadata service (many processes and hosts share one region)")
    meta = p.add_subparsers(dest="meta_command", required=True, metavar="SUBCOMMAND")
    p = meta.add_parser("serve", help="serve a metadata store over gRPC: a RocksDB directory (this "
                                      "server is its one writer) or Redis (stateless: run several)")
    p.set_defaults(func=cmd_meta_serve)
    p.add_argument("--backend", required=True, metavar="rocksdb:DIR|redis://HOST:PORT[,...]",
                   help="the store: rocksdb:DIR, or redis://HOST:PORT[,HOST:PORT...][?prefix=...] "
                        "(a node or any nodes of a Redis Cluster)")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    p.add_argument("--token-file", default=None, metavar="TOML",
                   help="check a bearer token with the call's right on every call (rpc/auth.py)")
    _add_grant_flag(p)
    _add_tls_flags(p)
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on 127.0.0.1:PORT (0: any free port)")
    p = add("daemon", cmd_daemon, "run the host cache daemon (the shared-memory L1 of this host)")
    p.add_argument("--listen", default=None, metavar="HOST:PORT",
                   help="serve this arena to the cluster's other daemons as their L2")
    p.add_argument("--peers", default=None, metavar="HOST:PORT,...",
                   help="the cluster's daemons as each --listens (the same list on every host)")
    p.add_argument("--fill-block-endpoints", default=None, metavar="HOST:PORT,...",
                   help="with --listen: read a chunk homed here that peers miss through from these "
                        "chunk servers (block.endpoints order), once however many ask")
    p.add_argument("--fill-flash-endpoints", default=None, metavar="HOST:PORT,...",
                   help="...through these flash nodes (L3) first")
    p.add_argument("--host-id", default=None, help="the simulated host this daemon is (host-N)")
    p.add_argument("--memory", default="1GiB", help="the L1's memory cap, e.g. 16GiB")
    p.add_argument("--policy", default="sieve", help="eviction: sieve, lru, keep, clairvoyant")
    p.add_argument("--namespace-policy", action="append", default=[], metavar="NAMESPACE=POLICY",
                   help="evict NAMESPACE's chunks by POLICY instead of --policy (repeatable)")
    p.add_argument("--region", dest="daemon_region", default=None, metavar="REGION",
                   help="apply the L1 shares and policies of REGION's namespaces (blobtier ns), "
                        "read again every 10 s")
    p.add_argument("--socket", default=None, help="Unix socket for local clients "
                                                   "(default: the well-known one clients look for)")
    p.add_argument("--token-file", default=None, metavar="TOML",
                   help="check a bearer token with the call's right on every call (rpc/auth.py)")
    _add_grant_flag(p)
    _add_tls_flags(p)
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on 127.0.0.1:PORT (0: any free port)")
    p = add("demo", cmd_demo, "ingest a synthetic dataset and train a small model through the cache")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--region", dest="demo_region", default=None, metavar="DIR_OR_TOML",
                   help="run against this region (e.g. one started by `blobtier up`)")
    p.add_argument("--report", default=None, metavar="HTML",
                   help="at the end, write the run's plots (blobtier report) to this file")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="at the end, write the run's record (per epoch, and sampled over time) "
                        "for `blobtier report --from`")
    p = add("report", cmd_report, "plot a run as HTML: samples/s, data stall, hit ratio per tier, "
                                  "block egress, L1/L3 fill")
    p.add_argument("--from", dest="source", default=None, metavar="JSON",
                   help="a run recorded by `blobtier demo --json` (or a benchmark's --out JSON with "
                        "epoch rows); default: sample the running --region's endpoints")
    p.add_argument("--out", required=True, metavar="HTML", help="where to write the report")
    p.add_argument("--duration", type=float, default=60.0,
                   help="without --from: seconds to sample the region (run your job meanwhile)")
    p.add_argument("--interval", type=float, default=1.0, help="without --from: seconds between samples")
    p = add("plan", cmd_plan, "what-if: predict tier hit ratios, block egress and data stall of a "
                              "region's caches over a synthetic or recorded trace")
    from blobtier.plan.command import add_arguments as add_plan_arguments

    add_plan_arguments(p)
    from blobtier.region.commands import add_commands

    add_commands(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.client_host:  # as $BLOBTIER_HOST: every client this command opens is on that host
        import os

        os.environ["BLOBTIER_HOST"] = args.client_host
    for stream in (sys.stdout, sys.stderr):  # a key the terminal cannot encode prints escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        sys.stderr.close()  # e.g. `blobtier get KEY | head`
        return 0
    except (BlobtierError, OSError, ValueError) as exc:
        print(f"blobtier: error: {_shown(str(exc) or type(exc).__name__)}", file=sys.stderr)
        return EXIT_ERROR
    return code or 0  # a command may return its own status (e.g. status: 1 if one is unhealthy)


if __name__ == "__main__":
    sys.exit(main())
