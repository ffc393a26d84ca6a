"""``BlobImageFolder``: torchvision's ``ImageFolder`` over keys, ``prefix/<class>/<file>``.

Items are ``(sample, class_index)``. Classes are the first path segments under the prefix,
sorted, so every rank and every run numbers them alike; blobs directly under the prefix
(no class folder) are left out, as ImageFolder leaves out files at its root.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import blobtier
from blobtier.dataloader.dataset import BlobDataset
from blobtier.dataloader.decoding import KeyDecoder, key_decoder
from blobtier.errors import BlobNotFound


class _WithTarget:
    """Decodes a blob and pairs it with its class (a class: workers may pickle it)."""

    def __init__(self, decode: KeyDecoder | None, targets: dict[str, int],
                 target_transform: Callable[[int], Any] | None) -> None:
        self.decode = decode
        self.targets = targets
        self.target_transform = target_transform

    def __call__(self, key: str, view: memoryview) -> tuple[Any, Any]:
        sample = self.decode(key, view) if self.decode is not None else bytes(view)
        target = self.targets[key]
        return sample, self.target_transform(target) if self.target_transform else target


class BlobImageFolder(BlobDataset):
    """Args:
        prefix: the folder: blobs ``prefix/<class>/<any/path>``.
        client: ``blobtier.connect()`` when omitted.
        decode: a blob's bytes (read-only memoryview) to a sample, as ``BlobDataset``'s
            (``decode(view)`` or ``decode(key, view)``); default ``bytes``.
        target_transform: applied to the class index.
        extensions: keep only keys ending with one of these (case-insensitive), as
            ImageFolder's ``extensions``; None keeps every blob.
        with_keys: whether ``decode`` takes the key first (None: by its signature).

    Attributes: ``classes`` (sorted class names), ``class_to_idx``, ``samples``
    (``(key, class_index)`` in key order) and ``targets``, as ImageFolder has.

    Raises:
        BlobNotFound: no blob in a class folder under ``prefix``.
    """

    def __init__(self, prefix: str, client: blobtier.Client | None = None,
                 decode: Callable[..., Any] | None = None,
                 target_transform: Callable[[int], Any] | None = None,
                 extensions: tuple[str, ...] | None = None,
                 with_keys: bool | None = None) -> None:
        client = client if client is not None else blobtier.connect()
        prefix = prefix if prefix.endswith("/") else prefix + "/"
        found = self._find(client, prefix, extensions)
        if not found:
            raise BlobNotFound(f"no blobs in class folders under prefix {prefix!r}")
        self.classes = sorted({cls for _, cls in found})
        self.class_to_idx = {cls: i for i, cls in enumerate(self.classes)}
        self.samples = [(key, self.class_to_idx[cls]) for key, cls in found]
        self.targets = [t for _, t in self.samples]
        wrapped = _WithTarget(key_decoder(decode, with_keys), dict(self.samples), target_transform)
        super().__init__([key for key, _ in self.samples], client=client, decode=wrapped,
                         with_keys=True)

    @staticmethod
    def _find(client: blobtier.Client, prefix: str,
              extensions: tuple[str, ...] | None) -> list[tuple[str, str]]:
        """(key, class name) of every blob in a class folder, in key order."""
        ends = tuple(e.lower() for e in extensions) if extensions else None
        found = []
        for info in client.iter_ls(prefix):
            cls, slash, rest = info.key[len(prefix):].partition("/")
            if slash and rest and (ends is None or info.key.lower().endswith(ends)):
                found.append((info.key, cls))
        return found
