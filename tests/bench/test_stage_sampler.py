"""bench.stage_sampler on hand-made pages and buckets (no stack): parsing, the busy/quiet class of an
interval, per-class bucket-delta quantiles, the p99 stage, requests by the class of their second, and
the sampler thread against a local page server."""

from __future__ import annotations

import http.server
import itertools
import math
import threading
import time
from collections.abc import Iterator, Mapping
from typing import ClassVar

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bench.stage_sampler import (
    BUSY,
    LES,
    QUIET,
    Activity,
    Interval,
    Sample,
    StageSampler,
    activity_share,
    bucket_quantile_ms,
    busy_share,
    class_buckets,
    in_window,
    interval,
    largest_stage,
    parse_activity,
    parse_model_age,
    parse_stages,
    request_classes,
    stage_quantiles,
    stage_summary,
)
from tests.waiting import wait_until
from workers.recall.metrics import STAGES, RecallMetrics
from workers.refresh.metrics import ACTIVITIES, RefreshMetrics
from workers.status import window_quantile

IDLE = {a: 0.0 for a in ACTIVITIES}


def _cum(per_bucket: Mapping[str, Mapping[float, float]]) -> np.ndarray:
    """Cumulative ``STAGES x LES`` counts from stage -> {bucket upper bound (s): observations in it}."""
    out = np.zeros((len(STAGES), len(LES)))
    for stage, counts in per_bucket.items():
        for le, n in counts.items():
            out[STAGES.index(stage), LES.index(le) :] += n
    return out


def _act(active: Mapping[str, float] | None = None, started: Mapping[str, float] | None = None) -> Activity:
    return Activity({**IDLE, **(active or {})}, {**IDLE, **(started or {})})


def _iv(start: float, busy: bool | None, **deltas: np.ndarray) -> Interval:
    seen = frozenset({"round"}) if busy else frozenset[str]()
    return Interval(start, start + 1.0, busy, seen, deltas)


PAGE = """# HELP mindstream_recall_stage_seconds Time a recall spends per stage
# TYPE mindstream_recall_stage_seconds histogram
mindstream_recall_stage_seconds_bucket{le="0.005",stage="search"} 3.0
mindstream_recall_stage_seconds_bucket{le="0.025",stage="search"} 9.0
mindstream_recall_stage_seconds_bucket{le="+Inf",stage="search"} 10.0
mindstream_recall_stage_seconds_bucket{le="+Inf",stage="nap"} 7.0
mindstream_recall_stage_seconds_count{stage="search"} 10.0
mindstream_recall_latency_seconds_bucket{le="0.005"} 99.0
# TYPE mindstream_refresh_activity gauge
mindstream_refresh_activity{activity="round"} 1.0
mindstream_refresh_activity{activity="swap"} 0.0
# TYPE mindstream_refresh_activity_started counter
mindstream_refresh_activity_started_total{activity="round"} 4.0
mindstream_refresh_activity_started_created{activity="round"} 1.7e9
mindstream_live_model_age_seconds 12.5
"""


def test_a_page_gives_its_stage_buckets_activity_and_model_age() -> None:
    stages = parse_stages(PAGE)
    search = stages[STAGES.index("search")]
    assert search[LES.index(0.005)] == 3.0 and search[LES.index(0.025)] == 9.0 and search[-1] == 10.0
    assert stages[STAGES.index("wait")].sum() == 0.0  # absent: 0; the unknown stage and other histograms ignored
    activity = parse_activity(PAGE)
    assert activity.active == {"round": 1.0, "swap": 0.0, "fast_path": 0.0}
    assert activity.started == {"round": 4.0, "swap": 0.0, "fast_path": 0.0}  # _created is not the count
    assert parse_model_age(PAGE) == 12.5
    assert parse_model_age("mindstream_live_model_age_seconds_x 3\n") is None


def test_the_workers_own_pages_parse_the_names_the_sampler_reads() -> None:
    registry = CollectorRegistry()
    refresh = RefreshMetrics(registry)
    recall = RecallMetrics(registry)
    recall.observe_stage("search", 0.02)
    recall.observe_waits([0.0004, 20.0])
    refresh.set_live("v3", time.time() - 30)
    with refresh.during("swap"):
        page = generate_latest(registry).decode()
    activity = parse_activity(page)
    assert activity.active == {"round": 0.0, "swap": 1.0, "fast_path": 0.0}
    assert activity.started == {"round": 0.0, "swap": 1.0, "fast_path": 0.0}
    stages = parse_stages(page)
    assert stages[STAGES.index("search"), LES.index(0.025)] == 1.0 and stages[STAGES.index("search"), 0] == 0.0
    assert stages[STAGES.index("wait"), 0] == 1.0 and stages[STAGES.index("wait"), -1] == 2.0  # +Inf holds all
    age = parse_model_age(page)
    assert age is not None and 29.0 < age < 60.0


@pytest.mark.parametrize(
    ("a", "b", "busy", "seen"),
    [
        (_act(), _act(), False, set()),
        (_act({"round": 1}), _act(), True, {"round"}),  # in progress at the start
        (_act(), _act({"swap": 1}), True, {"swap"}),  # at the end
        (_act(started={"fast_path": 3}), _act(started={"fast_path": 4}), True, {"fast_path"}),  # a short one
        (_act(started={"round": 5}), _act(started={"round": 0}), True, {"round"}),  # a restart moved it back
    ],
)
def test_an_interval_is_busy_when_an_activity_shows_at_either_end_or_started_in_it(
    a: Activity, b: Activity, busy: bool, seen: set[str]
) -> None:
    iv = interval(Sample(10.0, {}, a), Sample(11.0, {}, b))
    assert iv.busy is busy and iv.activities == seen and iv.seconds == 1.0
    assert iv.label == (BUSY if busy else QUIET)


def test_only_the_activities_that_count_make_it_busy_and_a_missing_refresh_page_leaves_it_unknown() -> None:
    a, b = _act(started={"fast_path": 1}), _act(started={"fast_path": 2})
    iv = interval(Sample(0.0, {}, a), Sample(1.0, {}, b), busy_activities=("round", "swap"))
    assert iv.busy is False and iv.activities == {"fast_path"}  # seen, but it does not count
    unknown = interval(Sample(0.0, {}, None), Sample(1.0, {}, b))
    assert unknown.busy is None and unknown.label is None


def test_stage_deltas_per_path_and_left_out_when_a_page_is_missing_or_counts_went_down() -> None:
    before = {"kafka": _cum({"search": {0.005: 2}}), "http": _cum({"wait": {0.001: 5}})}
    after = {"kafka": _cum({"search": {0.005: 2, 0.025: 3}}), "http": _cum({"wait": {0.001: 1}})}
    iv = interval(Sample(0.0, before, _act()), Sample(1.0, after, _act()))
    assert set(iv.deltas) == {"kafka"}  # http went down: a restarted gateway, not observations
    np.testing.assert_array_equal(iv.deltas["kafka"], _cum({"search": {0.025: 3}}))
    assert interval(Sample(0.0, {}, _act()), Sample(1.0, after, _act())).deltas == {}


def test_per_class_quantiles_come_from_the_summed_deltas_of_that_class() -> None:
    busy = _cum({"search": {0.025: 90, 0.1: 10}, "wait": {0.001: 100}})
    quiet = _cum({"search": {0.005: 100}, "wait": {0.001: 100}})
    intervals = [
        _iv(0.0, True, kafka=busy),
        _iv(1.0, False, kafka=quiet),
        _iv(2.0, True, kafka=busy, http=quiet),
        _iv(3.0, None, kafka=busy * 100),  # unclassified: in neither class
    ]
    summed = class_buckets(intervals, "kafka", BUSY)
    np.testing.assert_array_equal(summed, 2 * busy)
    assert stage_quantiles(summed)["search"] == 100.0  # 20 of 200 in the 0.1 s bucket: p99 there
    assert stage_quantiles(summed)["wait"] == 1.0
    assert stage_quantiles(summed)["tower"] is None  # nothing observed
    assert stage_quantiles(class_buckets(intervals, "kafka", QUIET))["search"] == 5.0
    assert stage_quantiles(class_buckets(intervals, "http", QUIET))["search"] is None  # http's only delta is busy


def test_the_bucket_quantile_is_window_quantiles_upper_bound_and_the_inf_bucket_reads_the_last_bound() -> None:
    row = _cum({"search": {0.0075: 50, 0.015: 50}})[STAGES.index("search")]
    pairs = list(zip(LES, row.tolist(), strict=True))
    for q in (0.5, 0.9, 0.99):
        bound = window_quantile([], pairs, q)
        assert bound is not None and bucket_quantile_ms(row, q) == pytest.approx(1000 * bound)
    over = _cum({"wait": {math.inf: 10}})[STAGES.index("wait")]
    assert bucket_quantile_ms(over) == 10_000.0  # "more than 10 s", not infinity (JSON-safe)
    assert bucket_quantile_ms(np.zeros(len(LES))) is None


def test_the_p99_stage_is_the_largest_and_a_tie_goes_to_the_one_holding_more_of_the_tail() -> None:
    table = _cum({"search": {0.025: 100, 0.05: 5}, "wait": {0.001: 100, 0.05: 2}, "tower": {0.0025: 10}})
    rows = {("kafka", s): table[i] for i, s in enumerate(STAGES)}
    # search and wait both have their p99 in the 0.05 s bucket: search has 5/105 of its observations there
    assert largest_stage(rows) == ("kafka", "search")
    more = _cum({"wait": {0.001: 10, 0.05: 2}})
    rows[("http", "wait")] = more[STAGES.index("wait")]  # 2/12 in that bucket: more of its tail
    assert largest_stage(rows) == ("http", "wait")
    rows[("http", "merge")] = _cum({"merge": {0.1: 1}})[STAGES.index("merge")]  # a larger bucket wins outright
    assert largest_stage(rows) == ("http", "merge")
    assert largest_stage({("kafka", "wait"): np.zeros(len(LES))}) is None
    same = _cum({"wait": {0.01: 4}, "search": {0.01: 4}})
    tie = {("kafka", s): same[STAGES.index(s)] for s in ("wait", "search")}
    assert largest_stage(tie) == ("kafka", "wait")  # a full tie: the first given


def test_intervals_belong_to_the_window_of_their_midpoint_and_shares_count_classified_seconds() -> None:
    intervals = [_iv(t, busy) for t, busy in ((0.0, True), (1.0, False), (2.0, False), (3.0, None), (4.0, True))]
    assert [iv.start for iv in in_window(intervals, 1.0, 3.0)] == [1.0, 2.0]  # 0.5 is out, 3.5 is out
    assert busy_share(intervals) == 0.5  # 2 busy of 4 classified seconds (the unknown one left out)
    assert activity_share(intervals) == {"round": 0.5, "swap": 0.0, "fast_path": 0.0}
    assert busy_share([_iv(0.0, None)]) is None


def test_a_request_takes_the_class_of_the_second_it_was_sent_in() -> None:
    intervals = [_iv(10.0, True), _iv(11.0, False), _iv(12.0, None)]
    sent = [9.5, 10.0, 10.99, 11.0, 11.5, 12.5, 13.0, 20.0]
    assert request_classes(intervals, sent) == [None, BUSY, BUSY, QUIET, QUIET, None, None, None]
    assert request_classes([], [1.0]) == [None]


def test_the_summary_names_each_paths_busy_p99_stage_and_the_overall_one() -> None:
    kafka = _cum({"search": {0.025: 100}, "wait": {0.001: 100}})
    http = _cum({"wait": {0.05: 100}, "reply": {0.001: 100}})
    quiet = _cum({"search": {0.005: 100}})
    intervals = [_iv(0.0, True, kafka=kafka, http=http), _iv(1.0, False, kafka=quiet, http=quiet), _iv(2.0, None)]
    out = stage_summary(intervals)
    assert out["stages"] == {
        "kafka": {BUSY: stage_quantiles(kafka), QUIET: stage_quantiles(quiet)},
        "http": {BUSY: stage_quantiles(http), QUIET: stage_quantiles(quiet)},
    }
    assert out["p99_stage_busy"] == {"kafka": "search", "http": "wait"}
    assert out["p99_stage_busy_overall"] == {"path": "http", "stage": "wait"}  # 50 ms > 25 ms
    assert out["busy_share"] == 0.5 and out["sampled_s"] == 3.0 and out["unclassified_s"] == 1.0
    assert out["stage_gaps_s"] == {"kafka": 1.0, "http": 1.0}
    empty = stage_summary([])
    assert empty["p99_stage_busy_overall"] is None and empty["busy_share"] is None


class _Pages(http.server.BaseHTTPRequestHandler):
    pages: ClassVar[dict[str, str]] = {}

    def do_GET(self) -> None:
        body = self.pages.get(self.path)
        if body is None:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:
        return None


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_sampler_scrapes_the_three_pages_each_period_and_keeps_intervals(server: str) -> None:
    _Pages.pages = {"/recall": PAGE, "/gateway": PAGE, "/refresh": PAGE}
    urls = {"kafka": f"{server}/recall", "http": f"{server}/gateway", "refresh": f"{server}/refresh"}
    sampler = StageSampler(urls, every_s=0.05).start()
    wait_until(lambda: len(sampler.intervals()) >= 3, 30, "three intervals with every page", every=0.01)
    _Pages.pages = {"/recall": PAGE, "/refresh": PAGE}  # the gateway stops answering
    switched = sampler.scrapes  # samples begun so far: every later one finds no gateway page
    wait_until(lambda: len(sampler.intervals()) >= switched + 2, 30, "intervals without the gateway", every=0.01)
    sampler.stop()
    intervals = sampler.intervals()
    assert len(intervals) >= 4 and sampler.scrapes == len(intervals) + 1
    assert all(iv.busy is True for iv in intervals)  # the page says a round is in progress
    assert all(b.start == a.end for a, b in itertools.pairwise(intervals))  # contiguous
    assert "http" in intervals[0].deltas and "http" not in intervals[-1].deltas
    assert all("kafka" in iv.deltas and not iv.deltas["kafka"].any() for iv in intervals)  # same page: no delta
    assert sampler.model_ages() and set(sampler.model_ages()) == {12.5}
    with pytest.raises(ValueError, match="unknown activities"):
        StageSampler(urls, busy_activities=("nap",))
