"""blobtier: a regional multi-tier blob cache that keeps GPUs fed with training data.

>>> import blobtier
>>> client = blobtier.connect()          # the embedded region at $BLOBTIER_HOME or ~/.blobtier
>>> client.put("imagenet/train/0001.jpg", data)
>>> client.get("imagenet/train/0001.jpg")

Nothing here imports torch or any server: ``blobtier.dataloader`` holds the PyTorch plugin.
Importing the package loads only the exception tree; ``Client``, ``connect`` and ``BlobInfo``
load the SDK when first used, so a chunk server or a flash node (which import
``blobtier.<part>``, and so this module first) never load the SDK, RocksDB or the daemon.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from blobtier.errors import (
    BlobNotFound,
    BlobtierError,
    ChecksumError,
    CorruptRecord,
    Forbidden,
    InvalidKey,
    InvalidRequest,
    RegionLocked,
    TierUnavailable,
    VersionConflict,
)

if TYPE_CHECKING:
    from blobtier.sdk.client import Client, connect
    from blobtier.sdk.info import BlobInfo

__version__ = "0.1.0"

__all__ = [
    "BlobInfo",
    "BlobNotFound",
    "BlobtierError",
    "ChecksumError",
    "Client",
    "CorruptRecord",
    "Forbidden",
    "InvalidKey",
    "InvalidRequest",
    "RegionLocked",
    "TierUnavailable",
    "VersionConflict",
    "__version__",
    "connect",
]

_LAZY = {"Client": "blobtier.sdk.client", "connect": "blobtier.sdk.client", "BlobInfo": "blobtier.sdk.info"}


def __getattr__(name: str) -> Any:
    """Load a public name that needs the SDK on first use (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'blobtier' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
