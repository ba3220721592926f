"""bench.product_recall's pure parts: the probe loop's timing rules, the request kinds, the latency table.
No broker, no Milvus; the probes are scripted."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.product_recall import (
    EXCLUDED_ITEMS,
    Paths,
    Withdrawals,
    categories_of,
    latency_table,
    request_kinds,
    segment_of,
    until,
)


class ScriptedPaths(Paths):
    """Each path answers from its script, one list per probe (the last one repeated); logs when."""

    def __init__(self, kafka: list[list[int]], http: list[list[int]]) -> None:
        self.top_k = 3  # no client, no gateway: the scripts answer
        self.scripts = {"kafka": kafka, "http": http}
        self.calls = {"kafka": 0, "http": 0}
        self.answered: dict[str, list[float]] = {"kafka": [], "http": []}

    def _next(self, path: str) -> list[int]:
        script = self.scripts[path]
        items = script[min(self.calls[path], len(script) - 1)]
        self.calls[path] += 1
        self.answered[path].append(time.monotonic())
        return items

    def kafka(self, history: list[int]) -> list[int]:
        return self._next("kafka")

    def http(self, history: list[int]) -> list[int]:
        return self._next("http")


def test_an_item_counts_gone_from_its_last_disappearance_once_it_stayed_gone() -> None:
    # Kafka: present, gone, back again (a flap), then gone for good from its 4th answer; HTTP: gone at once.
    paths = ScriptedPaths(kafka=[[7, 1], [1, 2], [7, 2], [1, 2]], http=[[1, 2]])
    seen = Withdrawals([], {"kafka": [], "http": []}, [])
    leaked: list[list[int]] = []
    t0 = time.monotonic()
    at = until(paths, [1], 7, False, t0, 0.05, 30.0, seen, leaked.append)
    kafka_gone_for_good = paths.answered["kafka"][3] - t0
    assert at["kafka"] is not None and at["kafka"] >= round(kafka_gone_for_good, 3) - 0.001
    assert at["kafka"] < paths.answered["kafka"][4] - t0  # the first answer of the last run, not a later one
    assert at["http"] is not None and at["http"] <= paths.answered["http"][0] - t0 + 0.001
    assert seen.probes == paths.calls["kafka"] + paths.calls["http"] and seen.probe_errors == 0
    assert len(leaked) == seen.probes  # every reply was shown to the leak check


def test_an_item_that_never_goes_times_out() -> None:
    paths = ScriptedPaths(kafka=[[7]], http=[[]])
    seen = Withdrawals([], {"kafka": [], "http": []}, [])
    assert until(paths, [1], 7, False, time.monotonic(), 0.0, 0.1, seen, lambda _: None) == {
        "kafka": None,
        "http": None,
    }


def test_an_item_is_back_once_both_paths_return_it() -> None:
    paths = ScriptedPaths(kafka=[[], [], [7]], http=[[], [7]])
    seen = Withdrawals([], {"kafka": [], "http": []}, [])
    at = until(paths, [1], 7, True, time.monotonic(), 0.0, 30.0, seen, lambda _: None)
    assert set(at) == {"kafka", "http"} and all(v is not None for v in at.values())
    assert paths.calls["kafka"] == 3


def test_request_kinds_ask_what_they_name() -> None:
    histories = {100 + u: [u + 1, u + 2, u + 3] for u in range(5)}
    kinds = request_kinds(histories, items=1000, top_k=10, rng=np.random.default_rng(0))
    assert set(kinds) == {
        "plain_hist",
        "filter_segment_hist",
        "filter_category_hist",
        "exclude_seen_hist",
        "exclude_items_hist",
        "plain_users",
        "exclude_seen_users",
    }
    assert all(len(reqs) == len(histories) for reqs in kinds.values())
    assert [r.hist_item for r in kinds["plain_hist"]] == [[h] for h in histories.values()]
    assert [r.user_ids for r in kinds["exclude_seen_users"]] == [[u] for u in histories]
    assert all(r.exclude_seen for k in ("exclude_seen_hist", "exclude_seen_users") for r in kinds[k])
    assert all(r.filters is None and not r.exclude_seen for k in ("plain_hist", "plain_users") for r in kinds[k])
    for request in kinds["exclude_items_hist"]:
        assert request.filters is not None and request.filters.exclude_items is not None
        excluded = request.filters.exclude_items
        assert len(set(excluded)) == EXCLUDED_ITEMS and min(excluded) >= 1 and max(excluded) <= 1000
    # the filters select by the metadata the bench announces: a third of the items by segment, a tenth by genre
    for kind, share in (("filter_segment_hist", 1 / 3), ("filter_category_hist", 1 / 10)):
        filters = kinds[kind][0].filters
        assert filters is not None
        passing = [i for i in range(1, 3001) if filters.admits(segment_of(i), categories_of(i), i)]
        assert abs(len(passing) / 3000 - share) < 0.01, kind


def _run(p50: float, p99: float) -> dict[str, Any]:
    return {
        "latency_ms": {"p50": p50, "p99": p99},
        "sent": 100,
        "errors": 0,
        "empty_replies": 0,
        "achieved_rps": 50.0,
        "worker_took_ms": {"p50": 1.0, "p99": 2.0},
    }


def test_each_kind_is_compared_with_plain_of_its_own_source_over_the_median_round() -> None:
    runs = {
        "plain_hist": [_run(5.0, 40.0), _run(4.0, 90.0), _run(5.0, 38.0)],
        "filter_segment_hist": [_run(6.0, 44.0)],
        "exclude_seen_hist": [_run(6.0, 60.0)],
        "plain_users": [_run(5.0, 20.0)],
        "exclude_seen_users": [_run(5.0, 30.0)],
    }
    table = latency_table(runs)
    assert table["plain_hist"]["p99_ms_rounds"] == [40.0, 90.0, 38.0] and table["plain_hist"]["p99_ms"] == 40.0
    assert table["plain_hist"]["sent"] == 300
    assert table["plain_hist"]["ratio_p99_to_plain"] == 1.0 and table["plain_hist"]["met"]
    assert table["filter_segment_hist"]["ratio_p99_to_plain"] == 1.1 and table["filter_segment_hist"]["met"]
    assert table["exclude_seen_hist"]["ratio_p99_to_plain"] == 1.5 and not table["exclude_seen_hist"]["met"]
    assert table["exclude_seen_users"]["ratio_p99_to_plain"] == 1.5  # against plain_users, not plain_hist
    assert table["filter_segment_hist"]["p50_ms"] == 6.0 and table["filter_segment_hist"]["p99_ms"] == 44.0
