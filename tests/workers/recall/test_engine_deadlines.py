"""Deadlines inside the engine: checked before each sub-batch's search and before each request's merge;
a request past its deadline gets ``timeout`` and no further work. Pure: fakes and a fake wall clock."""

from __future__ import annotations

import pytest

from schemas.messages import ErrorCode, ErrorReply, RecallReply, RecallRequest
from tests.workers.recall.scripted_store import ScriptedStore
from tests.workers.recall.test_engine import FakeLive, FakeServed, FakeTower, _table
from workers.recall.budget import Budget
from workers.recall.engine import RecallEngine

NOW_MS = 1_800_000_000_000
SEARCH_MS = 1000  # each search moves the fake wall clock this far


class WallClock:
    def __init__(self) -> None:
        self.ms = NOW_MS

    def __call__(self) -> float:
        return self.ms / 1000

    def search_takes_a_second(self) -> None:
        self.ms += SEARCH_MS


def _engine(budget: Budget | None = None) -> tuple[RecallEngine, ScriptedStore, WallClock]:
    table = _table(1)
    clock = WallClock()
    store = ScriptedStore({"items_v1": table}, on_search=clock.search_takes_a_second)
    live = FakeLive(FakeServed("v1", "items_v1", FakeTower(table)))
    return RecallEngine(live, store, budget=budget, wall_clock=clock), store, clock


A = RecallRequest(hist_item=[[1, 2], [5]], top_k=4)
B = RecallRequest(hist_item=[[9]], top_k=3)


def _timeout(reply: object) -> str:
    assert isinstance(reply, ErrorReply) and reply.code is ErrorCode.TIMEOUT, reply
    return reply.message


def test_no_deadline_or_a_later_one_is_served_as_without() -> None:
    engine, _, clock = _engine()
    plain = [r.items for r in engine.answer([A, B]) if isinstance(r, RecallReply)]
    for later in ([None, None], [5 * SEARCH_MS, SEARCH_MS], [SEARCH_MS, None]):  # ms after now; equal is in time
        deadlines = [None if d is None else clock.ms + d for d in later]
        got = engine.answer([A, B], deadlines=deadlines)
        assert [r.items for r in got if isinstance(r, RecallReply)] == plain, later


def test_a_passed_deadline_is_not_searched() -> None:
    engine, store, _ = _engine()
    replies = engine.answer([A, B], deadlines=[NOW_MS - 250, None])
    assert _timeout(replies[0]) == "deadline passed 250 ms before its search; not searched"
    assert isinstance(replies[1], RecallReply)
    assert [nq for _, nq, _ in store.calls] == [1 * 2]  # K = 2 interests of B's one user only
    store.calls.clear()
    assert all(_timeout(r) for r in engine.answer([A, B], deadlines=[NOW_MS - 1, NOW_MS - 1]))
    assert store.calls == []


def test_a_deadline_passing_during_an_earlier_sub_batch_skips_the_later_search() -> None:
    engine, store, _ = _engine(Budget(max_request_cost=1000, max_diverse_top_k=20, max_batch_cost=8))
    replies = engine.answer([A, A], deadlines=[None, NOW_MS + SEARCH_MS // 2])  # two searches of 2 x 4
    assert isinstance(replies[0], RecallReply)
    assert _timeout(replies[1]) == f"deadline passed {SEARCH_MS // 2} ms before its search; not searched"
    assert len(store.calls) == 1


def test_a_deadline_passing_during_the_search_skips_the_merge() -> None:
    engine, store, _ = _engine()
    replies = engine.answer([A, B], deadlines=[None, NOW_MS + 400])
    assert isinstance(replies[0], RecallReply) and len(replies[0].items) == 2
    assert _timeout(replies[1]) == "deadline passed 600 ms before its merge; not merged"
    assert len(store.calls) == 1  # both were searched together


def test_one_deadline_per_request() -> None:
    engine, _, _ = _engine()
    with pytest.raises(ValueError, match="1 deadlines for 2 requests"):
        engine.answer([A, B], deadlines=[None])
