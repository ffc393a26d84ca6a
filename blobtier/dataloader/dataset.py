"""``BlobDataset``: a map-style PyTorch dataset whose items are blobs.

Item ``i`` is the bytes of the ``i``-th key (keys sorted when given a prefix), or
``decode(view)`` of them. ``decode`` receives a read-only memoryview that may point
straight into cache memory: it must not keep the view beyond its return (copy or
decode into new arrays). A DataLoader batch is fetched with one ``__getitems__`` call:
one metadata multi-get and one batched chunk read.

The dataset pickles and forks cleanly: each DataLoader worker opens its own handles on
first use and adds its hits to the parent's counters (``Client`` takes care of both).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch.utils.data import Dataset

import blobtier
from blobtier.dataloader.decoding import DataOnly, key_decoder
from blobtier.errors import BlobNotFound


class BlobDataset(Dataset):
    """Args:
        prefix_or_keys: a key prefix (every blob under it, in key order) or a key list.
        client: the blobtier client; ``blobtier.connect()`` when omitted.
        decode: turns a blob's bytes (a read-only memoryview) into a sample; default
            ``bytes``. ``decode(key, view)`` gets the key too (labels often live in it):
            detected by its signature, or forced with ``with_keys``.
        with_keys: whether ``decode`` takes the key first (None: by its signature).
    """

    def __init__(self, prefix_or_keys: str | Sequence[str], client: blobtier.Client | None = None,
                 decode: Callable[..., Any] | None = None,
                 with_keys: bool | None = None) -> None:
        self.client = client if client is not None else blobtier.connect()
        if isinstance(prefix_or_keys, str):
            self.keys = [info.key for info in self.client.iter_ls(prefix_or_keys)]
            if not self.keys:
                raise BlobNotFound(f"no blobs under prefix {prefix_or_keys!r}")
        else:
            self.keys = list(prefix_or_keys)
        self.decode = key_decoder(decode, with_keys)

    def __len__(self) -> int:
        return len(self.keys)

    def _decode(self, key: str, view: memoryview) -> Any:
        return self.decode(key, view) if self.decode is not None else bytes(view)

    def __getitem__(self, index: int) -> Any:
        key = self.keys[index]
        return self._decode(key, self.client.get(key))

    def announce(self, indices: Sequence[int], progress: Callable[[], int] | None = None) -> None:
        """The sampler's hook: these samples are read next, in this order."""
        self.client.announce([self.keys[i] for i in indices], progress)

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        keys = [self.keys[i] for i in indices]
        views = self.client.get_many(keys)
        # Which decode runs is settled once per batch: no extra Python call per sample.
        decode = self.decode
        if decode is None:
            return [bytes(v) for v in views]
        if type(decode) is DataOnly:
            data_only = decode.decode
            return [data_only(v) for v in views]
        return [decode(k, v) for k, v in zip(keys, views)]
