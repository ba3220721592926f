"""A half-minute soak at small rates: the whole stack as processes, every click applied, every reply back.

Latency is never asserted (tests assert no speed); the full soak is ``python -m bench.soak``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from bench.soak import SoakConfig, plot, run_soak

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_short_soak_loses_no_click_and_no_reply(tmp_path: Path) -> None:
    cfg = SoakConfig(
        duration_s=30,
        window_s=10,
        click_rate=300,
        kafka_rate=10,
        http_rate=2,
        new_items_per_s=1,
        items=3000,
        refresh_interval_s=8,
        drain_s=120,
        base_batches=10,
    )
    result = run_soak(cfg, tmp_path / "stack")
    windows = result["windows"]
    assert len(windows) == 3
    # behaviour, not rates: clicks and requests flowed in every window, none was lost or failed
    sent = [w["clicks_sent"] for w in windows]
    assert sent[0] > 0 and all(a < b for a, b in itertools.pairwise(sent)), f"clicks stalled: {sent}"
    assert result["clicks_delivery_failed"] == 0 and result["lost_clicks"] == 0
    assert all(w["kafka"]["n"] > 0 for w in windows), "a window without recall answers"
    assert result["failed_replies"] == 0 and result["kafka_unanswered_at_end"] == 0
    assert result["http_requests"] > 0
    last = windows[-1]
    # the private reply topics of the bench's client and of the load process' client: fixed, never growing
    assert last["broker_topics"]["reply_topics"] == 2
    assert result["load_generators"]["kafka"] == "process"
    assert last["broker_topics"]["disk_mb"] > 0  # the broker's log is on disk
    assert all(p["rss_mb_max"] >= p["rss_mb_median"] > 0 for p in last["processes"].values())  # 5-s samples
    # the stage sampler: its intervals cover the run (contiguous, however slow a scrape), both paths' stage
    # tables, rounds seen, and requests classed by the interval they were sent in
    assert set(last["stages"]) == {"kafka", "http"} and set(last["stages"]["kafka"]) == {"busy", "quiet"}
    assert result["sampled_s"] > 0.8 * cfg.duration_s and result["stage_sampler"]["scrapes"] >= len(windows)
    assert result["activity_share"]["round"] > 0 and 0 < result["busy_share"] <= 1
    assert 0 < result["kafka_n_busy"] + result["kafka_n_quiet"] <= result["kafka_requests"]
    assert result["p99_stage_busy_overall"]["stage"] in ("wait", "history", "tower", "search", "merge", "reply")
    assert result["live_model_age_s_run"]["n"] > 0 and "new_item" in result["freshness_run"]
    plot(result, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").stat().st_size > 0
