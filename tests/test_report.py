"""``blobtier report`` (issue 18 item 2): the plots of a run, from a recorded JSON, from a
demo, and from a region's Prometheus endpoints sampled while it serves."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import re
import time
from contextlib import ExitStack

import pytest

from blobtier.cli import main
from blobtier.region import report

RECORDED = pathlib.Path(__file__).parent / "data" / "demo_run.json"  # `blobtier demo --json`, 200 samples


def images(page: str) -> dict[str, bytes]:
    return {pid: base64.b64decode(data) for pid, data in
            re.findall(r"<img id='(\w+)' alt='[^']*' src='data:image/png;base64,([^']+)'", page)}


def test_a_recorded_run_renders_every_plot(tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", "--from", str(RECORDED), "--out", str(out)]) == 0
    assert "5 plots: throughput, stall, tiers, egress, fill" in capsys.readouterr().out
    pngs = images(out.read_text())
    assert sorted(pngs) == sorted(report.PLOTS)
    for pid, png in pngs.items():
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000, pid  # a drawn figure
    assert len(set(pngs.values())) == len(pngs)  # five different pictures
    page = out.read_text()
    assert page.count("<tr>") == 1 + len(json.loads(RECORDED.read_text())["epochs"])  # the epochs table


def test_a_plot_without_its_data_is_named_missing(tmp_path):
    record = json.loads(RECORDED.read_text())
    del record["timeline"]  # per-epoch rows only (a benchmark's JSON)
    page = report.render(record)
    assert sorted(images(page)) == ["egress", "stall", "throughput", "tiers"]  # egress per epoch
    assert "<p class='missing' id='fill'>not in this record</p>" in page


@pytest.mark.parametrize("text, why", [("{not json", "not JSON"), ('{"epochs": []}', "no 'epochs'")])
def test_a_bad_source_is_an_error_naming_it(tmp_path, capsys, text, why):
    src = tmp_path / "bench.json"
    src.write_text(text)
    assert main(["report", "--from", str(src), "--out", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err
    assert str(src) in err and why in err and not (tmp_path / "r.html").exists()


def test_report_of_a_region_that_is_not_up_names_it(tmp_path, capsys):
    assert main(["--region", str(tmp_path), "report", "--out", str(tmp_path / "r.html")]) == 1
    assert f"no region with metrics is up at {tmp_path}" in capsys.readouterr().err


def test_demo_report_writes_one_at_the_end(region, tmp_path, capsys):
    out, rec = tmp_path / "demo.html", tmp_path / "demo.json"
    assert main(["--region", region, "demo", "--samples", "30", "--epochs", "2", "--workers", "0",
                 "--batch-size", "10", "--report", str(out), "--json", str(rec)]) == 0
    assert f"report written to {out} (5 plots" in capsys.readouterr().out
    assert sorted(images(out.read_text())) == sorted(report.PLOTS)
    run = json.loads(rec.read_text())
    assert [e["epoch"] for e in run["epochs"]] == [1, 2] and len(run["timeline"]) >= 2
    assert run["epochs"][1]["served"]["l1"] == 1.0  # the second epoch came from L1
    assert run["timeline"][-1]["block_egress_bytes"] >= 30 * 101_569  # the first read everything


def test_sampling_a_region_reads_its_endpoints(tmp_path):
    """The services' series, as ``blobtier report --region`` samples them during a run."""
    from blobtier.blockstore_sim.chunk_server import ChunkServer
    from blobtier.blockstore_sim.remote import RemoteChunkStore
    from blobtier.checksum import xxh3
    from blobtier.runstate import ServiceRecord
    from tests import metric_series as ms

    with ExitStack() as stack:
        pid = stack.enter_context(ms.service_pid())
        server = ChunkServer(str(tmp_path / "block"), metrics_port=0)
        stack.callback(server.stop, 0)
        flash = ms._flash_node(stack, str(tmp_path))
        daemon = ms._host_daemon(stack, str(tmp_path))
        services = [ServiceRecord(name, kind, pid, None, port, None, time.time(), "")
                    for name, kind, port in (("block-0", "block", server.metrics_port),
                                             ("flash-0", "flash", flash), ("daemon", "daemon", daemon),
                                             ("block-1", "block", _closed_port()))]
        before = report.sample_services(services)
        store = RemoteChunkStore(server.address, timeout_s=10)
        data = os.urandom(1000)
        store.put_many([(b"\x01" * 16, data, xxh3(data))])
        store.get(b"\x01" * 16)
        store.close()
        after = report.sample_services(services)
    assert before["l1_capacity_bytes"] == 8 << 20 and before["l3_capacity_bytes"] == 8 << 20
    assert before["l1_used_bytes"] == before["l3_used_bytes"] == 0
    assert before["down"] == ["block-1"]  # a dead service is named, not dropped
    assert after["block_egress_bytes"] - before["block_egress_bytes"] == 1000


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
