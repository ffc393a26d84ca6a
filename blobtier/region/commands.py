"""The region's commands: ``up``, ``down``, ``restart``, ``status``, ``top`` and ``warmup``.

Each takes the region as ``-c/--config`` (a TOML file or a region directory) or the
global ``--region``; with neither, the default region at ``$BLOBTIER_HOME``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from blobtier.config import RegionConfig, resolve
from blobtier.humanize import plural

Add = Callable[[str, Callable, str], argparse.ArgumentParser]


def _config(args: argparse.Namespace) -> RegionConfig:
    # The services' own config, not one attached to what runs: `up` derives what to run.
    return resolve(args.config or args.region)


def cmd_up(args: argparse.Namespace) -> int:
    from blobtier.region import supervisor

    config = _config(args)
    region = supervisor.up(config)
    print(f"region {config.root} is up: {plural(len(region.services), 'service')}; `blobtier status` "
          "shows them, `blobtier down` stops them")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from blobtier.region import supervisor

    config = _config(args)
    timeout = args.timeout if args.timeout is not None else config.services.stop_timeout_s
    region = supervisor.down(config.root, timeout, config=config)
    print(f"region {config.root} is down ({plural(len(region.services), 'service')} stopped)")
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    from blobtier.region import supervisor

    config = _config(args)
    restarted = supervisor.restart(config, args.services)
    if restarted:
        print(f"region {config.root}: restarted {', '.join(s.name for s in restarted)}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from blobtier.region import probe, supervisor

    config = _config(args)
    rows = supervisor.status(config.root)
    print(f"region {config.root}")
    for line in supervisor.format_status(rows):
        print(line)
    return 0 if all(r.health == probe.SERVING for r in rows) else 1


def cmd_top(args: argparse.Namespace) -> int:
    from blobtier import runstate as state
    from blobtier.errors import InvalidRequest
    from blobtier.region import top

    config = _config(args)
    region = state.read(config.root)
    if region is None:
        raise InvalidRequest(f"no region is up at {config.root}; `blobtier up` starts one")
    if not any(s.metrics_port for s in region.services):
        raise InvalidRequest(f"the services of {config.root} serve no metrics (services.metrics is off)")
    from blobtier import connect
    from blobtier.runstate import resolve_running

    live = sys.stdout.isatty() and not args.once
    prev = None
    with connect(resolve_running(config)) as client:  # reads the namespaces' usage
        while True:
            cur = top.scrape(region.services, args.trainer)
            lines = top.render(region, cur, prev, top.namespace_lines(client.namespaces.usage))
            if live:
                sys.stdout.write("\x1b[H\x1b[2J")  # home and clear: redraw in place
            print("\n".join(lines), flush=True)
            if args.once:
                return 0
            prev = cur
            try:
                time.sleep(args.interval)
            except KeyboardInterrupt:
                return 0
            if not live:
                print()


def cmd_warmup(args: argparse.Namespace) -> int:
    from blobtier import connect
    from blobtier.progress import progress_bar
    from blobtier.region.browse import nothing_under, require_region
    from blobtier.runstate import resolve_running
    from blobtier.sdk.warmup import warmup

    config = resolve_running(args.config or args.region)
    require_region(config, args.config or args.region)
    with connect(config) as client, \
            progress_bar(f"warmup {args.tier}", "blobs", quiet=args.quiet) as show:
        if next(iter(client.iter_ls(args.prefix)), None) is None:
            raise nothing_under(args.prefix)
        report = warmup(client, args.prefix, args.tier, progress=show)
    print(report.summary())
    return 0 if not report.failed else 1


def cmd_grant_key(args: argparse.Namespace) -> int:
    from blobtier.region.keys import grant_key

    return grant_key(_config(args), args.action)


def add_commands(add: Add) -> None:
    def config_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", default=None, metavar="TOML_OR_DIR",
                       help="the region's config (default: --region, else $BLOBTIER_HOME)")

    p = add("up", cmd_up, "start the region's services (a Redis Cluster and metadata servers if "
                          "configured, chunk servers, flash nodes, host daemon) and wait until they "
                          "are healthy")
    config_flag(p)
    p = add("down", cmd_down, "stop the region's services (SIGTERM, then SIGKILL after a timeout)")
    config_flag(p)
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait after SIGTERM (default: services.stop_timeout_s)")
    p = add("restart", cmd_restart, "bring back services of the running region (e.g. a chunk server "
                                    "that died): the ones named, else every one that is not answering")
    config_flag(p)
    p.add_argument("services", nargs="*", metavar="SERVICE",
                   help="redis-N, meta-N, block-N, flash-N or daemon, as `blobtier status` names them")
    p = add("status", cmd_status, "each service of the region: pid, address, health, uptime")
    config_flag(p)
    p = add("top", cmd_top, "a live view of the region's tiers: hit ratios, throughput, latency, "
                            "evictions, block egress")
    config_flag(p)
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--trainer", action="append", default=[], metavar="HOST:PORT",
                   help="a trainer's metrics endpoint (blobtier.dataloader.serve_metrics): its "
                        "samples/s and data stall (repeatable)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
    p = add("warmup", cmd_warmup, "hydrate every blob under PREFIX into a cache tier")
    config_flag(p)
    p.add_argument("prefix")
    p.add_argument("--tier", choices=("l3", "l1"), default="l3",
                   help="l3: the region's flash nodes (default); l1: the host daemon's memory")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p = add("grant-key", cmd_grant_key, "show, rotate or retire the region key that signs grants "
                                        "(key ids only; restart the services after a change)")
    config_flag(p)
    p.add_argument("action", choices=("show", "rotate", "retire"))
