"""Which origin locations a cache node may read through from.

A record registered by reference names its origin object (``"url\\ntag"``). A flash node
that reads its misses through must not read whatever URL a request's record names: the
node runs with its own rights (root, the service's cloud credentials), so a forged record
naming ``file:///etc/shadow`` or another tenant's bucket would make it a confused deputy.
It reads only under the prefixes it was configured with or that the region's metadata
registered (``blobtier ingest --reference`` registers its source, ``MetadataStore.
register_origins``).

URLs are compared in canonical form, the one the reader itself would open: fsspec's
protocol (``local`` is ``file``, ``s3a`` is ``s3``) and the path its filesystem strips the
URL to. Local paths are resolved (``..``, symlinks), so a link inside a registered
directory that points outside it is not inside it. Chained URLs (``a::b``), and ``.``
or ``..`` segments of an object store's key, are never canonical.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable

from blobtier.errors import Forbidden

REFRESH_S = 1.0  # a URL no known prefix covers re-reads the registrations at most this often
_MEMO_ENTRIES = 65536  # URLs whose permission is remembered (for refresh_s) before the memo is cleared


def canonical(url: str) -> str:
    """``protocol://path`` as the origin reader would open ``url``; raise ``Forbidden``
    for a URL that has no single canonical form (chained, relative segments, unknown
    protocol). The message never repeats the URL."""
    from fsspec.core import split_protocol
    from fsspec.registry import get_filesystem_class

    if not isinstance(url, str) or not url or "::" in url or "\x00" in url or "\n" in url:
        raise Forbidden("not a plain origin URL")
    protocol = split_protocol(url)[0] or "file"
    try:
        cls = get_filesystem_class(protocol)
        path = cls._strip_protocol(url)
    except (ImportError, ValueError, TypeError):
        raise Forbidden("an origin URL of an unknown protocol") from None
    name = cls.protocol if isinstance(cls.protocol, str) else cls.protocol[0]
    if name == "file":
        path = os.path.realpath(path)
    elif any(part in (".", "..") for part in path.split("/")):
        raise Forbidden("an origin URL with '.' or '..' segments")
    return f"{name}://{path.rstrip('/') or '/'}"


def covers(prefix: str, url: str) -> bool:
    """True if canonical ``url`` is canonical ``prefix`` or lies under it (whole segments:
    ``s3://b/ds`` does not cover ``s3://b/ds-private``)."""
    if url == prefix:
        return True
    return url.startswith(prefix if prefix.endswith("/") else prefix + "/")


class OriginAllowList:
    """The origin prefixes a node may read from.

    Args:
        prefixes: configured prefixes (any fsspec URL, e.g. ``s3://bucket/datasets``).
        registered: returns the prefixes the region's metadata registered; called again
            (at most every ``refresh_s`` seconds) when a URL is covered by none known.
        refresh_s: the least time between two calls of ``registered``; also how long a URL
            found allowed stays allowed without being resolved again (resolving a local
            path costs tens of microseconds, and every chunk of an L3 hit names its URL).

    Raises:
        Forbidden: a configured prefix that has no canonical form.
    """

    def __init__(self, prefixes: Iterable[str] = (), registered: Callable[[], Iterable[str]] | None = None,
                 refresh_s: float = REFRESH_S) -> None:
        self.configured = tuple(canonical(p) for p in prefixes)
        self._registered_fn = registered
        self._registered: tuple[str, ...] = ()
        self._refreshed = float("-inf")
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._allowed: dict[str, float] = {}  # url -> until when it is known to be allowed

    def allows(self, url: str) -> bool:
        """True if the node may read ``url`` (False for a URL with no canonical form)."""
        now = time.monotonic()
        if self._allowed.get(url, 0.0) > now:
            return True
        try:
            want = canonical(url)
        except Forbidden:
            return False
        if not (self._covered(want) or (self._refresh() and self._covered(want))):
            return False
        if len(self._allowed) >= _MEMO_ENTRIES:
            self._allowed.clear()
        self._allowed[url] = now + self.refresh_s
        return True

    def _covered(self, url: str) -> bool:
        return any(covers(p, url) for p in self.configured + self._registered)

    def _refresh(self) -> bool:
        """Re-read the registrations unless that was done within ``refresh_s`` (a flood of
        forged requests does not become a flood of metadata scans); True if re-read."""
        if self._registered_fn is None:
            return False
        with self._lock:
            if time.monotonic() - self._refreshed < self.refresh_s:
                return False
            self._refreshed = time.monotonic()
            found = []
            for p in self._registered_fn():
                try:
                    found.append(canonical(p))
                except Forbidden:
                    continue  # a registration this node cannot read is no permission
            self._registered = tuple(found)
        return True
