"""blobtier: a regional multi-tier blob cache that keeps GPUs fed with training data.

>>> import blobtier
>>> client = blobtier.connect()          # the embedded region at $BLOBTIER_HOME or ~/.blobtier
>>> client.put("imagenet/train/0001.jpg", data)
>>> client.get("imagenet/train/0001.jpg")

Nothing here imports torch or any server: ``blobtier.dataloader`` holds the PyTorch plugin.
"""

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
