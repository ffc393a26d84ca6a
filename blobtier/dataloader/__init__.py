"""The PyTorch plugin: datasets over blobtier keys and a data-stall meter.

This is the only package that imports torch (``pip install 'blobtier[torch]'``).
"""

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in an environment without torch
    raise ImportError("blobtier.dataloader needs PyTorch: pip install torch==2.13.0 "
                      "(or pip install 'blobtier[torch]')") from exc

from blobtier.dataloader.dataset import BlobDataset
from blobtier.dataloader.folder import BlobImageFolder
from blobtier.dataloader.loader import BlobDataLoader
from blobtier.dataloader.metrics import serve_metrics, stop_metrics
from blobtier.dataloader.mixture import BlobMixture
from blobtier.dataloader.sampler import BlobSampler
from blobtier.dataloader.shards import BlobIterableDataset
from blobtier.dataloader.stall import DataStallMeter, StallReport
from blobtier.dataloader.tensors import as_tensor

__all__ = ["BlobDataLoader", "BlobDataset", "BlobImageFolder", "BlobIterableDataset", "BlobMixture",
           "BlobSampler", "DataStallMeter", "StallReport", "as_tensor", "serve_metrics", "stop_metrics"]
