"""Prometheus config, alerting rules, Alertmanager and the Grafana dashboard, checked against the code's metric names.

``promtool`` (Debian package ``prometheus``) runs ``check config``, ``check rules`` and the rule unit
tests, ``amtool`` (Debian package ``prometheus-alertmanager``) ``check-config``, when they are on PATH;
CI installs both. The structural checks run everywhere.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.required_tools import missing_tool

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "ops" / "prometheus"
ALERTMANAGER = ROOT / "ops" / "alertmanager" / "alertmanager.yml"
GRAFANA_DIR = ROOT / "ops" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "mindstream.json"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml"

# Series a metric family exposes besides its own name (counters: _total, _created; histograms:
# _bucket, _sum, _count, _created). prometheus_client appends _total to a Counter's given name.
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")
METRIC_IN_EXPR = re.compile(r"\bmindstream_[a-z0-9_]+\b")
# Panels about what we run on: the brokers' JMX exporter series (names checked against a real broker by
# tests/ops/test_kafka_jmx.py) and Prometheus' own `up`.
OTHER_IN_EXPR = re.compile(r"\bkafka_[a-z0-9_]+\b|\bup\b")
UI_STATUS = ROOT / "workers" / "gateway" / "ui_status.py"
SEVERITIES = {"critical", "warning", "info"}


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing_tool(
            "promtool", "promtool not on PATH (CI installs it: apt-get install --no-install-recommends prometheus)"
        )
    return path


def _run(*args: str) -> str:
    proc = subprocess.run(
        [_promtool(), *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.local.yml"])
def test_promtool_check_config(config: str) -> None:
    assert "SUCCESS" in _run("check", "config", config)


def test_amtool_check_config() -> None:
    path = shutil.which("amtool")
    if path is None:
        missing_tool(
            "amtool",
            "amtool not on PATH (CI installs it: apt-get install --no-install-recommends prometheus-alertmanager)",
        )
    proc = subprocess.run(
        [path, "check-config", str(ALERTMANAGER)], capture_output=True, text=True, timeout=120, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "SUCCESS" in output, output


def test_alertmanager_routes_to_the_null_receiver() -> None:
    """Every alert reaches one receiver, "null": no integration yet (the pager plugs in there)."""
    doc = yaml.safe_load(ALERTMANAGER.read_text())
    assert doc["route"]["receiver"] == "null"
    assert not doc["route"].get("routes"), "child routes would need receivers of their own"
    (receiver,) = doc["receivers"]
    assert receiver == {"name": "null"}, "the null receiver has no integration"
    text = ALERTMANAGER.read_text()
    assert "place to plug a pager" in text
    alerts = {r["alert"] for r in _rules()}
    for rule in doc.get("inhibit_rules", []):
        for matcher in rule.get("source_matchers", []) + rule.get("target_matchers", []):
            name = re.fullmatch(r'alertname\s*=\s*"(\w+)"', matcher)
            assert name is None or name.group(1) in alerts, matcher


def test_promtool_check_rules() -> None:
    assert "SUCCESS" in _run("check", "rules", "rules.yml")


def test_promtool_test_rules() -> None:
    assert "SUCCESS" in _run("test", "rules", "rules_test.yml")


# ------------------------------------------------------------------------------ metric names


def _code_metric_names() -> set[str]:
    """Every ``"mindstream_..."`` string literal in the workers package (metric names live there)."""
    names: set[str] = set()
    for source in (ROOT / "workers").rglob("*.py"):
        names.update(re.findall(r"""["'](mindstream_[a-z0-9_]+)["']""", source.read_text()))
    return names


def _known(series: str, names: set[str]) -> bool:
    return series in names or any(
        series.endswith(suffix) and series.removesuffix(suffix) in names for suffix in SUFFIXES
    )


def _unknown_metrics(expr: str, names: set[str]) -> set[str]:
    return {m for m in METRIC_IN_EXPR.findall(expr) if not _known(m, names)}


def test_metric_name_matching() -> None:
    names = {"mindstream_x_seconds", "mindstream_y"}
    assert _known("mindstream_x_seconds_bucket", names)
    assert _known("mindstream_y_total", names)
    assert not _known("mindstream_z", names)
    assert _unknown_metrics("rate(mindstream_y_total[5m]) / mindstream_q", names) == {"mindstream_q"}


def test_code_declares_the_metrics_the_ops_files_use() -> None:
    names = _code_metric_names()
    for expected in (
        "mindstream_consumer_lag",
        "mindstream_dlq_messages",
        "mindstream_live_model_version",
        "mindstream_live_model_age_seconds",
        "mindstream_swap_failures_total",
        "mindstream_recall_requests",
        "mindstream_recall_latency_seconds",
    ):
        assert expected in names, expected


# ------------------------------------------------------------------------------ rules


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_rules_are_labelled_annotated_and_use_real_metrics() -> None:
    names = _code_metric_names()
    rules = _rules()
    assert rules
    alerts = [r["alert"] for r in rules]
    assert len(alerts) == len(set(alerts)), "duplicate alert names"
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"].get("summary") and rule["annotations"].get("description"), rule["alert"]
        assert not _unknown_metrics(rule["expr"], names), (rule["alert"], _unknown_metrics(rule["expr"], names))


def test_required_alerts_exist() -> None:
    exprs = {r["alert"]: r["expr"] for r in _rules()}
    assert "mindstream_live_model_age_seconds" in exprs["MindstreamModelStale"]
    assert "> 90" in exprs["MindstreamModelStale"]  # 3 x the 30 s default refresh interval
    assert re.search(r"(deriv|delta)\(mindstream_consumer_lag\[5m\]\)", exprs["MindstreamConsumerLagRising"])
    assert "rate(mindstream_dlq_messages_total" in exprs["MindstreamDLQRateHigh"]
    assert "absent(mindstream_live_model_version" in exprs["MindstreamNoLiveCollection"]
    assert "mindstream_swap_failures_total" in exprs["MindstreamSwapFailures"]
    assert "mindstream_recall_requests_total" in exprs["MindstreamRecallErrorRatioHigh"]


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    doc = yaml.safe_load((PROMETHEUS_DIR / "rules_test.yml").read_text())
    assert doc["rule_files"] == ["rules.yml"]
    firing: set[str] = set()
    silent: set[str] = set()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    alerts = {r["alert"] for r in _rules()}
    assert alerts - firing == set(), "alerts never seen firing"
    assert alerts - silent == set(), "alerts never seen silent"


# ------------------------------------------------------------------------------ Grafana


def _datasource_uid() -> str:
    doc = yaml.safe_load(DATASOURCES.read_text())
    assert doc["apiVersion"] == 1
    (source,) = doc["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    assert source["uid"] and source["url"].startswith("http://")
    return str(source["uid"])


def test_dashboard_provider() -> None:
    doc = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]
    )


def test_dashboard_structure() -> None:
    uid = _datasource_uid()
    names = _code_metric_names()
    dash = json.loads(DASHBOARD.read_text())
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    assert dash["uid"] and dash["title"]
    panels = dash["panels"]
    assert panels
    assert len({p["id"] for p in panels}) == len(panels), "duplicate panel ids"
    for panel in panels:
        title = panel.get("title")
        assert panel.get("type") and title, panel
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), title
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, title
        assert panel["datasource"]["uid"] == uid, title
        assert panel["targets"], title
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, title
            assert target["refId"] and target["expr"], title
            assert METRIC_IN_EXPR.search(target["expr"]) or OTHER_IN_EXPR.search(target["expr"]), (
                title,
                target["expr"],
            )
            assert not _unknown_metrics(target["expr"], names), (title, _unknown_metrics(target["expr"], names))
    for i, a in enumerate(panels):
        for b in panels[i + 1 :]:
            assert not _overlap(a["gridPos"], b["gridPos"]), (a["title"], b["title"])


def test_dashboard_covers_the_pipeline() -> None:
    exprs = " ".join(t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"])
    for needed in (
        "mindstream_clicks_consumed_total",
        "mindstream_clicks_valid_total",
        "mindstream_clicks_invalid_total",
        "mindstream_dlq_messages_total",
        "mindstream_ingest_batch_size_bucket",
        "mindstream_consumer_lag",
        "mindstream_refresh_phase_seconds_bucket",
        "mindstream_swaps_total",
        "mindstream_swap_failures_total",
        "mindstream_live_model_version",
        "mindstream_live_model_age_seconds",
        "mindstream_recall_requests_total",
    ):
        assert needed in exprs, needed
    assert "histogram_quantile(0.5, sum by (le) (rate(mindstream_recall_latency_seconds_bucket" in exprs
    assert "histogram_quantile(0.99, sum by (le) (rate(mindstream_recall_latency_seconds_bucket" in exprs


def _family(series: str) -> str:
    """A series' metric family: ``x_bucket`` / ``x_count`` / ``x_sum`` -> ``x``; counters keep ``_total``."""
    for suffix in ("_bucket", "_count", "_sum", "_created"):
        if series.endswith(suffix):
            return series.removesuffix(suffix)
    return series


def _ui_metric_names() -> set[str]:
    """Every metric the /ui page's status reads: the ``mindstream_*`` names in workers/gateway/ui_status.py."""
    return set(METRIC_IN_EXPR.findall(UI_STATUS.read_text()))


def test_dashboard_shows_every_figure_of_the_ui() -> None:
    """Grafana, for production, draws every figure /ui shows: each metric ui_status.py reads is in some panel."""
    ui = _ui_metric_names()
    assert {"mindstream_freshness_user_seconds", "mindstream_swaps_total", "mindstream_dlq_messages_total"} <= ui
    exprs = " ".join(t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"])
    shown = {_family(name) for name in METRIC_IN_EXPR.findall(exprs)} | set(METRIC_IN_EXPR.findall(exprs))
    missing = {name for name in ui if name not in shown and _family(name) not in shown}
    assert not missing, f"metrics /ui shows that no Grafana panel draws: {sorted(missing)}"


def test_dashboard_covers_serving_internals() -> None:
    """The recall stages, GC pauses and the fast path (what /ui's serving figures are made of)."""
    exprs = " ".join(t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"])
    for needed in (
        "sum by (le, stage) (rate(mindstream_recall_stage_seconds_bucket",
        "mindstream_gc_pause_seconds_bucket",
        "mindstream_live_generation",
        "mindstream_fast_path_items_total",
        'mindstream_http_request_duration_seconds_bucket{endpoint="/rec/recall"}',
    ):
        assert needed in exprs, needed


def test_family() -> None:
    assert _family("mindstream_recall_latency_seconds_bucket") == "mindstream_recall_latency_seconds"
    assert _family("mindstream_swaps_total") == "mindstream_swaps_total"
