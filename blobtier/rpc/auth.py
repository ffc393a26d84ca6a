"""Bearer tokens with rights, checked on every RPC of every blobtier server.

A server started with a token file admits a call only if its ``authorization`` metadata
carries ``Bearer <token>`` for a token that has the call's right:

    read   Get, GetMany, Stat, List, ListOrigins, Locate   (every data and metadata service)
    write  Put, Commit, Delete, Compact, Prefetch
    admin  every method of an admin service (faults, stats, drop, resize)

The standard health service answers without a token, so probes and ``blobtier status``
need none. A call without a known token is UNAUTHENTICATED, one whose token lacks the
right PERMISSION_DENIED; both reach the caller as ``Forbidden`` (a ``PermissionError``).

The token file (TOML) holds hashes, never tokens, so it can be read by every server::

    [[token]]
    name = "trainers"
    sha256 = "9f86d0..."          # hashlib.sha256(token.encode()).hexdigest()
    rights = ["read", "write"]

Rights are given on namespace patterns (``fnmatch``: ``imagenet``, ``team-a-*``, ``*``);
``rights = [...]`` alone means namespace ``*``::

    [[token]]
    name = "team-a"
    sha256 = "..."
    grants = [{ns = "team-a-*", rights = ["read", "write"]}, {ns = "shared", rights = ["read"]}]

The interceptor checks a call's right on *some* namespace (a token with no read right
anywhere cannot call Get at all; the admin services, which act on a whole server, need
their right on ``*``); the metadata service then checks the namespace of every
key a call names (``Token.allows``, ``caller``) and signs a grant for each record it returns
(``blobtier/grants.py``). Data services serve chunks under those grants, so a token alone
never reads a chunk where the region has a grant key. Calls that touch every namespace
(registering origins) need the right on ``*``.

Clients present ``auth.token`` from the region config (or ``$BLOBTIER_AUTH_TOKEN``) on
every call (``LazyChannel``). Refusals carry the token's name, never the token.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from blobtier.errors import InvalidRequest

RIGHTS = ("read", "write", "admin")
_READ = {"Get", "GetMany", "Stat", "List", "ListOrigins", "Locate", "ListNamespaces"}
_WRITE = {"Put", "Commit", "Delete", "Compact", "Prefetch", "GrantWrite"}
_OPEN_SERVICES = ("grpc.health.v1.Health",)
AUTHORIZATION = "authorization"


def right_of(method: str) -> str | None:
    """The right a call of ``/package.Service/Method`` needs; None: open to anyone.
    A method this table does not know needs admin (safe by default)."""
    service, _, name = method.lstrip("/").rpartition("/")
    if service in _OPEN_SERVICES:
        return None
    if service.endswith("Admin"):
        return "admin"
    if name in _READ:
        return "read"
    if name in _WRITE:
        return "write"
    return "admin"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Token:
    """A token's hash and its rights: ``grants`` are (namespace pattern, rights) pairs;
    ``rights`` is every right it has on some namespace."""

    name: str
    sha256: str
    rights: frozenset[str]
    grants: tuple[tuple[str, frozenset[str]], ...] = ()

    def allows(self, namespace: str, right: str) -> bool:
        """Whether it has ``right`` on ``namespace`` (an exact name, never a pattern)."""
        return any(right in rights and fnmatch.fnmatchcase(namespace, pattern)
                   for pattern, rights in self.grants)

    def allows_every(self, right: str) -> bool:
        """Whether it has ``right`` on every namespace (a ``*`` grant)."""
        return any(right in rights and pattern == "*" for pattern, rights in self.grants)


class TokenTable:
    """The tokens a server accepts."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens

    @classmethod
    def load(cls, path: str) -> TokenTable:
        """Read a token file; a bad one stops startup with the entry that is wrong."""
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidRequest(f"token file {path}: not valid TOML: {exc}") from None
        return cls.from_mapping(data, path)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "token file") -> TokenTable:
        entries = data.get("token")
        if not isinstance(entries, list) or not entries:
            raise InvalidRequest(f"{where}: expected one or more [[token]] tables")
        tokens = []
        for i, entry in enumerate(entries):
            name = str(entry.get("name", f"#{i}"))
            h = str(entry.get("sha256", "")).lower()
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
                raise InvalidRequest(f"{where}: token {name!r}: sha256 must be 64 hex digits")
            grants = _grants_of(entry, f"{where}: token {name!r}")
            tokens.append(Token(name, h, frozenset().union(*(r for _, r in grants)), grants))
        return cls(tokens)

    def find(self, presented: str) -> Token | None:
        h = digest(presented)
        for token in self.tokens:  # compare every entry in constant time
            if hmac.compare_digest(token.sha256, h):
                return token
        return None


def _rights(value: Any, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not value or any(r not in RIGHTS for r in value):
        raise InvalidRequest(f"{where}: rights must be a list of {RIGHTS}")
    return frozenset(value)


def _grants_of(entry: Mapping[str, Any], where: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """An entry's (namespace pattern, rights): ``grants = [{ns, rights}]``, or ``rights``
    alone for namespace ``*``; not both."""
    if "grants" in entry and "rights" in entry:
        raise InvalidRequest(f"{where}: give either rights (every namespace) or grants, not both")
    if "grants" not in entry:
        return (("*", _rights(entry.get("rights"), where)),)
    grants = entry["grants"]
    if not isinstance(grants, list) or not grants:
        raise InvalidRequest(f"{where}: grants must be a list of {{ns = PATTERN, rights = [...]}}")
    out = []
    for j, g in enumerate(grants):
        ns = g.get("ns") if isinstance(g, dict) else None
        if not isinstance(ns, str) or not ns or "/" in ns:
            raise InvalidRequest(f"{where}: grants[{j}].ns must be a namespace or pattern (no '/')")
        out.append((ns, _rights(g.get("rights"), f"{where}: grants[{j}]")))
    return tuple(out)


def caller(table: TokenTable | None, context: grpc.ServicerContext) -> Token | None:
    """The token a call presented, found in ``table`` (None: no table, or none known; the
    interceptor has refused unknown tokens already)."""
    if table is None:
        return None
    presented = _bearer(context.invocation_metadata())
    return table.find(presented) if presented else None


def _bearer(metadata: tuple | None) -> str | None:
    for key, value in metadata or ():
        if key == AUTHORIZATION and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return None


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, why: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that only refuses."""
    def deny(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, why)

    kind = ("stream" if handler.request_streaming else "unary") + "_" + \
           ("stream" if handler.response_streaming else "unary")
    make: Callable[..., grpc.RpcMethodHandler] = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(deny, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class TokenAuth(grpc.ServerInterceptor):
    """Admits each call whose token has the method's right (see the module docstring)."""

    def __init__(self, table: TokenTable) -> None:
        self.table = table

    def intercept_service(self, continuation, handler_call_details):  # noqa: ANN001 - grpc's API
        handler = continuation(handler_call_details)
        need = right_of(handler_call_details.method)
        if handler is None or need is None:
            return handler
        presented = _bearer(handler_call_details.invocation_metadata)
        token = self.table.find(presented) if presented else None
        if token is None:
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                            "a bearer token this server knows is required")
        # An admin service (faults, stats, drop, resize) acts on the whole server, so on
        # every namespace: it needs the right on '*'.
        region_wide = handler_call_details.method.lstrip("/").rpartition("/")[0].endswith("Admin")
        if not (token.allows_every(need) if region_wide else need in token.rights):
            return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED,
                            f"token {token.name!r} lacks the {need} right for {handler_call_details.method}")
        return handler


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call of a channel."""

    def __init__(self, token: str) -> None:
        self.header = (AUTHORIZATION, f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self.header]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):  # noqa: ANN001
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # noqa: ANN001
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):  # noqa: ANN001
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):  # noqa: ANN001
        return continuation(self._details(details), requests)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression) -> None:  # noqa: ANN001
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def with_token(channel: grpc.Channel, token: str | None) -> grpc.Channel:
    """``channel`` presenting ``token`` on every call (unchanged without one)."""
    return grpc.intercept_channel(channel, _Bearer(token)) if token else channel
