"""A one-minute soak at small rates: the whole stack as processes, every click applied, every reply back.

Latency is never asserted (tests assert no speed); the full soak is ``python -m bench.soak``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import SoakConfig, plot, run_soak

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_short_soak_loses_no_click_and_no_reply(tmp_path: Path) -> None:
    cfg = SoakConfig(
        duration_s=60,
        window_s=20,
        click_rate=300,
        kafka_rate=10,
        http_rate=2,
        new_items_per_s=1,
        items=3000,
        refresh_interval_s=10,
        drain_s=120,
        base_batches=10,
    )
    result = run_soak(cfg, tmp_path / "stack")
    assert result["clicks_sent"] > 0.8 * cfg.click_rate * cfg.duration_s
    assert result["lost_clicks"] == 0
    assert result["failed_replies"] == 0
    assert result["kafka_requests"] > 0.8 * cfg.kafka_rate * cfg.duration_s
    assert len(result["windows"]) == 3
    last = result["windows"][-1]
    assert last["broker_topics"]["reply_topics"] == 1  # the one client's private reply topic, fixed
    assert last["broker_topics"]["disk_mb"] > 0  # the broker's log is on disk
    assert all(p["rss_mb_max"] >= p["rss_mb_median"] > 0 for p in last["processes"].values())  # 5-s samples
    # the stage sampler: every second scraped and classed, both paths' stage tables, rounds seen
    assert set(last["stages"]) == {"kafka", "http"} and set(last["stages"]["kafka"]) == {"busy", "quiet"}
    assert result["sampled_s"] > 0.8 * cfg.duration_s and result["stage_sampler"]["scrapes"] > 0.8 * cfg.duration_s
    assert result["activity_share"]["round"] > 0 and 0 < result["busy_share"] <= 1
    assert result["kafka_n_busy"] + result["kafka_n_quiet"] > 0.8 * result["kafka_requests"]
    assert result["p99_stage_busy_overall"]["stage"] in ("wait", "history", "tower", "search", "merge", "reply")
    assert result["live_model_age_s_run"]["n"] > 0 and "new_item" in result["freshness_run"]
    plot(result, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").stat().st_size > 0
