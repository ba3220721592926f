"""bench.serving_under_load's summary of a soak (synthetic result: no stack), the idle figures it reads,
its command line; and the soak recorder's busy/quiet split of the requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.common import RESULTS
from bench.load import Outcome
from bench.serving_under_load import KEYS, goals, idle_http, parse, summarize
from bench.soak import _Recorder
from bench.soak_cli import QUICK
from bench.stage_sampler import BUSY, QUIET, Interval
from workers.refresh.metrics import ACTIVITIES

IDLE = {"p99_ms_at_300": 257.32, "capacity_rps": 400.0, "source": "x"}


def _window(t_end: float, kafka_p99: float | None, http_p99: float | None) -> dict[str, Any]:
    return {
        "t_end_s": t_end,
        "kafka": {"n": 100, "p50_ms": 5.0, "p99_ms": kafka_p99, "p99_ms_busy": kafka_p99, "p99_ms_quiet": 6.0},
        "http": {"n": 20, "p50_ms": 4.0, "p99_ms": http_p99},
        "stages": {"kafka": {BUSY: {"search": 25.0}, QUIET: {"search": 5.0}}},
        "busy_share": 0.4,
        "processes": {"recall": {"rss_mb": 300.0, "cpu": 0.5}},
        "load_average": [1.0, 1.0, 1.0],
    }


def _soak(**extra: Any) -> dict[str, Any]:
    return {
        "windows": [_window(300.0, 20.0, 12.0), _window(600.0, 45.0, 29.0)],
        "failed_replies": 0,
        "http_failed": 0,
        "kafka_p99_ms_busy": 44.0,
        "http_p99_ms_busy": 28.0,
        "kafka_p99_ms_quiet": 8.0,
        "p99_stage_busy_overall": {"path": "kafka", "stage": "search"},
        "p99_stage_busy": {"kafka": "search", "http": "wait"},
        "busy_share": 0.4,
        "live_model_age_s_run": {"n": 600, "p50": 20.0, "p90": 40.0, "p99": 55.0, "max": 58.0},
        "freshness_run": {"user": {"p50_s": 0.25, "p99_s": 1.0}, "new_item": {"p50_s": 1.0, "p99_s": 3.0}},
        "stage_sampler": {"every_s": 1.0, "scrapes": 601, "busy_activities": list(ACTIVITIES)},
        **extra,
    }


def test_the_summary_has_exactly_the_issues_keys_and_reads_the_soak() -> None:
    summary, details = summarize(_soak(), IDLE, 10.0)
    assert tuple(summary) == KEYS
    assert summary == {
        "soak_minutes": 10.0,
        "kafka_p99_ms_max_window": 45.0,
        "http_p99_ms_max_window": 29.0,
        "kafka_p99_ms_during_round": 44.0,
        "http_p99_ms_during_round": 28.0,
        "p99_stage_during_round": "search",
        "model_age_p99_s": 55.0,
        "new_item_p99_s": 3.0,
        "http_p99_ms_at_300_idle": 257.32,
        "http_capacity_rps_idle": 400.0,
    }
    assert details["goals_met"] is True
    assert details["during_round"]["kafka_p99_ms_quiet"] == 8.0
    assert len(details["series"]) == 2 and details["series"][1]["cpu_cores"] == {"recall": 0.5}


def test_each_goal_is_judged_and_a_window_without_a_p99_fails_its_goal() -> None:
    judged = goals(_soak())
    assert all(g["met"] is True for g in judged.values())
    soak = _soak(failed_replies=1, freshness_run={"user": {"p99_s": 3.0}})
    soak["windows"][0]["http"]["p99_ms"] = 31.0
    judged = goals(soak)
    assert judged["failed_replies"]["met"] is False and judged["failed_replies"]["value"] == 1.0
    assert judged["http_p99_ms_every_window"] == {**judged["http_p99_ms_every_window"], "value": 31.0, "met": False}
    assert judged["user_freshness_p99_s"]["met"] is False
    assert judged["new_item_p99_s"]["met"] is None  # nothing measured: not judged
    soak = _soak()
    soak["windows"][1]["kafka"]["p99_ms"] = None  # every request of a window failed
    summary, details = summarize(soak, IDLE, 10.0)
    assert summary["kafka_p99_ms_max_window"] == 20.0  # the largest there is
    assert details["goals"]["kafka_p99_ms_every_window"]["met"] is None
    assert details["goals_met"] is False


def test_the_idle_figures_come_from_http_latency_json_or_are_null(tmp_path: Path) -> None:
    path = tmp_path / "http_latency.json"
    assert idle_http(path)["p99_ms_at_300"] is None and "absent" in idle_http(path)["source"]
    path.write_text(json.dumps({"p99_ms_at_300": 257.32, "capacity_rps": 400.0, "machine": {"date": "d"}}))
    idle = idle_http(path)
    assert (idle["p99_ms_at_300"], idle["capacity_rps"], idle["date"]) == (257.32, 400.0, "d")
    summary, _ = summarize(_soak(), idle_http(tmp_path / "none.json"), 10.0)
    assert summary["http_p99_ms_at_300_idle"] is None and summary["http_capacity_rps_idle"] is None


def test_the_command_line_defaults_are_the_issues_and_quick_writes_elsewhere() -> None:
    args = parse([])
    assert (args.duration, args.window, args.click_rate, args.kafka_rate, args.http_rate) == (
        1800.0,
        300.0,
        1000.0,
        50.0,
        10.0,
    )
    assert (args.items, args.new_items_per_s, args.refresh_interval) == (100_000, 1.0, 30.0)
    assert args.busy_activities == ["round", "swap"]  # "during round": the fast path is not a round
    assert args.results == RESULTS and args.out == "serving_under_load"
    quick = parse(["--quick", "--duration", "60", "--busy-activities", "round", "swap", "fast_path"])
    assert quick.duration == 60.0  # given explicitly: kept
    assert quick.items == QUICK["items"] and quick.window == QUICK["window"]
    assert quick.busy_activities == ["round", "swap", "fast_path"]
    assert quick.results == RESULTS / "quick"
    with pytest.raises(SystemExit):
        parse(["--busy-activities", "nap"])


def test_the_recorder_splits_requests_by_the_class_of_their_second() -> None:
    rec = _Recorder()
    intervals = [
        Interval(0.0, 1.0, True, frozenset({"round"}), {}),
        Interval(1.0, 2.0, False, frozenset(), {}),
        Interval(2.0, 3.0, None, frozenset(), {}),
    ]
    for due, ms, kind in [
        (0.1, 40.0, "ok"),
        (0.5, None, "timeout"),
        (1.2, 5.0, "ok"),
        (1.8, 6.0, "ok"),
        (2.5, 9.0, "ok"),
    ]:
        rec.add("kafka", Outcome(due, ms, kind))
    out = rec.by_class("kafka", intervals)
    assert out == {
        "p99_ms_busy": 40.0,
        "n_busy": 1,
        "failed_busy": 1,
        "p99_ms_quiet": pytest.approx(5.99),
        "n_quiet": 2,
        "failed_quiet": 0,
    }
    window = rec.by_class("kafka", intervals, 1.0, 2.0)  # sent in [1, 2) only
    assert window["n_busy"] == 0 and window["p99_ms_busy"] is None and window["n_quiet"] == 2
