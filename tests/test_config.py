from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys

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


# -- values are checked, not trusted -----------------------------------------------------
def test_every_number_and_list_has_a_range():
    for section, cls in config._SECTIONS.items():
        for f in dataclasses.fields(cls):
            name, kind = f"{section}.{f.name}", config._kind(f)
            if kind in ("int", "float", "tuple[int, ...]"):
                lo, hi = config.RANGES[name]
                assert hi is not None and math.isfinite(hi), name
            if kind.startswith("tuple["):
                assert config.MAX_ITEMS[name] > 0, name


@pytest.mark.parametrize("section, field, value", [
    ("cache", "l1_bytes", "1" * 400),  # a float overflow when parsed
    ("cache", "l1_bytes", "9999999TiB"),
    ("block", "volume_bytes", 2 ** 70),
    ("client", "max_blob_bytes", "99999999TiB"),
])
def test_sizes_that_overflow_are_refused_with_the_range(section, field, value):
    with pytest.raises(InvalidRequest, match=rf"{section}\.{field}") as info:
        from_mapping({section: {field: value}}, env={})
    assert "Traceback" not in str(info.value)


def test_a_size_beyond_its_range_names_the_range():
    with pytest.raises(InvalidRequest,
                       match=r"cache\.l1_bytes must be an integer between 0 and 4TiB, got 8TiB"):
        from_mapping({"cache": {"l1_bytes": "8TiB"}}, env={})


@pytest.mark.parametrize("section, field, value", [
    ("block", "hedge_after_ms", float("nan")), ("block", "hedge_after_ms", float("-inf")),
    ("block", "request_timeout_s", float("inf")), ("flash", "retry_after_s", float("nan")),
    ("client", "metadata_staleness_s", "inf"), ("services", "stop_timeout_s", float("inf")),
])
def test_nan_and_infinity_are_refused(section, field, value):
    with pytest.raises(InvalidRequest, match=rf"{section}\.{field} must be a finite number"):
        from_mapping({section: {field: value}}, env={})


def test_nan_and_infinity_from_toml_and_env(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[flash]\nrequest_timeout_s = inf\n")
    with pytest.raises(InvalidRequest, match=r"flash\.request_timeout_s must be a finite number"):
        config.load(str(path))
    with pytest.raises(InvalidRequest, match=r"block\.hedge_after_ms"):
        from_mapping({}, env={"BLOBTIER_BLOCK_HEDGE_AFTER_MS": "nan"})


@pytest.mark.parametrize("section, field, value, allowed", [
    ("client", "prefetch_threads", 100000, "between 1 and 256"),
    ("client", "readahead_chunks", 10 ** 9, "between 0 and 4096"),
    ("block", "servers", 5000, "between 1 and 999"),
    ("block", "read_concurrency", 0, "between 1 and 4096"),
    ("block", "max_retries", -1, "between 0 and 100"),
    ("services", "flash_nodes", 100000, "between 0 and 999"),
    ("client", "gc_grace_s", -5, "between 0.0 and 31536000.0"),
])
def test_negative_and_absurd_counts_name_field_and_range(section, field, value, allowed):
    with pytest.raises(InvalidRequest, match=rf"{section}\.{field} must be .*{allowed}, got"):
        from_mapping({section: {field: value}}, env={})


def test_absurd_values_in_a_config_built_in_python_are_refused(tmp_path):
    cfg = config.RegionConfig(root=str(tmp_path), client=config.ClientConfig(prefetch_threads=100000))
    with pytest.raises(InvalidRequest, match=r"client\.prefetch_threads"):
        config.resolve(cfg)


@pytest.mark.parametrize("data, field", [
    ({"root": 5}, "root"),
    ({"root": ["/tmp"]}, "root"),
    ({"services": {"flash_dir": 7}}, "services.flash_dir"),
    ({"cache": {"daemon": ["/run/x.sock"]}}, "cache.daemon"),
    ({"services": {"daemon_socket": {"path": "/x"}}}, "services.daemon_socket"),
    ({"auth": {"token": 12345}}, "auth.token"),
    ({"services": {"host": "127.0.0.1\x00evil"}}, "services.host"),
])
def test_non_string_paths_are_refused(data, field):
    with pytest.raises(InvalidRequest, match=field.replace(".", r"\.")):
        from_mapping(data, env={})


def test_paths_may_be_path_objects(tmp_path):
    cfg = config.with_overrides(from_mapping({"root": str(tmp_path)}, env={}),
                                services={"flash_dir": tmp_path / "flash"})
    assert cfg.services.flash_dir == str(tmp_path / "flash")


@pytest.mark.parametrize("text", ['root = ""\n', 'root = "   "\n'])
def test_an_empty_root_is_refused_not_taken_as_the_files_directory(tmp_path, text):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(InvalidRequest, match="root must name a directory"):
        config.load(str(path))
    with pytest.raises(InvalidRequest, match="region"):
        config.resolve("")


@pytest.mark.parametrize("text", [
    "x = " + "[" * 5000 + "]" * 5000 + "\n",
    "[block]\nendpoints = " + "[" * 300 + "]" * 300 + "\n",
    "[" + ".".join(["cache"] * 3000) + "]\n",
])
def test_deeply_nested_toml_is_refused_without_a_traceback(tmp_path, text):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(InvalidRequest) as info:
        config.load(str(path))
    assert len(str(info.value)) < 500  # the message does not echo the nesting


def test_an_env_variable_that_names_no_field_is_an_error(tmp_path):
    with pytest.raises(InvalidRequest, match="BLOBTIER_CACHE_L1_BYTE names no config field.*"
                                             "did you mean BLOBTIER_CACHE_L1_BYTES"):
        from_mapping({"root": str(tmp_path)}, env={"BLOBTIER_CACHE_L1_BYTE": "1GiB"})
    with pytest.raises(InvalidRequest, match="BLOBTIER_ROOT"):
        from_mapping({"root": str(tmp_path)}, env={"BLOBTIER_ROOT": "/data"})


def test_documented_env_variables_that_are_not_fields_still_work(tmp_path):
    env = {"BLOBTIER_HOME": str(tmp_path), "BLOBTIER_AUTH_TOKEN": "t", "BLOBTIER_CACHE_DAEMON": "off",
           "BLOBTIER_SERVICES_BASE_PORT": "9400", "OTHER": "x", "_BLOBTIER_TEST_CRASH_AT": "x"}
    cfg = from_mapping({"root": str(tmp_path)}, env=env)
    assert (cfg.auth.token, cfg.cache.daemon, cfg.services.base_port) == ("t", "off", 9400)


@pytest.mark.parametrize("text, field", [
    ("[client]\nprefetch_threads = 100000\n", "client.prefetch_threads"),
    ("root = 5\n", "root"),
    ("x = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("[cache]\nl1_bytes = \"" + "9" * 400 + "\"\n", "cache.l1_bytes"),
])
def test_cli_prints_one_line_and_exits_1(tmp_path, text, field):
    path = tmp_path / "r.toml"
    path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "blobtier.cli", "--region", str(path), "ls"],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if not k.startswith("BLOBTIER_")})
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and field in proc.stderr and "Traceback" not in proc.stderr


# -- where clients find the metadata (issue 13 item 3) ---------------------------------------
def test_metadata_endpoints_and_redis_from_toml_and_env(tmp_path):
    cfg = from_mapping({"root": str(tmp_path), "metadata": {"endpoints": ["10.0.0.1:7200", "h:7201"],
                                                             "record_ttl_s": 0.5}}, env={})
    assert cfg.metadata.endpoints == ("10.0.0.1:7200", "h:7201") and cfg.metadata.record_ttl_s == 0.5
    assert cfg.metadata.remote == "metadata.endpoints"
    cfg = from_mapping({"root": str(tmp_path)}, env={"BLOBTIER_METADATA_REDIS": "r1:6379, r2:6379"})
    assert cfg.metadata.redis == ("r1:6379", "r2:6379") and cfg.metadata.remote == "metadata.redis"
    cfg = from_mapping({"root": str(tmp_path)}, env={})
    assert cfg.metadata.remote is None and cfg.metadata.record_ttl_s == 1.0


@pytest.mark.parametrize("metadata, field, why", [
    ({"endpoints": ["nohost"]}, "metadata.endpoints", "not host:port"),
    ({"endpoints": ["h:0"]}, "metadata.endpoints", "not host:port"),
    ({"redis": ["h:70000"]}, "metadata.redis", "not host:port"),
    ({"redis": ["h:1", "h:1"]}, "metadata.redis", "twice"),
    ({"endpoints": ["h:1"], "redis": ["h:2"]}, "metadata.redis", "not both"),
    ({"endpoints": ["h:1"] * 1000}, "metadata.endpoints", "at most 999"),
    ({"record_ttl_s": -1}, "metadata.record_ttl_s", "between 0.0 and 3600.0"),
    ({"record_ttl_s": float("nan")}, "metadata.record_ttl_s", "finite"),
    ({"record_ttl_s": 1e9}, "metadata.record_ttl_s", "3600"),
])
def test_bad_metadata_locations_are_refused_naming_the_field(tmp_path, metadata, field, why):
    with pytest.raises(InvalidRequest, match=field) as info:
        from_mapping({"root": str(tmp_path), "metadata": metadata}, env={})
    assert why in str(info.value)


def test_remote_metadata_with_embedded_block_storage_is_refused(tmp_path):
    """Volume directories take one writing process; remote metadata lets many write."""
    import blobtier

    for field, value in (("endpoints", ["127.0.0.1:1"]), ("redis", ["127.0.0.1:1"])):
        with pytest.raises(InvalidRequest, match=f"metadata.{field} needs block.endpoints"):
            blobtier.connect(str(tmp_path), metadata={field: value})
    assert not os.path.exists(tmp_path / "writer.lock") and not os.path.exists(tmp_path / "metadata")


def test_metadata_redis_without_the_redis_extra_says_what_to_install(tmp_path):
    """A host without the ``redis`` package gets one clear error naming the field and the
    extra, not an ImportError from deep inside."""
    code = f"""
import sys
sys.modules["redis"] = None  # as if the extra were not installed
import blobtier
try:
    blobtier.connect({str(tmp_path)!r}, metadata={{"redis": ["127.0.0.1:1"]}},
                     block={{"endpoints": ["127.0.0.1:2"], "replicas": 1}})
except blobtier.errors.InvalidRequest as exc:
    print("REFUSED", exc)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("REFUSED config field metadata.redis") and "blobtier[redis]" in done.stdout
