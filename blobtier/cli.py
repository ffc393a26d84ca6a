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


def _connect(args: argparse.Namespace):
    from blobtier import connect

    return connect(args.region)


def cmd_put(args: argparse.Namespace) -> None:
    with _connect(args) as client:
        if args.file == "-":
            info = client.put(args.key, sys.stdin.buffer)
        else:
            with open(args.file, "rb") as f:
                info = client.put(args.key, f)
        print(f"{info.key}\t{info.size}\tversion {info.version}")


def cmd_get(args: argparse.Namespace) -> None:
    with _connect(args) as client, client.open(args.key) as src:
        if args.file in (None, "-"):
            shutil.copyfileobj(src, sys.stdout.buffer, client.config.client.chunk_size)
            sys.stdout.buffer.flush()
        else:
            with open(args.file, "wb") as out:
                shutil.copyfileobj(src, out, client.config.client.chunk_size)


def cmd_ls(args: argparse.Namespace) -> None:
    with _connect(args) as client:
        for info in client.iter_ls(args.prefix):
            created = info.created.strftime("%Y-%m-%d %H:%M:%S")
            print(f"{info.size:>14} {info.version:>5}  {created}  {info.key}")


def cmd_stat(args: argparse.Namespace) -> None:
    with _connect(args) as client:
        info = client.stat(args.key)
        for name in ("key", "size", "version", "created", "chunk_size", "chunks", "checksum"):
            print(f"{name:<11} {getattr(info, name)}")
        for k, v in info.attrs.items():
            print(f"attr.{k:<6} {v}")


def cmd_rm(args: argparse.Namespace) -> None:
    with _connect(args) as client:
        for key in args.keys:
            client.delete(key)


def cmd_ingest(args: argparse.Namespace) -> None:
    from blobtier.demo import _progress_bar
    from blobtier.sdk.ingest import ingest

    with _connect(args) as client:
        show = _progress_bar("ingest") if sys.stderr.isatty() and not args.quiet else None
        report = ingest(client, args.src, args.dest, threads=args.threads, progress=show)
        print(f"ingested {report.files} files, {report.bytes} bytes into {args.dest}")


def cmd_gc(args: argparse.Namespace) -> None:
    with _connect(args) as client:
        report = client.gc(args.grace)
        print(f"live chunks {report.live_chunks}, deleted {report.deleted_chunks} replicas, "
              f"spared {report.spared_young} younger than the grace period")


def cmd_demo(args: argparse.Namespace) -> None:
    from blobtier import demo

    with _connect(args) as client:
        demo.run(client, samples=args.samples, epochs=args.epochs, workers=args.workers,
                 batch_size=args.batch_size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blobtier", description=__doc__.splitlines()[0])
    parser.add_argument("--region", "-r", default=None,
                        help="region directory or region TOML (default: $BLOBTIER_HOME or ~/.blobtier)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = add("put", cmd_put, "store a file (or stdin with -) as KEY")
    p.add_argument("file")
    p.add_argument("key")
    p = add("get", cmd_get, "write KEY's bytes to FILE (default stdout)")
    p.add_argument("key")
    p.add_argument("file", nargs="?")
    p = add("ls", cmd_ls, "list blobs under PREFIX: size, version, created, key")
    p.add_argument("prefix", nargs="?", default="")
    p = add("stat", cmd_stat, "show one blob's metadata")
    p.add_argument("key")
    p = add("rm", cmd_rm, "delete blobs")
    p.add_argument("keys", nargs="+", metavar="key")
    p = add("ingest", cmd_ingest, "copy a directory or fsspec URL into DEST_PREFIX")
    p.add_argument("src")
    p.add_argument("dest", metavar="DEST_PREFIX")
    p.add_argument("--threads", type=int, default=8, help="parallel file readers")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p = add("gc", cmd_gc, "reclaim chunks no blob references any more")
    p.add_argument("--grace", type=float, default=None,
                   help="spare chunks younger than this many seconds (default: config)")
    p = add("demo", cmd_demo, "ingest a synthetic dataset and train a small model through the cache")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--batch-size", type=int, default=64)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        sys.stderr.close()  # e.g. `blobtier get KEY | head`
        return 0
    except (BlobtierError, OSError, ValueError) as exc:
        print(f"blobtier: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
