from __future__ import annotations

import os

import pytest

from blobtier import config
from blobtier.config import GiB, KiB, MiB, from_mapping, parse_size
from blobtier.errors import InvalidRequest


# -- sizes -------------------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [
    ("4MiB", 4 * MiB), ("50GiB", 50 * GiB), ("1.5G", int(1.5 * GiB)), (1024, 1024), (0, 0),
    ("1024", 1024), ("64KiB", 64 * KiB), ("1kb", 1000), ("2 MB", 2 * 10**6), (" 3 tib ", 3 << 40),
    ("7b", 7), ("1M", MiB),
])
def test_parse_size(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["", "abc", "4 MiBs", "4XB", "MiB", "-1", "-4MiB", "1e3", -1, True,
                                   False])
def test_parse_size_rejects(value):
    with pytest.raises(InvalidRequest, match="chunk"):
        parse_size(value, "chunk")


# -- from_mapping ------------------------------------------------------------------------
def test_defaults(tmp_path):
    cfg = from_mapping({"root": str(tmp_path)}, env={})
    assert cfg.root == str(tmp_path)
    assert cfg.block.replicas == 3 and cfg.client.chunk_size == 4 * MiB
    assert cfg.cache.l1_policy == "sieve"


def test_values_are_coerced(tmp_path):
    cfg = from_mapping({"root": str(tmp_path), "block": {"servers": "7", "volume_bytes": "2MiB"},
                        "cache": {"l1_bytes": "1GiB", "l1_policy": "lru"},
                        "client": {"chunk_size": "64KiB", "gc_grace_s": 5}}, env={})
    assert cfg.block.servers == 7 and cfg.block.volume_bytes == 2 * MiB
    assert cfg.cache.l1_bytes == GiB and cfg.cache.l1_policy == "lru"
    assert cfg.client.chunk_size == 64 * KiB
    assert cfg.client.gc_grace_s == 5.0 and isinstance(cfg.client.gc_grace_s, float)


def test_unknown_section():
    with pytest.raises(InvalidRequest, match="bogus"):
        from_mapping({"bogus": {"x": 1}}, env={})


def test_unknown_field():
    with pytest.raises(InvalidRequest, match="block.bogus"):
        from_mapping({"block": {"bogus": 1}}, env={})


def test_section_must_be_a_table():
    with pytest.raises(InvalidRequest, match="block"):
        from_mapping({"block": 3}, env={})


@pytest.mark.parametrize("section, field, value", [
    ("block", "servers", "many"), ("block", "replicas", True), ("client", "prefetch_threads", "x"),
    ("client", "metadata_staleness_s", "soon"), ("cache", "l1_bytes", "lots"),
    ("client", "chunk_size", -5),
])
def test_bad_value_names_field(section, field, value):
    with pytest.raises(InvalidRequest, match=f"{section}.{field}"):
        from_mapping({section: {field: value}}, env={})


def test_env_overlay(tmp_path):
    cfg = from_mapping({"root": str(tmp_path), "cache": {"l1_bytes": "4MiB"}},
                       env={"BLOBTIER_CACHE_L1_BYTES": "1GiB", "BLOBTIER_BLOCK_REPLICAS": "2"})
    assert cfg.cache.l1_bytes == GiB
    assert cfg.block.replicas == 2


def test_env_overlay_from_os_environ(monkeypatch, tmp_path):
    monkeypatch.setenv("BLOBTIER_CLIENT_PREFETCH_THREADS", "3")
    assert from_mapping({"root": str(tmp_path)}).client.prefetch_threads == 3


def test_bad_env_value_names_field():
    with pytest.raises(InvalidRequest, match="client.prefetch_threads"):
        from_mapping({}, env={"BLOBTIER_CLIENT_PREFETCH_THREADS": "lots"})


@pytest.mark.parametrize("data, field", [
    ({"block": {"replicas": 6}}, "block.replicas"),
    ({"block": {"replicas": 0}}, "block.replicas"),
    ({"block": {"servers": 0, "replicas": 0}}, "block.servers"),
    ({"block": {"volume_bytes": "512KiB"}}, "block.volume_bytes"),
    ({"cache": {"l1_policy": "fifo"}}, "cache.l1_policy"),
    ({"client": {"chunk_size": "1KiB"}}, "client.chunk_size"),
    ({"client": {"chunk_size": "128MiB"}}, "client.chunk_size"),
    ({"client": {"checksum": "md5"}}, "client.checksum"),
    ({"client": {"readahead_chunks": -1}}, "client.readahead_chunks"),
    ({"client": {"prefetch_threads": 0}}, "client.prefetch_threads"),
    ({"client": {"metadata_staleness_s": -0.1}}, "client.metadata_staleness_s"),
    ({"client": {"gc_grace_s": -1}}, "client.gc_grace_s"),
])
def test_validation_names_field(data, field):
    with pytest.raises(InvalidRequest, match=field.replace(".", r"\.")):
        from_mapping(data, env={})


def test_root_expands_user(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert from_mapping({"root": "~/r"}, env={}).root == os.path.join(str(tmp_path), "r")


# -- load / resolve ------------------------------------------------------------------------
def test_load_relative_root(tmp_path):
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    path = conf_dir / "region.toml"
    path.write_text('root = "data/region"\n[block]\nservers = 4\nreplicas = 2\n'
                    '[client]\nchunk_size = "1MiB"\n')
    cfg = config.load(str(path))
    assert cfg.root == str(conf_dir / "data" / "region")
    assert (cfg.block.servers, cfg.block.replicas, cfg.client.chunk_size) == (4, 2, MiB)


def test_load_absolute_root(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(f'root = "{tmp_path / "abs"}"\n')
    assert config.load(str(path)).root == str(tmp_path / "abs")


def test_load_invalid_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[block\nservers = = 3\n")
    with pytest.raises(InvalidRequest, match="TOML"):
        config.load(str(path))


def test_load_bad_field(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[client]\nchunksize = 3\n")
    with pytest.raises(InvalidRequest, match="client.chunksize"):
        config.load(str(path))


def test_resolve_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config.resolve("regions/a").root == str(tmp_path / "regions" / "a")
    assert config.resolve(tmp_path / "b").root == str(tmp_path / "b")


def test_resolve_none_uses_home(tmp_path):
    assert config.resolve(None).root == str(tmp_path / "home")  # set by the autouse fixture


def test_resolve_toml_and_config(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('root = "x"\n')
    cfg = config.resolve(str(path))
    assert cfg.root == str(tmp_path / "x")
    assert config.resolve(cfg) is cfg


def test_default_home(monkeypatch, tmp_path):
    monkeypatch.delenv("BLOBTIER_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config.default_home() == os.path.join(str(tmp_path), ".blobtier")


# -- with_overrides -----------------------------------------------------------------------
def test_with_overrides(tmp_path):
    base = from_mapping({"root": str(tmp_path)}, env={})
    cfg = config.with_overrides(base, client={"chunk_size": "64KiB"}, block={"replicas": 2})
    assert cfg.client.chunk_size == 64 * KiB and cfg.block.replicas == 2
    assert base.client.chunk_size == 4 * MiB  # the original is untouched
    assert cfg.root == base.root


def test_with_overrides_validates(tmp_path):
    base = from_mapping({"root": str(tmp_path)}, env={})
    with pytest.raises(InvalidRequest, match="block.replicas"):
        config.with_overrides(base, block={"replicas": 9})
    with pytest.raises(InvalidRequest, match="nope"):
        config.with_overrides(base, nope={"x": 1})


def test_with_overrides_unknown_field(tmp_path):
    base = from_mapping({"root": str(tmp_path)}, env={})
    with pytest.raises(InvalidRequest, match="client.bogus"):
        config.with_overrides(base, client={"bogus": 1})


def test_fractional_int_rejected():
    with pytest.raises(InvalidRequest, match="block.replicas"):
        from_mapping({"block": {"replicas": 2.9}}, env={})
