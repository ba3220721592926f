"""The popular fallback against a plain model of the stream: a replayed list of clicks gives the same list.

The plain model is the definition written out: every click adds ``2 ** ((min(t, clock) - now) / h)`` to
its item, items ranked by that sum (ties: smaller id first), ``now`` the newest clamped click time.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from schemas.messages import ClickEvent
from workers.catalogue.follow import Follower
from workers.ingest.state_reader import StateReader
from workers.ingest.state_store import PartitionStore
from workers.recall.popular import REBASE_HALF_LIVES, PopularFeed, PopularItems

H_S = 600.0  # half-life of the tests, seconds
T0 = 1_700_000_000_000
CLOCK = float(T0 + 10**12)  # far after every click unless a test says otherwise
Click = tuple[int, int]  # (item, ts ms)


def plain_top(clicks: list[Click], k: int, half_life_s: float, clock_ms: float = CLOCK) -> list[tuple[int, float]]:
    times = [min(float(ts), clock_ms) for _, ts in clicks]
    now = max(times)
    counts: dict[int, float] = {}
    for (item, _), t in zip(clicks, times, strict=True):
        counts[item] = counts.get(item, 0.0) + 2.0 ** ((t - now) / (half_life_s * 1000))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ranked[:k]


def stream(seed: int, n: int, items: int, span_ms: int) -> list[Click]:
    """Zipf-ish popularity that drifts: early and late clicks favour different items."""
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(T0, T0 + span_ms, size=n))
    ranks = np.minimum(rng.zipf(1.3, size=n), items) - 1
    shift = (ts - T0) * items // (2 * span_ms)  # the favourites move along as time passes
    return [(int((r + s) % items) + 1, int(t)) for r, s, t in zip(ranks, shift, ts, strict=True)]


def replay(popular: PopularItems, clicks: list[Click], batch: int) -> None:
    for start in range(0, len(clicks), batch):
        part = clicks[start : start + batch]
        popular.add(np.array([c[0] for c in part], dtype=np.int64), np.array([c[1] for c in part], dtype=np.int64))


def assert_same(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [i for i, _ in got] == [i for i, _ in want]
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert math.isclose(a, b, rel_tol=1e-9)


@pytest.mark.parametrize("batch", [1, 97, 5000])
def test_replayed_stream_gives_the_plain_models_list(batch: int) -> None:
    clicks = stream(seed=1, n=20_000, items=800, span_ms=int(6 * H_S * 1000))
    popular = PopularItems(H_S, capacity=1000, clock_ms=lambda: CLOCK)
    replay(popular, clicks, batch)
    assert len(popular) <= 800 and popular.pruned == 0 and popular.slack() == 0.0
    assert_same(popular.top(100), plain_top(clicks, 100, H_S))
    assert_same(popular.top(800), plain_top(clicks, 800, H_S))  # every item, every rank


def test_pruned_counts_of_a_steady_stream_keep_the_exact_head() -> None:
    rng = np.random.default_rng(2)
    n = 60_000
    ts = np.sort(rng.integers(T0, T0 + int(4 * H_S * 1000), size=n))
    ranks = np.minimum(rng.zipf(1.3, size=n), 5000)
    clicks = [(int(r), int(t)) for r, t in zip(ranks, ts, strict=True)]
    popular = PopularItems(H_S, capacity=300, clock_ms=lambda: CLOCK)
    replay(popular, clicks, 1000)
    assert popular.pruned > 0 and len(popular) <= 600  # memory bounded by twice the capacity
    assert_same(popular.top(50), plain_top(clicks, 50, H_S))


def test_pruned_counts_of_a_drifting_stream_stay_within_the_slack() -> None:
    """Favourites that rise slowly (3,800 items clicked, 1,000 kept) were pruned on the way up: their
    counts are high by at most the slack, and no item whose exact count clears both the list's last
    count and the slack is missing."""
    clicks = stream(seed=2, n=60_000, items=5000, span_ms=int(4 * H_S * 1000))
    popular = PopularItems(H_S, capacity=1000, clock_ms=lambda: CLOCK)
    replay(popular, clicks, 1000)
    exact = dict(plain_top(clicks, 10**6, H_S))
    got = popular.top(50)
    slack = popular.slack()
    assert popular.pruned > 0 and 0 < slack < got[-1][1]
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
    for item, score in got:
        assert exact[item] - 1e-9 <= score <= exact[item] + slack + 1e-9
    listed = {item for item, _ in got}
    must = {item for item, count in exact.items() if count > max(got[-1][1], slack)}
    assert must <= listed and len(must) >= 5  # the bound says something: the head is certain
    plain = [item for item, _ in plain_top(clicks, 50, H_S)]
    assert len(listed & set(plain)) >= 45
    assert got[0][0] == plain[0]


def test_counts_survive_rebasing_over_many_half_lives() -> None:
    short = 1.0  # 1 s half-life over ~200 s: the reference moves forward several times
    clicks = stream(seed=3, n=5000, items=50, span_ms=int(3 * REBASE_HALF_LIVES * short * 1000))
    popular = PopularItems(short, capacity=100, clock_ms=lambda: CLOCK)
    replay(popular, clicks, 50)
    want = plain_top(clicks, 20, short)
    assert_same(popular.top(20), want)
    assert all(math.isfinite(score) and score > 0 for _, score in popular.top(50))


def test_exclude_and_allowed_skip_items_and_still_fill_k() -> None:
    clicks = stream(seed=4, n=5000, items=200, span_ms=3_600_000)
    popular = PopularItems(H_S, capacity=500, clock_ms=lambda: CLOCK)
    replay(popular, clicks, 500)
    full = [i for i, _ in plain_top(clicks, 200, H_S)]
    exclude = set(full[:5])
    got = popular.top(10, exclude=exclude, allowed=lambda item: item % 2 == 0)
    assert [i for i, _ in got] == [i for i in full if i not in exclude and i % 2 == 0][:10]
    assert popular.top(10, allowed=lambda _: False) == []
    assert len(popular.top(1000)) == len(set(full))  # fewer than k when fewer are known


def test_a_click_from_the_future_counts_as_now() -> None:
    now = float(T0)
    popular = PopularItems(H_S, capacity=10, clock_ms=lambda: now)
    far = T0 + 10 * 365 * 86_400_000  # ten years ahead: it must not rule the list for ever
    clicks = [(1, far), (2, T0 - 1000), (2, T0 - 2000)]
    replay(popular, clicks, 10)
    assert_same(popular.top(2), plain_top(clicks, 2, H_S, clock_ms=now))
    assert [i for i, _ in popular.top(2)] == [2, 1]  # two clicks a second old beat one "now"
    hostile = PopularItems(H_S, capacity=10, clock_ms=lambda: now)
    hostile.add(np.array([7, 8], dtype=np.int64), np.array([2**63 - 1, 0], dtype=np.int64))
    assert [i for i, _ in hostile.top(2)] == [7]  # the one at ts 0 decayed to nothing; nothing overflowed
    assert hostile.top(1)[0][1] == pytest.approx(1.0)


def test_scores_decay_with_the_requested_time() -> None:
    popular = PopularItems(H_S, capacity=10, clock_ms=lambda: CLOCK)
    popular.add(np.array([5, 5], dtype=np.int64), np.array([T0, T0], dtype=np.int64))
    assert popular.top(1) == [(5, pytest.approx(2.0))]
    assert popular.top(1, now_ms=T0 + H_S * 1000) == [(5, pytest.approx(1.0))]
    assert PopularItems(H_S, capacity=1).top(3) == []


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="half_life_s"):
        PopularItems(0.0, capacity=10)
    with pytest.raises(ValueError, match="capacity"):
        PopularItems(1.0, capacity=0)


def _store_clicks(store: PartitionStore, clicks: list[Click], first: int, topic: str) -> None:
    events = [
        ClickEvent(event_id=f"e{first + n}", user_id=(first + n) % 37 + 1, item_id=item, ts=ts)
        for n, (item, ts) in enumerate(clicks)
    ]
    store.apply(events, topic, 0, first + len(clicks) - 1)


def test_feed_reads_the_ingest_state_into_the_plain_models_list(tmp_path: Path) -> None:
    """From the ingest state the recall worker reads, step by step, while clicks keep arriving."""
    clicks = stream(seed=5, n=12_000, items=300, span_ms=int(2 * H_S * 1000))
    topic = "clicks"
    store = PartitionStore.open(tmp_path, topic, 0)
    popular = PopularItems(H_S, capacity=1000, clock_ms=lambda: CLOCK)
    try:
        _store_clicks(store, clicks[:7000], 0, topic)
        with StateReader(tmp_path, topic) as reader:
            feed = PopularFeed(popular, reader, max_events=2500)
            assert [feed.step() for _ in range(3)] == [True, True, False]  # 2500 + 2500 + 2000
            assert_same(popular.top(30), plain_top(clicks[:7000], 30, H_S))
            _store_clicks(store, clicks[7000:], 7000, topic)
            while feed.step():
                pass
            assert feed.read == len(clicks)
            assert_same(popular.top(30), plain_top(clicks, 30, H_S))
    finally:
        store.close()


def test_feed_on_a_follower_thread_catches_up(tmp_path: Path) -> None:
    clicks = stream(seed=6, n=3000, items=100, span_ms=600_000)
    store = PartitionStore.open(tmp_path, "clicks", 0)
    popular = PopularItems(H_S, capacity=500, clock_ms=lambda: CLOCK)
    try:
        with StateReader(tmp_path, "clicks") as reader:
            feed = PopularFeed(popular, reader, max_events=400)
            with Follower(feed.step, interval_s=0.05, name="popular-test"):
                _store_clicks(store, clicks, 0, "clicks")
                end = time.monotonic() + 10.0
                while feed.read < len(clicks) and time.monotonic() < end:
                    time.sleep(0.02)
            assert feed.read == len(clicks)
            assert_same(popular.top(20), plain_top(clicks, 20, H_S))
    finally:
        store.close()
