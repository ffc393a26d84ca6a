"""``blobtier top`` tells the whole story (issue 18 item 3): the trainer's samples/s and
stall, dead services marked dead (not dropped), L1 throughput, namespaces against quota."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import ExitStack

import pytest

import blobtier
from blobtier.region import top
from blobtier.runstate import RegionState, ServiceRecord
from tests import metric_series as ms


@pytest.fixture(scope="module")
def alive():
    with ms.service_pid() as pid:
        yield pid


def record(name: str, kind: str, port: int | None, pid: int) -> ServiceRecord:
    return ServiceRecord(name, kind, pid, None, port, None, time.time() - 5, "")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # exited and reaped: the pid names no process
    return proc.pid


def test_dead_services_are_marked_dead_not_dropped(tmp_path, alive):
    with ExitStack() as stack:
        block = ms._chunk_server(stack, str(tmp_path))
        region = RegionState(str(tmp_path), services=[
            record("block-0", "block", block, alive), record("block-1", "block", 1, dead_pid()),
            record("flash-0", "flash", 2, dead_pid()), record("daemon", "daemon", 3, dead_pid())])
        cur = top.scrape(region.services)
        lines = top.render(region, cur, None)
    rows = {line.split()[0]: line for line in lines[2:]
            if line and not line.startswith((" ", "block egress"))}
    assert rows["L1"].endswith("DEAD: daemon") and rows["L3"].endswith("DEAD: flash-0")
    assert rows["block"].endswith("1 chunk servers; DEAD: block-1")
    assert lines[-1].startswith("dead (process gone") and "block-1, flash-0, daemon" in lines[-1]


def test_the_trainers_samples_per_second_and_stall(tmp_path):
    pytest.importorskip("torch")
    from blobtier.dataloader import DataStallMeter, serve_metrics, stop_metrics

    with blobtier.connect(str(tmp_path / "r")) as client:
        http = serve_metrics(0, client)
        try:
            where = f"127.0.0.1:{http.server_port}"
            region = RegionState(str(tmp_path), services=[])
            prev = top.scrape([], [where])

            def slow_batches():
                for _ in range(4):
                    time.sleep(0.05)  # the loader keeps the loop waiting: a stall
                    yield list(range(8))

            meter = DataStallMeter()
            for _ in meter.iterate(slow_batches()):
                pass
            cur = top.scrape([], [where, "127.0.0.1:1"])
        finally:
            stop_metrics(http)
    lines = top.render(region, cur, prev)
    trainer = next(line for line in lines if line.startswith("trainer"))
    samples = top.Window(cur, prev).delta("trainer", "blobtier_samples_total")
    assert samples == 32 and "samples/s" in trainer and "data stall" in trainer
    stall = float(trainer.split("data stall ")[1].split("%")[0])
    assert stall > 50  # the loop did nothing but wait for batches
    assert lines[-1] == "not answering: trainer 127.0.0.1:1"


def test_l1_throughput_and_namespaces_against_quota(tmp_path, alive):
    with ExitStack() as stack:
        port = ms._host_daemon(stack, str(tmp_path))
        sock = os.path.join(str(tmp_path), "run", "d.sock")
        region = RegionState(str(tmp_path), services=[record("daemon", "daemon", port, alive)])
        client = stack.enter_context(blobtier.connect(str(tmp_path / "r"), cache={"daemon": sock}))
        client.namespaces.create("ds", quota_bytes=1 << 20)
        client.put_many({f"ds/{i}": os.urandom(100_000) for i in range(3)})
        client.get_many([f"ds/{i}" for i in range(3)])  # into L1
        prev = top.scrape(region.services)
        client.get_many([f"ds/{i}" for i in range(3)])  # L1 hits
        cur = top.scrape(region.services)
        ns = top.namespace_lines(client.namespaces.usage)
    window = top.Window(cur, prev)
    assert window.delta("daemon", "blobtier_l1_hit_bytes_total") == 300_000
    l1 = next(line for line in top.render(region, cur, prev, ns) if line.startswith("L1"))
    assert l1.split()[4] != "-" and float(l1.split()[4]) > 0  # MiB/s
    assert len(ns) == 1 and ns[0].split()[:2] == ["namespace", "ds"]
    assert "(29%)" in ns[0] and "3 blobs" in ns[0]  # 300,000 of 1 MiB of quota used


def test_namespaces_that_cannot_be_read_say_so():
    def broken():
        raise blobtier.TierUnavailable("metadata service down")

    assert top.namespace_lines(broken) == ["namespaces: usage not readable (metadata service down)"]
