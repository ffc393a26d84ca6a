"""``decode(data)`` or ``decode(key, data)``: labels often live in the key, not the bytes."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

KeyDecoder = Callable[[str, Any], Any]


def takes_key(decode: Callable[..., Any]) -> bool:
    """Whether ``decode`` takes two positional arguments (key, data): by its signature."""
    try:
        params = inspect.signature(decode).parameters.values()
    except (TypeError, ValueError):
        return False  # a builtin such as ``bytes`` or ``len``: one argument
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return sum(p.default is p.empty for p in positional) >= 2


class DataOnly:
    """``decode(data)`` called as ``decode(key, data)`` (a class: workers may pickle it)."""

    def __init__(self, decode: Callable[[Any], Any]) -> None:
        self.decode = decode

    def __call__(self, key: str, data: Any) -> Any:
        return self.decode(data)


def key_decoder(decode: Callable[..., Any] | None, with_keys: bool | None) -> KeyDecoder | None:
    """``decode`` as a function of (key, data). ``with_keys`` None: by its signature."""
    if decode is None:
        return None
    if with_keys is None:
        with_keys = takes_key(decode)
    return decode if with_keys else DataOnly(decode)
