"""The recall cost budget: refusals (too_large, naming the setting), sub-batches cut by cost, each one
search on the same live model, with replies equal to an uncut batch's. Pure: small fakes, no Milvus."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from pymilvus.exceptions import MilvusException

from schemas.messages import ErrorCode, ErrorReply, RecallReply, RecallRequest
from tests.workers.recall.scripted_store import ScriptedStore
from tests.workers.recall.test_engine import FakeLive, FakeServed, FakeStore, FakeTower, _table
from workers.recall.budget import Budget
from workers.recall.engine import RecallEngine
from workers.settings import RecallSettings

BUDGET = Budget(max_request_cost=1000, max_diverse_top_k=20, max_batch_cost=100)


def _engine(budget: Budget = BUDGET) -> tuple[RecallEngine, FakeLive, FakeStore]:
    table = _table(1)
    live = FakeLive(FakeServed("v1", "items_v1", FakeTower(table)))
    store = FakeStore({"items_v1": table})
    return RecallEngine(live, store, budget=budget), live, store


def _users(n: int) -> list[list[int]]:
    return [[1 + (u % 30), 1 + (7 * u) % 30] for u in range(n)]


def test_defaults_come_from_the_settings() -> None:
    recall = RecallSettings()
    assert Budget.from_settings() == Budget(recall.max_request_cost, recall.max_diverse_top_k, recall.max_batch_cost)
    custom = RecallSettings(max_request_cost=7, max_diverse_top_k=3, max_batch_cost=9)
    assert Budget.from_settings(custom) == Budget(7, 3, 9)
    engine = RecallEngine(FakeLive(None), FakeStore({}))
    assert engine.budget == Budget.from_settings()


def test_default_request_budget_fits_a_kafka_record() -> None:
    """The largest admitted reply, with the longest ids and scores JSON can carry, fits in 1,000,000 bytes."""
    recall = RecallSettings()
    users = 256
    top_k = recall.max_request_cost // users
    worst_score = -1.2345678901234567e-05  # 23 characters in JSON
    reply = RecallReply(
        items=[[2**63 - 1] * top_k for _ in range(users)],
        scores=[[worst_score] * top_k for _ in range(users)],
        model_version="v" * 128,
        generation=2**40,
        collection="c" * 255,
        took_ms=12345.678,
    )
    assert len(reply.model_dump_json().encode()) < 1_000_000
    assert BUDGET.refusal(RecallRequest(hist_item=[[1]] * users, top_k=top_k)) is not None  # the test's own budget
    assert Budget.from_settings().refusal(RecallRequest(hist_item=[[1]] * users, top_k=top_k)) is None


def test_a_request_over_budget_is_too_large_and_names_the_setting() -> None:
    engine, _, store = _engine()
    big = RecallRequest(hist_item=_users(101), top_k=10)  # 1010 > 1000
    diverse = RecallRequest(hist_item=_users(1), top_k=21, diversity=0.5)
    plain_21 = RecallRequest(hist_item=_users(1), top_k=21)
    replies = engine.answer([big, diverse, plain_21])
    assert isinstance(replies[0], ErrorReply) and replies[0].code is ErrorCode.TOO_LARGE
    assert replies[0].message == "cost 1010 (users x top_k) exceeds recall.max_request_cost 1000"
    assert isinstance(replies[1], ErrorReply) and replies[1].code is ErrorCode.TOO_LARGE
    assert replies[1].message == "top_k 21 with diversity > 0 exceeds recall.max_diverse_top_k 20"
    assert isinstance(replies[2], RecallReply)  # the same top_k without diversity is within budget
    assert store.calls == [("items_v1", 2, 21)]  # only the admitted request was searched


def test_nothing_is_searched_when_every_request_is_over_budget() -> None:
    engine, live, store = _engine()
    replies = engine.answer([RecallRequest(hist_item=_users(200), top_k=10)])
    assert [r.code for r in replies if isinstance(r, ErrorReply)] == [ErrorCode.TOO_LARGE]
    assert store.calls == [] and live.calls == []


@given(
    shapes=st.lists(st.tuples(st.integers(1, 256), st.integers(1, 1000)), max_size=40),
    limit=st.integers(1, 300_000),
)
def test_split_is_consecutive_within_the_batch_cost_and_greedy(shapes: list[tuple[int, int]], limit: int) -> None:
    batches = Budget(10**9, 1000, limit).split(shapes)
    assert [i for b in batches for i in b] == list(range(len(shapes)))  # all, in order, once
    for batch in batches:
        cost = sum(shapes[i][0] for i in batch) * max(shapes[i][1] for i in batch)
        assert cost <= limit or len(batch) == 1  # a request above the limit alone
    for batch, following in itertools.pairwise(batches):
        with_next = [*batch, following[0]]
        assert sum(shapes[i][0] for i in with_next) * max(shapes[i][1] for i in with_next) > limit  # cut only if needed


def test_a_batch_is_cut_into_searches_by_cost_on_one_model() -> None:
    engine, live, store = _engine()
    reqs = [
        RecallRequest(hist_item=_users(5), top_k=10),  # 50
        RecallRequest(hist_item=_users(5), top_k=10),  # + 50 = 100: same search
        RecallRequest(hist_item=_users(1), top_k=10),  # 110 > 100: next search
        RecallRequest(hist_item=_users(3), top_k=50),  # (1 + 3) x 50 = 200 > 100: next
        RecallRequest(hist_item=_users(30), top_k=30),  # 900: over the batch cost, alone (within the request cost)
    ]
    replies = engine.answer(reqs)
    assert [(nq // 2, top_k) for _, nq, top_k in store.calls] == [(10, 10), (1, 10), (3, 50), (30, 30)]
    assert live.calls == [False]  # the live model read once for all four searches
    assert all(isinstance(r, RecallReply) for r in replies)
    assert {(r.model_version, r.collection) for r in replies if isinstance(r, RecallReply)} == {("v1", "items_v1")}

    whole, _, whole_store = _engine(Budget(1000, 20, 10**6))
    together = whole.answer(reqs)
    assert len(whole_store.calls) == 1
    for cut, uncut in zip(replies, together, strict=True):  # a reply does not depend on its search's company
        assert isinstance(cut, RecallReply) and isinstance(uncut, RecallReply)
        assert cut.items == uncut.items
        np.testing.assert_allclose(np.array(cut.scores), np.array(uncut.scores), rtol=1e-6)


def test_a_swap_revealed_by_a_later_search_recomputes_every_sub_batch_on_the_new_model() -> None:
    old, new = _table(1), _table(2)
    live = FakeLive(FakeServed("v1", "c_v1", FakeTower(old)), after_force=FakeServed("v2", "c_v2", FakeTower(new)))
    store = ScriptedStore(
        {"c_v1": old, "c_v2": new}, script={1: MilvusException(code=100, message="collection not found")}
    )
    engine = RecallEngine(live, store, budget=BUDGET)
    replies = engine.answer(
        [RecallRequest(hist_item=_users(5), top_k=20), RecallRequest(hist_item=_users(5), top_k=20)]
    )
    assert [c[0] for c in store.calls] == ["c_v1", "c_v1", "c_v2", "c_v2"]
    assert {(r.model_version, r.collection) for r in replies if isinstance(r, RecallReply)} == {("v2", "c_v2")}
    assert len([r for r in replies if isinstance(r, RecallReply)]) == 2


def test_a_failed_sub_batch_does_not_fail_the_others() -> None:
    table = _table(1)
    store = ScriptedStore({"items_v1": table}, script={0: MilvusException(code=1100, message="bad search")})
    engine = RecallEngine(FakeLive(FakeServed("v1", "items_v1", FakeTower(table))), store, budget=BUDGET)
    replies = engine.answer(
        [RecallRequest(hist_item=_users(5), top_k=20), RecallRequest(hist_item=_users(5), top_k=20)]
    )
    assert isinstance(replies[0], ErrorReply) and replies[0].code is ErrorCode.INTERNAL
    assert isinstance(replies[1], RecallReply) and len(replies[1].items) == 5
