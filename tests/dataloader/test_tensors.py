from __future__ import annotations

import gc

import numpy as np

from blobtier.dataloader import as_tensor


def test_tensor_shares_cache_memory_and_keeps_the_pin(client):
    client.put("ns/t", bytes(range(256)) * 16)
    client.get("ns/t")  # the first read fills L1
    view = client.get("ns/t")
    t = as_tensor(view, shape=(16, 256))
    assert t.data_ptr() == np.frombuffer(view, np.uint8).ctypes.data
    assert t[3, 5].item() == 5
    pinned = client._l1.stats()["pinned"]
    del view
    gc.collect()
    assert client._l1.stats()["pinned"] == pinned  # the tensor still holds the slot
    del t
    gc.collect()
    assert client._l1.stats()["pinned"] == pinned - 1
