"""bench.report's rows for the days soak, the multi-interest table and serving under load (hand-made results)."""

from __future__ import annotations

from typing import Any

from bench.report import rows_days, rows_multi_interest, rows_serving_under_load


def _m(mean: float | None) -> dict[str, Any]:
    return {"mean": mean, "sd": 0.01}


def _cfg(recall: float, coverage: float | None) -> dict[str, Any]:
    return {"recall@50": _m(recall), "coverage@50": _m(coverage)}


def test_multi_interest_rows_pick_the_broadest_config_within_five_percent_of_k1_recall() -> None:
    result = {
        "standard": {
            "k1": _cfg(0.30, 10.0),
            "k1_l0.5": _cfg(0.29, 12.0),  # K=1 never counts
            "k4": _cfg(0.29, 12.0),  # 0.967x recall, 1.2x coverage
            "k4_l0.5": _cfg(0.286, 14.0),  # 0.953x recall, 1.4x coverage: the best within 5%
            "k2_l0.5": _cfg(0.20, 18.0),  # broader but 33% less recall
        },
        "mixed": {"k1": _cfg(0.10, None), "k4": _cfg(0.12, None)},
        "serving_cost_ms": {"lambda_0": 0.41, "lambda_0.5": 0.93},
    }
    mixed, coverage, cost = rows_multi_interest(result)
    assert mixed[2:] == ("0.1200 vs 0.1000", ">= 1.10x", "1.200x")
    assert coverage[2] == "k4_l0.5: recall 0.953x" and coverage[4] == "1.400x"
    assert cost[2] == "0.410 -> 0.930"


def test_multi_interest_rows_without_categories_say_so() -> None:
    result = {"standard": {"k1": _cfg(0.3, None), "k4": _cfg(0.29, None)}, "mixed": {}, "serving_cost_ms": {}}
    _, coverage, cost = rows_multi_interest(result, name="multi_interest_amazonbook")
    assert coverage[0] == "multi_interest_amazonbook" and coverage[2] == "none within 5%" and coverage[4] == "-"
    assert cost[2] == "not measured -> not measured"


def test_days_and_serving_rows_show_the_figures_against_their_goals() -> None:
    days = {
        "clicks_sent": 36_000_000,
        "duration_s": 7200.0,
        "lost_clicks": 0,
        "failed_replies": 2,
        "rss_growth_ratio_after_warmup": 1.15,
        "disk_growth_ratio_after_warmup": 1.31,
        "state_bytes_per_user": 20_500.0,
        "rss_mb_last": {},
        "disk_mb_last": {"total": 3100.0},
    }
    rss, disk, lost, state = rows_days(days)
    assert rss[1].endswith("(2.0 h, 36,000,000 clicks)") and rss[2] == "1.150"
    assert disk[2] == "1.310" and lost[2] == "0 / 2" and state[2] == "20,500 / 3,100"
    serving = {
        "soak_minutes": 30,
        "kafka_p99_ms_max_window": 120.5,
        "http_p99_ms_max_window": 80.0,
        "kafka_p99_ms_during_round": 150.0,
        "http_p99_ms_during_round": 95.0,
        "p99_stage_during_round": "search",
        "model_age_p99_s": 75.0,
        "new_item_p99_s": 4.0,
        "http_p99_ms_at_300_idle": None,
        "http_capacity_rps_idle": 400,
    }
    worst, during, fresh, idle = rows_serving_under_load(serving)
    assert worst[2] == "120.50 / 80.00" and during[3] == "stage: search"
    assert fresh[2] == "75.0 / 4.0" and idle[2] == "not measured / 400"
