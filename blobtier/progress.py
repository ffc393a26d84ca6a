"""Progress bars for long commands (ingest, scrub, warmup, the demo), drawn by tqdm and only
on a terminal: piped or logged output gets the summary line alone, never carriage returns."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

Progress = Callable[[int, int, int, int], None]
"""progress(items_done, bytes_done, items_total, bytes_total), as the SDK's bulk calls report."""


@contextmanager
def progress_bar(label: str, unit: str = "files", *, quiet: bool = False,
                 stream: TextIO | None = None) -> Iterator[Progress | None]:
    """A ``Progress`` callback drawing a byte-scaled bar on ``stream`` (default stderr), or
    None (draw nothing) when ``quiet`` or when ``stream`` is not a terminal."""
    out = stream if stream is not None else sys.stderr
    if quiet or not out.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(desc=label, total=0, unit="B", unit_scale=True, unit_divisor=1024, file=out,
              leave=True, dynamic_ncols=True) as bar:
        def show(items: int, nbytes: int, total_items: int, total_bytes: int) -> None:
            bar.total = total_bytes
            bar.set_postfix_str(f"{items:,}/{total_items:,} {unit}", refresh=False)
            bar.update(nbytes - bar.n)

        yield show
