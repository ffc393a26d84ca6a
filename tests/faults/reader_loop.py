"""The reader both fault tests run in their reader processes: random batches until a stop
file appears, every failure and every wrong byte counted, a JSON report at the end."""

from __future__ import annotations

import hashlib
import json
import os
import random

import blobtier


def read_until_stopped(client: blobtier.Client, expected_file: str, stop_file: str, out: str,
                       seed: int, batch: int, announce: float = 0.0) -> None:
    """Read ``batch`` random keys at a time (half with ``get_many``, half one ``get`` each;
    a share ``announce`` also announced first) until ``stop_file`` exists; write
    ``{"reads", "failed", "wrong"}`` to ``out``."""
    expected = json.load(open(expected_file))
    keys = sorted(expected)
    rng = random.Random(seed)
    reads, failed, wrong = 0, [], []
    while not os.path.exists(stop_file):
        chosen = rng.sample(keys, batch)
        try:
            if rng.random() < announce:
                client.announce(chosen)
            got = client.get_many(chosen) if rng.random() < 0.5 else [client.get(k) for k in chosen]
        except Exception as exc:  # noqa: BLE001 - every failure is what these tests count
            failed.append(f"{type(exc).__name__}: {exc}"[:300])
            continue
        for key, data in zip(chosen, got):
            reads += 1
            if hashlib.sha256(data).hexdigest() != expected[key]:
                wrong.append(key)
        del got
    client.close()
    with open(out, "w") as f:
        json.dump({"reads": reads, "failed": failed, "wrong": wrong}, f)
