"""Namespaces as managed objects, for people and tools: ``blobtier ns create|set|show|ls``
and per-namespace usage against quota (``top``).

The objects live in the metadata store (``metadata/namespaces.py``, every backend), which
refuses a write over quota (``QuotaExceeded``), hides blobs past their TTL and counts
usage; this module parses what a person types and shows what is stored. Values on the
command line: sizes as ``config.parse_size`` reads them (``50GiB``, ``1.5G``, ``1000``),
durations as ``pytimeparse`` does (``7d``, ``1h30m``, ``90`` seconds), shares as fractions
(``0.3``) or percentages (``30%``), and ``none`` clears a field. A bad value raises
``InvalidRequest`` naming its flag.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pytimeparse import parse as parse_duration

from blobtier.config import parse_size
from blobtier.errors import BlobNotFound, InvalidRequest
from blobtier.metadata.namespaces import POLICIES, NamespaceSpec
from blobtier.metadata.store import MetadataStore

_log = logging.getLogger(__name__)
CLEAR = "none"  # a flag's value that clears its field


def exact_size(n: int) -> str:
    """Exact bytes, grouped: a quota is checked to the byte, so it is shown to the byte."""
    return f"{n:,} B"


def _bytes(value: str, flag: str) -> int:
    return parse_size(value, flag)


def _count(value: str, flag: str) -> int:
    if not value.isdigit() or not value.isascii():
        raise InvalidRequest(f"{flag}: {value!r} is not a whole number of blobs")
    return int(value)


def _seconds(value: str, flag: str) -> float:
    text = value.strip()
    seconds = float(text) if _is_number(text) else parse_duration(text)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise InvalidRequest(f"{flag}: {value!r} is not a duration like 7d, 12h, 1h30m or 90 (seconds)")
    return float(seconds)


def _share(value: str, flag: str) -> float:
    text = value.strip()
    percent = text.endswith("%")
    number = text[:-1] if percent else text
    share = float(number) / (100 if percent else 1) if _is_number(number) else math.nan
    if not 0 < share <= 1:
        raise InvalidRequest(f"{flag}: {value!r} is not a share in (0, 1] like 0.3 or 30%")
    return share


def _policy(value: str, flag: str) -> str:
    if value not in POLICIES:
        raise InvalidRequest(f"{flag}: {value!r} is not one of {', '.join(POLICIES)}")
    return value


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text)) and text.isascii()
    except ValueError:
        return False


FLAGS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "--quota-bytes": ("quota_bytes", _bytes),
    "--quota-blobs": ("quota_blobs", _count),
    "--ttl": ("ttl_s", _seconds),
    "--l1-share": ("l1_share", _share),
    "--l3-share": ("l3_share", _share),
    "--policy": ("policy", _policy),
}
"""Each ``blobtier ns`` flag: the field it sets and its parser."""


def parse_flags(values: Mapping[str, str | None]) -> dict[str, Any]:
    """``{"--ttl": "7d", "--quota-bytes": None, ...}`` (None: not given) as field changes
    (``none`` clears a field). Raises ``InvalidRequest`` naming the flag."""
    changes: dict[str, Any] = {}
    for flag, raw in values.items():
        if raw is None:
            continue
        if flag not in FLAGS:
            raise InvalidRequest(f"unknown namespace flag {flag}")
        field, parse = FLAGS[flag]
        changes[field] = None if raw.strip().lower() == CLEAR else parse(raw, flag)
    return changes


@dataclass(frozen=True)
class NamespaceUsage:
    """A namespace's usage and limits (``top``, ``ns show``): ``bytes`` and ``blobs`` as
    counted (``pending`` commits in flight included); quotas None when unset."""

    name: str
    bytes: int
    blobs: int
    quota_bytes: int | None
    quota_blobs: int | None
    pending: int = 0

    @property
    def bytes_ratio(self) -> float | None:
        """Share of the byte quota in use (None: no byte quota)."""
        if self.quota_bytes is None:
            return None
        return self.bytes / self.quota_bytes if self.quota_bytes else math.inf * bool(self.bytes)

    def describe(self) -> str:
        """``12.0 GiB of 50.0 GiB (24%), 1200 blobs of no quota``."""
        def limit(used: str, quota: str | None, ratio: float | None) -> str:
            if quota is None:
                return f"{used} (no quota)"
            return f"{used} of {quota}" + ("" if ratio is None else f" ({ratio:.0%})")

        blobs_ratio = self.blobs / self.quota_blobs if self.quota_blobs else None
        quota_b = None if self.quota_bytes is None else exact_size(self.quota_bytes)
        quota_n = None if self.quota_blobs is None else str(self.quota_blobs)
        return (limit(exact_size(self.bytes), quota_b, self.bytes_ratio if self.quota_bytes else None)
                + ", " + limit(f"{self.blobs} blobs", quota_n, blobs_ratio))


def usage_against_quota(store: MetadataStore) -> list[NamespaceUsage]:
    """Every namespace that has an object, with its usage and quotas, by name: what
    ``top`` shows per namespace. One listing of the objects and one multi-get of the
    counters. Raises: the store's errors (``TierUnavailable``, ``MetadataCorrupt``)."""
    specs = store.namespaces()
    usage = store.namespace_usage([s.name for s in specs])
    return [NamespaceUsage(s.name, usage[s.name].bytes, usage[s.name].blobs, s.quota_bytes,
                           s.quota_blobs, len(usage[s.name].pending)) for s in specs]


def show(spec: NamespaceSpec, usage: NamespaceUsage) -> list[str]:
    """Lines of ``blobtier ns show``."""
    def field(value: Any, fmt: Callable[[Any], str] = str) -> str:
        return "-" if value is None else fmt(value)

    flight = f", {usage.pending} commits in flight" if usage.pending else ""
    return [f"namespace   {spec.name}",
            f"usage       {usage.describe()}{flight}",
            f"quota       {field(spec.quota_bytes, exact_size)} / {field(spec.quota_blobs)} blobs",
            f"ttl         {field(spec.ttl_s, _duration)}",
            f"l1 share    {field(spec.l1_share, '{:.0%}'.format)}",
            f"l3 share    {field(spec.l3_share, '{:.0%}'.format)}",
            f"policy      {field(spec.policy)}"]


def table(specs: list[NamespaceSpec], usage: list[NamespaceUsage]) -> list[str]:
    """Lines of ``blobtier ns ls``: one namespace a line, a header first."""
    by_name = {u.name: u for u in usage}
    rows = [("NAMESPACE", "USED", "QUOTA", "BLOBS", "TTL", "L1", "L3", "POLICY")]
    for s in specs:
        u = by_name[s.name]
        rows.append((s.name, exact_size(u.bytes), "-" if s.quota_bytes is None else exact_size(s.quota_bytes),
                     str(u.blobs) + ("" if s.quota_blobs is None else f"/{s.quota_blobs}"),
                     "-" if s.ttl_s is None else _duration(s.ttl_s),
                     "-" if s.l1_share is None else f"{s.l1_share:.0%}",
                     "-" if s.l3_share is None else f"{s.l3_share:.0%}", s.policy or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _duration(seconds: float) -> str:
    """``7d``, ``1d12h``, ``90s``: the largest whole units."""
    out, left = [], int(round(seconds))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= n:
            out.append(f"{left // n}{unit}")
            left %= n
    return "".join(out) or f"{seconds:g}s"


class Namespaces:
    """A client's namespace objects (``Client.namespaces``): reads ask ``reader()``'s
    store, changes go to ``writer()``'s (an embedded region's writer)."""

    def __init__(self, reader: Callable[[], MetadataStore], writer: Callable[[], MetadataStore]) -> None:
        self._reader = reader
        self._writer = writer

    def create(self, name: str, **fields: Any) -> NamespaceSpec:
        """A new namespace object (``NamespaceSpec`` fields). Raises ``InvalidRequest``
        naming a bad field, ``VersionConflict`` when it exists."""
        try:
            spec = NamespaceSpec(name, **fields)
        except TypeError as exc:
            raise InvalidRequest(f"namespace fields: {exc}") from None
        return self._writer().create_namespace(spec)

    def set(self, name: str, **changes: Any) -> NamespaceSpec:
        """Change fields of an existing namespace (None clears one). Raises
        ``BlobNotFound`` when it has no object, ``InvalidRequest`` naming a bad field."""
        return self._writer().update_namespace(name, changes)

    def get(self, name: str) -> NamespaceSpec | None:
        return self._reader().namespace(name)

    def list(self) -> list[NamespaceSpec]:
        return self._reader().namespaces()

    def usage(self) -> list[NamespaceUsage]:
        """Each namespace's usage against its quotas (``usage_against_quota``)."""
        return usage_against_quota(self._reader())


def run_command(spaces: Namespaces, command: str, name: str | None,
                flags: Mapping[str, str | None]) -> list[str]:
    """What ``blobtier ns COMMAND`` prints. Raises ``InvalidRequest`` (a bad flag value,
    naming it; a flag ``show``/``ls`` take none of), ``BlobNotFound`` (no such namespace),
    ``VersionConflict`` (create of one that exists)."""
    given = [f for f, v in flags.items() if v is not None]
    if command in ("show", "ls") and given:
        raise InvalidRequest(f"ns {command} takes no {', '.join(given)}")
    changes = parse_flags(flags)
    if command == "create":
        spec = spaces.create(name, **changes)
        return [f"created namespace {spec.name}"] + show(spec, _usage_of(spaces, spec.name))
    if command == "set":
        if not changes:
            raise InvalidRequest(f"ns set {name}: nothing to change (give a flag: {', '.join(FLAGS)})")
        spec = spaces.set(name, **changes)
        return show(spec, _usage_of(spaces, spec.name))
    if command == "show":
        spec = spaces.get(name)
        if spec is None:
            raise BlobNotFound(f"namespace {name!r} has no object (blobtier ns create {name})")
        return show(spec, _usage_of(spaces, name))
    if command == "ls":
        return table(spaces.list(), spaces.usage())
    raise InvalidRequest(f"unknown ns command {command!r}")


def _usage_of(spaces: Namespaces, name: str) -> NamespaceUsage:
    return next(u for u in spaces.usage() if u.name == name)


SETTINGS_REFRESH_S = 10.0
"""How often a daemon or a flash node reads the namespace objects again."""


def l1_settings(specs: list[NamespaceSpec]) -> tuple[dict[str, float], dict[str, str]]:
    """(shares, policies) of the namespaces that set them, for ``ArenaOwner.configure_namespaces``."""
    return ({s.name: s.l1_share for s in specs if s.l1_share is not None},
            {s.name: s.policy for s in specs if s.policy is not None})


def l3_shares(specs: list[NamespaceSpec]) -> dict[str, float]:
    """The L3 shares of the namespaces that set one, for ``FlashCache.set_namespace_shares``."""
    return {s.name: s.l3_share for s in specs if s.l3_share is not None}


class SettingsRefresher:
    """How the caches learn the namespaces' shares and policies: pulled from the region's
    metadata, once at start and every ``interval_s`` after (a daemon thread), and handed to
    ``apply``. Pulled rather than pushed so that a cache started later, or one that missed
    a change while down, needs no one to tell it; a change reaches every cache within
    ``interval_s``. A read that fails keeps the settings in force (logged) until the next.

    ``store``: the metadata store, or a function that opens one (called again at each
    refresh until it succeeds; the store it opened is closed by ``close``): a cache must
    start and serve even while its region's metadata cannot be reached.
    """

    def __init__(self, store: MetadataStore | Callable[[], MetadataStore],
                 apply: Callable[[list[NamespaceSpec]], None],
                 interval_s: float = SETTINGS_REFRESH_S) -> None:
        import threading

        self._open = None if isinstance(store, MetadataStore) else store
        self.store = store if isinstance(store, MetadataStore) else None
        self.apply = apply
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        if self._open is None:
            self.refresh()
        self._thread = threading.Thread(target=self._run, name="blobtier-ns-settings", daemon=True)
        self._thread.start()

    def refresh(self) -> bool:
        """Read and apply the settings now; False (logged) when that failed."""
        with self._lock:
            try:
                if self.store is None:
                    self.store = self._open()
                self.apply(self.store.namespaces())
                return True
            except (OSError, ValueError) as exc:  # blobtier's errors are OSError or ValueError
                _log.warning("namespace settings not refreshed: %s", exc)
                return False

    def _run(self) -> None:
        if self._open is not None:
            self.refresh()  # opening may wait on the network: never before the cache serves
        while not self._stop.wait(self.interval_s):
            self.refresh()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._open is not None and self.store is not None:
            self.store.close()
