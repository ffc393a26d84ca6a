"""The example region lives outside the repository, and `blobtier demo --region` keeps L1
below the dataset so its later epochs show L3 serving (issue 18 item 6)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import pytest

from blobtier import config, demo
from blobtier.cli import main

REPO = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "region.toml"


def test_the_example_region_is_under_blobtier_home(monkeypatch, tmp_path):
    monkeypatch.setenv("BLOBTIER_HOME", str(tmp_path / "home"))
    root = config.load(str(EXAMPLE)).root
    assert root == str(tmp_path / "home" / "example-region")
    monkeypatch.delenv("BLOBTIER_HOME")  # unset: the default home, ~/.blobtier
    assert config.load(str(EXAMPLE)).root == os.path.expanduser("~/.blobtier/example-region")
    assert not config.load(str(EXAMPLE)).root.startswith(str(REPO))


def test_nothing_the_example_writes_would_be_tracked():
    """Whatever root the example names, git does not see it as part of the repository."""
    root = config.load(str(EXAMPLE)).root
    inside = pathlib.Path(root).resolve().is_relative_to(REPO)
    ignored = inside and subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", root]).returncode == 0
    assert not inside or ignored


@pytest.mark.parametrize("written, expected", [("$BLOBTIER_HOME", ""), ("${BLOBTIER_HOME}/x", "x"),
                                               ("$BLOBTIER_HOME/a/b", "a/b")])
def test_a_root_under_blobtier_home(tmp_path, monkeypatch, written, expected):
    monkeypatch.setenv("BLOBTIER_HOME", str(tmp_path))
    path = tmp_path / "r.toml"
    path.write_text(f'root = "{written}"\n')
    assert config.load(str(path)).root == os.path.join(str(tmp_path), expected).rstrip("/")


def test_the_example_sizes_l1_below_the_demo_dataset():
    example = config.load(str(EXAMPLE))
    dataset = 2000 * demo.SAMPLE_BYTES  # `blobtier demo`'s default
    assert example.cache.l1_bytes < dataset and example.services.daemon_memory_bytes < dataset
    assert example.services.flash_nodes >= 1 and example.services.flash_capacity_bytes > dataset


def test_demo_against_a_region_shows_l3_serving_in_later_epochs(region, tmp_path, capfd):
    pytest.importorskip("torch")
    rec = tmp_path / "run.json"
    assert main(["demo", "--region", region, "--samples", "40", "--epochs", "2", "--workers", "0",
                 "--batch-size", "10", "--json", str(rec)]) == 0
    assert "holds part of the" in capfd.readouterr().out
    first, second = json.loads(rec.read_text())["epochs"]
    assert first["served"]["origin"] == 1.0
    assert second["served"]["l1"] < 1.0 and second["served"]["l3"] > 0.0  # L1 holds half of it


def test_the_demo_sizing_leaves_a_smaller_l1_alone(tmp_path):
    small = config.resolve(str(tmp_path))
    small = config.with_overrides(small, cache={"l1_bytes": "1MiB"})
    assert demo.with_l1_below(small, 40).cache.l1_bytes == 1 << 20
    big = config.with_overrides(small, cache={"l1_bytes": "1GiB"})
    assert demo.with_l1_below(big, 40).cache.l1_bytes == 40 * demo.SAMPLE_BYTES // 2
