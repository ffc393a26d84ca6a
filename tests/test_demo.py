"""The main job, shrunk: it ingests, trains and reports every epoch."""

from __future__ import annotations

import io

import blobtier
from blobtier import demo


def test_demo_trains_through_the_cache(region):
    out = io.StringIO()
    with blobtier.connect(region) as client:
        rows = demo.run(client, samples=120, epochs=2, workers=2, batch_size=16, out=out)
        assert len(client.ls(demo.PREFIX + "/")) == 120
    assert [r["epoch"] for r in rows] == [1, 2]
    first, second = rows
    assert first["l1_hits"] + first["l1_misses"] == 120
    assert first["block_reads"] == 120  # a cold cache reads every sample from the block layer
    assert second["l1_hits"] > 0  # persistent workers keep their L1 across epochs
    assert all(0 <= r["stall"] <= 1 and r["samples_per_s"] > 0 for r in rows)
    text = out.getvalue()
    assert "samples/s" in text and "stall" in text
    # The embedded region's L3 is a flash store on this host's disk, not flash nodes.
    assert "L3 is a flash store on this host's disk" in text and "flash nodes" not in text


def test_demo_twice_reuses_the_region(region, capsys):
    with blobtier.connect(region) as client:
        demo.run(client, samples=30, epochs=1, workers=0, batch_size=10, out=io.StringIO())
        second = io.StringIO()
        demo.run(client, samples=30, epochs=1, workers=0, batch_size=10, out=second)
        # The same dataset again: ingest finds every file unchanged and writes no new version.
        assert all(i.version == 1 for i in client.ls(demo.PREFIX + "/"))
        assert "30 files unchanged" in second.getvalue()
    assert "\r" not in capsys.readouterr().err  # no progress bar off a terminal
