"""What the CLI's listing commands print, and the checks that keep them from failing
silently: ``ls -l``/``-h`` (sizes, a total, one line per subdirectory), ``du``, ``rm -r``,
and the refusal of a ``--region`` that holds no region.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from blobtier.config import RegionConfig
from blobtier.errors import BlobNotFound, InvalidRequest
from blobtier.humanize import human_size, plural

_REGION_PARTS = ("metadata", "blocks", "run")  # what an embedded region or `up` leaves under root


def require_region(config: RegionConfig, where: str | None) -> None:
    """Raise ``InvalidRequest`` naming the root when it holds no region: a typo in
    ``--region`` must not read as an empty region. Remote metadata needs no root.

    Args:
        config: the resolved region config.
        where: what the user named (``--region``), or None for the default home.
    """
    if config.metadata.remote:
        return
    if any(os.path.isdir(os.path.join(config.root, part)) for part in _REGION_PARTS):
        return
    if not where:
        named = " (the default region, $BLOBTIER_HOME)"
    elif os.path.abspath(os.path.expanduser(where)) != config.root:
        named = f" (named by {where})"
    else:
        named = ""
    raise InvalidRequest(f"no region at {config.root}{named}: it holds no metadata, blocks or "
                         "running services; `blobtier put`, `ingest` or `up` create one")


def nothing_under(prefix: str) -> BlobNotFound:
    return BlobNotFound(f"no blobs under {prefix!r}" if prefix else "the region holds no blobs")


def size_text(nbytes: int, human: bool) -> str:
    return human_size(nbytes) if human else str(nbytes)


@dataclass
class Totals:
    blobs: int = 0
    bytes: int = 0
    dirs: int = 0

    def line(self, human: bool) -> str:
        text = f"total {size_text(self.bytes, human)} in {plural(self.blobs, 'blob')}"
        return text + (f" and {plural(self.dirs, 'directory', 'directories')}" if self.dirs else "")


def ls_lines(entries: Iterable, prefix: str, *, long: bool, human: bool, grouped: bool,
             shown=str) -> Iterator[str]:
    """The lines of ``blobtier ls``: a blob per line (size, version, created, key) and a
    ``dir`` line per subdirectory. ``grouped`` (a recursive listing): a ``DIR/:`` heading
    before each directory's blobs. ``long``: a total line at the end. Raises
    ``BlobNotFound`` naming ``prefix`` when ``entries`` is empty."""
    totals = Totals()
    current_dir = None
    for entry in entries:
        if isinstance(entry, str):
            totals.dirs += 1
            yield f"{'dir':>14} {'':>5}  {'':19}  {shown(entry)}"
            continue
        if grouped:
            parent = entry.key.rpartition("/")[0] + "/"
            if parent != current_dir:
                if current_dir is not None:
                    yield ""
                yield f"{shown(parent)}:"
                current_dir = parent
        totals.blobs += 1
        totals.bytes += entry.size
        created = entry.created.strftime("%Y-%m-%d %H:%M:%S")
        yield f"{size_text(entry.size, human):>14} {entry.version:>5}  {created}  {shown(entry.key)}"
    if not totals.blobs and not totals.dirs:
        raise nothing_under(prefix)
    if long:
        yield totals.line(human)


@dataclass
class Usage:
    """Blobs and bytes under a prefix, and per top-level entry below it."""

    total: Totals = field(default_factory=Totals)
    children: dict[str, Totals] = field(default_factory=dict)


def usage(infos: Iterable, prefix: str) -> Usage:
    """``du``: sum ``infos`` (every blob under ``prefix``) per first path component after
    the prefix's directory (a subdirectory ``ns/a/``, or a blob directly in it)."""
    out = Usage()
    base = prefix.rpartition("/")[0] + "/" if "/" in prefix else ""
    for info in infos:
        head, sep, _ = info.key[len(base):].partition("/")
        child = out.children.setdefault(base + head + sep, Totals())
        for t in (child, out.total):
            t.blobs += 1
            t.bytes += info.size
    return out


def du_lines(use: Usage, prefix: str, human: bool, shown=str) -> list[str]:
    lines = [f"{size_text(t.bytes, human):>14} {plural(t.blobs, 'blob'):>14}  {shown(name)}"
             for name, t in use.children.items()]
    lines.append(f"{size_text(use.total.bytes, human):>14} {plural(use.total.blobs, 'blob'):>14}  "
                 f"{shown(prefix) or '(region)'} total")
    return lines


def remove_tree(client, prefixes: list[str], *, yes: bool, shown=str, ask=input) -> int:
    """``rm -r``: delete every blob under each prefix, after saying how many and (without
    ``yes``) asking on a terminal; off a terminal without ``yes`` nothing is deleted.

    Raises: ``BlobNotFound`` naming a prefix with nothing under it (before any delete);
    ``InvalidRequest`` when not confirmed.
    """
    import sys

    keys: list[str] = []
    for prefix in prefixes:
        found = [info.key for info in client.iter_ls(prefix)]
        if not found:
            raise nothing_under(prefix)
        keys += found
    what = f"{plural(len(keys), 'blob')} under {', '.join(shown(p) for p in prefixes)}"
    if not yes:
        if not sys.stdin.isatty():
            raise InvalidRequest(f"rm -r would delete {what}; pass --yes to delete them")
        if ask(f"delete {what}? [y/N] ").strip().lower() not in ("y", "yes"):
            raise InvalidRequest(f"nothing deleted ({what} kept)")
    gone = 0
    for key in dict.fromkeys(keys):  # overlapping prefixes list a key twice
        try:
            client.delete(key)
            gone += 1
        except BlobNotFound:  # deleted by someone else meanwhile: it is gone all the same
            pass
    print(f"deleted {plural(gone, 'blob')} under {', '.join(shown(p) for p in prefixes)}")
    return 0
