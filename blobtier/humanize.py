"""Numbers for people: counted nouns ("1 file", "2 files") and sizes in binary units."""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``"1 file"``, ``"2 files"``, ``"0 files"``; ``nouns`` for an irregular plural."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def human_size(nbytes: float) -> str:
    """``nbytes`` in the largest binary unit that keeps it at 1 or more: ``"512 B"``,
    ``"70.3 KiB"``, ``"4.0 GiB"``."""
    size, unit = float(nbytes), 0
    while abs(size) >= 1024 and unit < len(_UNITS) - 1:
        size, unit = size / 1024, unit + 1
    return f"{int(size)} B" if unit == 0 else f"{size:.1f} {_UNITS[unit]}"
