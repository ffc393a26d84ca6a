"""Tensors straight from cache memory.

``as_tensor(view)`` wraps a blob's bytes without copying (``torch.frombuffer``). The
tensor keeps the view, and with it the cache slot's pin, alive: the cache will not reuse
that memory while the tensor exists. The memory is shared with every process on the
host, so the tensor is read-only by contract: copy (``.clone()``) before changing it.
Collating a batch copies anyway, so a decode that returns such tensors costs no copy of
its own.
"""

from __future__ import annotations

import warnings

import torch

# torch.frombuffer warns that a read-only buffer is not writable: here that is the point.
# A filter set once for exactly that message (a catch_warnings block per call would cost
# more than the tensor itself).
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)


def as_tensor(view: memoryview, dtype: torch.dtype = torch.uint8, offset: int = 0,
              shape: tuple[int, ...] | None = None) -> torch.Tensor:
    tensor = torch.frombuffer(view, dtype=dtype, offset=offset,
                              count=-1 if shape is None else _numel(shape))
    return tensor if shape is None else tensor.view(shape)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
