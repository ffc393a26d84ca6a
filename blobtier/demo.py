"""``blobtier demo``: make a dataset, ingest it, train a small model reading through the cache.

The dataset is synthetic image classification: ``samples`` raw 3x184x184 uint8 images
(about 100 KiB each) whose class decides a colour and a stripe pattern under noise, so a
small CNN learns it within a few epochs. Each epoch prints throughput, per-tier hits and
misses, and the data stall (the share of step time spent waiting for batches).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np

from blobtier.config import RegionConfig
from blobtier.humanize import human_size, plural
from blobtier.metrics import delta
from blobtier.progress import progress_bar
from blobtier.sdk.client import Client
from blobtier.sdk.ingest import ingest

SIDE = 184
CLASSES = 10
PREFIX = "demo/synthetic"
_TIER_LABEL = {"l1": "L1", "l2": "L2", "l3": "L3", "origin": "block"}


def make_dataset(directory: str, samples: int, seed: int = 0) -> None:
    """Write ``samples`` files of 1 label byte + a 3xSIDExSIDE uint8 image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    bases = []
    for c in range(CLASSES):
        os.makedirs(os.path.join(directory, f"class_{c}"), exist_ok=True)
        colour = rng.integers(40, 150, size=(3, 1, 1))
        stripes = 40 * np.sin((xx * (c + 1) + yy * (CLASSES - c)) / 18.0)
        bases.append(np.clip(colour + stripes, 0, 191).astype(np.uint8))
    for i in range(samples):
        c = i % CLASSES
        img = bases[c] + rng.integers(0, 64, size=(3, SIDE, SIDE), dtype=np.uint8)
        with open(os.path.join(directory, f"class_{c}", f"{i:06d}.raw"), "wb") as f:
            f.write(bytes([c]))
            f.write(img.tobytes())


def decode(view: memoryview):
    """Label byte + image -> (4x downsampled float tensor, label); copies nothing twice."""
    import torch

    label = view[0]
    img = np.frombuffer(view, dtype=np.uint8, offset=1).reshape(3, SIDE // 4, 4, SIDE // 4, 4)
    small = img.mean(axis=(2, 4), dtype=np.float32) / 255.0
    return torch.from_numpy(small), label


def _model():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        nn.Flatten(), nn.Linear(32 * 16, CLASSES))


def _lookups(moved: dict[str, dict[str, int]], tiers: list[str]) -> int:
    """Chunk reads: the lookups of the first tier (every read starts there)."""
    if not tiers:
        return moved["origin"]["hits"]
    return moved[tiers[0]]["hits"] + moved[tiers[0]]["misses"]


def _served(moved: dict[str, dict[str, int]], tiers: list[str]) -> dict[str, float]:
    """The share of chunk reads each tier answered from what it held; the rest came from the
    block layer, read by the client or through a read-through tier (L3) on its behalf."""
    reads = _lookups(moved, tiers) or 1
    share = {t: moved[t]["hits"] / reads for t in tiers}
    share["origin"] = max(0.0, 1.0 - sum(share.values()))
    return share


SAMPLE_BYTES = 1 + 3 * SIDE * SIDE  # a label byte and the image


def with_l1_below(config: RegionConfig, samples: int) -> RegionConfig:
    """``config`` with the process's own L1 (``cache.l1_bytes``) at half the dataset of
    ``samples`` when it would hold all of it: later epochs then read part of the dataset
    from L3, which is what the demo against a region is there to show. A host daemon's
    arena is the region's to size (``services.daemon_memory_bytes``)."""
    from blobtier.config import with_overrides

    dataset = samples * SAMPLE_BYTES
    if config.cache.l1_bytes >= dataset:
        return with_overrides(config, cache={"l1_bytes": dataset // 2})
    return config


def _l1_note(client: Client, samples: int) -> str:
    """How much of the dataset L1 holds, when that can be asked."""
    try:
        capacity = client._l1.stats()["capacity"]
    except (AttributeError, KeyError, OSError):
        return ""
    dataset = samples * SAMPLE_BYTES
    if capacity >= dataset:
        return (f" L1 ({human_size(capacity)}) holds the whole dataset ({human_size(dataset)}): later "
                "epochs never reach L3 (a smaller services.daemon_memory_bytes shows L3 serving).")
    return f" L1 ({human_size(capacity)}) holds part of the {human_size(dataset)} dataset: the rest " \
           "comes from below it in later epochs."


def _tiers_note(client: Client, tiers: list[str]) -> str:
    from blobtier.cache_l1_l2.daemon import find_daemon

    if "l1" not in tiers:
        note = "No L1 (cache.l1_bytes is 0)"
    elif find_daemon(client.config.cache.daemon):
        note = "L1 is the host daemon's shared memory, read zero-copy by the DataLoader workers"
    else:
        note = ("L1 is shared memory owned by this process (no host daemon is running), read "
                "zero-copy by the DataLoader workers")
    if "l2" in tiers:
        note += "; L2 is the peer daemons' memory"
    if "l3" in tiers:
        flash = client.config.flash
        note += ("; L3 is the region's flash nodes" if flash.endpoints else
                 f"; L3 is a flash store on this host's disk under {client.config.root}/l3 "
                 "(flash.local_l3: what it read survives the process)")
    return note + "."


def run(client: Client, samples: int = 2000, epochs: int = 3, workers: int = 2,
        batch_size: int = 64, seed: int = 0, out=None) -> list[dict]:
    out = out if out is not None else sys.stdout  # the stream of now, not of import time
    try:
        import torch
        from torch.utils.data import DataLoader

        from blobtier.dataloader import BlobDataset, DataStallMeter
    except ImportError:
        raise SystemExit("blobtier demo needs PyTorch: pip install torch==2.13.0 "
                         "(or pip install 'blobtier[torch]')") from None
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - workers))
    print(f"blobtier demo: region {client.config.root}", file=out)
    with tempfile.TemporaryDirectory(prefix="blobtier-demo-") as tmp:
        t = time.perf_counter()
        make_dataset(tmp, samples, seed)
        print(f"made {samples} samples of {SAMPLE_BYTES:,} bytes in "
              f"{time.perf_counter() - t:.1f}s", file=out)
        t = time.perf_counter()
        with progress_bar("ingest") as show:
            report = ingest(client, tmp, PREFIX, progress=show)
        dt = time.perf_counter() - t
        print(f"ingested {plural(report.files, 'file')}, {report.bytes / 2**20:,.0f} MiB in {dt:.1f}s "
              f"({report.bytes / 2**20 / dt:,.0f} MiB/s, {client.config.block.replicas} replicas)"
              + (f"; {plural(report.unchanged, 'file')} unchanged" if report.unchanged else ""),
              file=out)
    client.gc(grace_s=0)  # chunks of an earlier demo's dataset
    dataset = BlobDataset(PREFIX + "/", client=client, decode=decode)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(seed))
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    print(f"training a small CNN for {epochs} epochs: {len(dataset)} samples, batch {batch_size}, "
          f"{workers} DataLoader workers", file=out)
    tiers = client.tiers
    served = [*tiers, "origin"]
    print("per epoch: samples/s, data stall, and the share of chunk reads each tier served "
          "(block: read from the block layer)", file=out)
    print(f"{'epoch':>5} {'samples/s':>10} {'stall':>6} "
          + " ".join(f"{_TIER_LABEL[t]:>6}" for t in served) + f" {'loss':>6} {'acc':>6}", file=out)
    results = []
    for epoch in range(epochs):
        meter = DataStallMeter()
        before = client.stats()
        correct = seen = 0
        total_loss = 0.0
        for images, labels in meter.iterate(loader):
            opt.zero_grad()
            logits = model(images)
            loss = loss_fn(logits, labels)
            loss.backward()
            opt.step()
            total_loss += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
        rep = meter.report()
        moved = delta(client.stats(), before)
        share = _served(moved, tiers)
        row = {"epoch": epoch + 1, "samples_per_s": rep.samples_per_s, "stall": rep.stall_fraction,
               "l1_hits": moved["l1"]["hits"], "l1_misses": moved["l1"]["misses"],
               "l2_hits": moved["l2"]["hits"], "l3_hits": moved["l3"]["hits"],
               "block_reads": round(share["origin"] * _lookups(moved, tiers)),
               "block_bytes": moved["origin"]["bytes"], "loss": total_loss / seen,
               "accuracy": correct / seen, "served": share}
        results.append(row)
        print(f"{row['epoch']:>5} {row['samples_per_s']:>10,.0f} {row['stall']:>6.1%} "
              + " ".join(f"{row['served'][t]:>6.1%}" for t in served)
              + f" {row['loss']:>6.3f} {row['accuracy']:>6.1%}", file=out)
    print(_tiers_note(client, tiers) + _l1_note(client, samples), file=out)
    return results
