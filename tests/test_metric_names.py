"""Metric names follow Prometheus conventions on every service (issue 18 item 5), and the
README's metrics table lists exactly what the services export."""

from __future__ import annotations

import pathlib
import re

import pytest

from tests.metric_series import SERVICES, every_service

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
UNITS = ("bytes", "seconds", "ratio")
NEEDS_A_UNIT = {"capacity", "used", "size", "fill", "duration", "latency", "wait", "stall", "time",
                "age", "ttl"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    with every_service(str(tmp_path_factory.mktemp("services"))) as series:
        yield series


def violations(name: str, kind: str) -> list[str]:
    """What is wrong with one exported series name of type ``kind`` (empty: nothing)."""
    bad = []
    if not re.fullmatch(r"blobtier_[a-z][a-z0-9]*(_[a-z0-9]+)*", name):
        bad.append("not blobtier_snake_case")
    if (kind == "counter") != name.endswith("_total"):
        bad.append("a counter must end in _total, and only a counter may")
    words = name.removesuffix("_total").split("_")[1:]
    for unit in UNITS:
        if unit in words[:-1]:
            bad.append(f"the unit {unit} must be the last word (before _total)")
    if kind != "counter" and NEEDS_A_UNIT & set(words) and words[-1] not in UNITS:  # a level
        bad.append(f"a {'/'.join(sorted(NEEDS_A_UNIT & set(words)))} needs its unit ({', '.join(UNITS)})")
    if kind == "histogram" and words[-1] not in UNITS:
        bad.append("a histogram observes a quantity: its unit comes last")
    return bad


def test_every_series_of_every_service_follows_the_conventions(exported):
    wrong = {f"{svc}: {name} ({kind})": why for svc, series in exported.items()
             for name, (kind, _) in series.items() if (why := violations(name, kind))}
    assert wrong == {}


@pytest.mark.parametrize("name, kind", [
    ("blobtier_l1_capacity", "gauge"), ("blobtier_flash_region_fill", "gauge"),
    ("blobtier_chunkserver_bytes_sent_total", "counter"), ("blobtier_l1_hits", "counter"),
    ("blobtier_flash_hits_total", "gauge"), ("blobtier_x_get_time", "histogram")])
def test_the_checks_catch_the_old_names(name, kind):
    assert violations(name, kind)


def readme_table() -> dict[str, dict[str, str]]:
    """service -> {metric: type} from the README's metrics table (rows of
    ``| service | `metric` | type | labels | meaning |``)."""
    text = README.read_text()
    section = text[text.index("### Metrics"):]
    table: dict[str, dict[str, str]] = {}
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        m = re.match(r"\|\s*([^|`]+?)\s*\|\s*`([^`]+)`\s*\|\s*(\w+)\s*\|", line)
        if m:
            table.setdefault(m.group(1), {})[m.group(2)] = m.group(3)
    return table


def test_the_readme_table_is_what_the_services_export(exported):
    table = readme_table()
    assert set(table) == set(SERVICES)
    for svc, series in exported.items():
        assert table[svc] == {name: kind for name, (kind, _) in series.items()}, svc


DASHBOARD = README.parent / "examples" / "grafana-dashboard.json"


def dashboard_queries() -> list[str]:
    import json

    def panels(items: list[dict]) -> list[dict]:
        return [q for p in items for q in [p, *panels(p.get("panels", []))]]

    return [t["expr"] for p in panels(json.loads(DASHBOARD.read_text())["panels"])
            for t in p.get("targets", [])]


def unknown_series(query: str, exported: dict) -> list[str]:
    """The series a PromQL query names that no service exports (a histogram's ``_bucket``,
    ``_sum`` and ``_count`` are its own)."""
    known = {}
    for series in exported.values():
        known.update(series)
    out = []
    for name in re.findall(r"\bblobtier_[a-z0-9_]+", query):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in known and known.get(base, ("",))[0] != "histogram":
            out.append(name)
    return out


def test_every_grafana_query_names_series_the_services_export(exported):
    queries = dashboard_queries()
    assert len(queries) >= 20
    assert {q: unknown_series(q, exported) for q in queries if unknown_series(q, exported)} == {}
    for q in queries:
        assert q.count("(") == q.count(")") and q.count("{") == q.count("}"), q
    named = {n for q in queries for n in re.findall(r"\bblobtier_[a-z0-9_]+", q)}
    for must in ("blobtier_samples_total", "blobtier_data_stall_seconds_total", "blobtier_tier_hits_total",
                 "blobtier_chunkserver_sent_bytes_total", "blobtier_l1_used_bytes",
                 "blobtier_flash_region_fill_ratio"):
        assert must in named  # per-epoch throughput, stall, hit ratios, egress, fill


def test_the_grafana_check_catches_an_unknown_series(exported):
    assert unknown_series("rate(blobtier_l1_capacity[1m])", exported) == ["blobtier_l1_capacity"]
    assert unknown_series("rate(blobtier_flash_get_seconds_bucket[1m])", exported) == []
    assert unknown_series("rate(blobtier_flash_hits_total_bucket[1m])", exported) != []
