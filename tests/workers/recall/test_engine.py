"""RecallEngine with small fakes: batching, merge, per-request top_k, version consistency, errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from pymilvus.exceptions import MilvusException, MilvusUnavailableException

from model.metrics import merge_interests
from schemas.messages import ErrorCode, ErrorReply, RecallReply, RecallRequest
from tests.workers.exact_search import exact_search
from workers.infra.vector_store import PAD_ID, SearchResult
from workers.recall.engine import RecallEngine, merge_scored

K, DIM, ITEMS = 2, 4, 30


class FakeTower:
    """Interest k of a user = item vector of its last click, rotated by k; unknown ids (> ITEMS) ignored."""

    maxlen = 5

    def __init__(self, table: np.ndarray) -> None:
        self.table = table
        self.seen: list[list[int]] = []

    def interests(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.zeros((len(histories), K, DIM), dtype=np.float32)
        for row, h in enumerate(histories):
            self.seen.append(list(h))
            known = [i for i in list(h)[-self.maxlen :] if 0 < i <= ITEMS]
            if known:
                out[row] = [np.roll(self.table[known[-1]], k) for k in range(K)]
        return out


@dataclass(frozen=True)
class FakeServed:
    version: str
    collection: str
    tower: FakeTower
    generation: int = 0
    max_generation: int | None = None


@dataclass
class FakeLive:
    served: FakeServed | None
    after_force: FakeServed | None = None
    calls: list[bool] = field(default_factory=list)

    def current(self, *, force: bool = False) -> FakeServed | None:
        self.calls.append(force)
        if isinstance(self.served, Exception):
            raise self.served
        if force and self.after_force is not None:
            self.served = self.after_force
        return self.served


@dataclass
class FakeStore:
    tables: dict[str, np.ndarray]
    fail: dict[str, Exception] = field(default_factory=dict)
    calls: list[tuple[str, int, int]] = field(default_factory=list)

    def search(
        self,
        name: str,
        queries: np.ndarray,
        top_k: int,
        *,
        with_versions: bool = True,
        max_generation: int | None = None,
    ) -> SearchResult:
        self.calls.append((name, len(queries), top_k))
        if name in self.fail:
            raise self.fail[name]
        return exact_search(self.tables[name], queries, top_k)


class DictHistory:
    def __init__(self, data: dict[int, list[int]]) -> None:
        self.data = data

    def history(self, user_id: int, maxlen: int) -> list[int]:
        return self.data.get(user_id, [])[-maxlen:]


def _table(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((ITEMS + 1, DIM)).astype(np.float32)


@pytest.fixture
def setup() -> tuple[RecallEngine, FakeLive, FakeStore]:
    table = _table(1)
    live = FakeLive(FakeServed("v1", "items_v1", FakeTower(table)))
    store = FakeStore({"items_v1": table})
    return RecallEngine(live, store, DictHistory({7: [3, 4]})), live, store


def _single(engine: RecallEngine, req: RecallRequest) -> RecallReply:
    reply = engine.answer([req])[0]
    assert isinstance(reply, RecallReply)
    return reply


def test_merge_scored_matches_merge_interests() -> None:
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 12, size=(3, 4, 6))
    scores = rng.standard_normal((3, 4, 6)).astype(np.float32)
    expected = merge_interests(ids, scores, 7)
    for user in range(3):
        got_ids, got_scores = merge_scored(ids[user], scores[user], 7)
        assert got_ids == expected[user].tolist()
        assert PAD_ID not in got_ids
        for i, s in zip(got_ids, got_scores, strict=True):
            best = max(float(x) for j, x in zip(ids[user].ravel(), scores[user].ravel(), strict=True) if j == i)
            assert s == pytest.approx(best)
        assert got_scores == sorted(got_scores, reverse=True)


def test_one_search_for_the_whole_batch(setup: tuple[RecallEngine, FakeLive, FakeStore]) -> None:
    engine, live, store = setup
    reqs = [
        RecallRequest(hist_item=[[1, 2], [5]], top_k=3),
        RecallRequest(hist_item=[[9, 10, 11]], top_k=8),
        RecallRequest(user_ids=[7], top_k=2),
    ]
    replies = engine.answer(reqs)
    assert store.calls == [("items_v1", K * 4, 8)]  # nq = K x users, top_k = the batch's max
    assert live.calls == [False]  # the live model is read once per batch
    assert [len(r.items) for r in replies if isinstance(r, RecallReply)] == [2, 1, 1]
    assert {(r.model_version, r.collection) for r in replies if isinstance(r, RecallReply)} == {("v1", "items_v1")}


def test_per_request_top_k_equals_a_search_with_that_top_k(
    setup: tuple[RecallEngine, FakeLive, FakeStore],
) -> None:
    engine, _, _ = setup
    small = RecallRequest(hist_item=[[1, 2], [5, 6, 7]], top_k=3)
    big = RecallRequest(hist_item=[[4]], top_k=20)
    together = engine.answer([small, big])
    alone = _single(engine, small)
    assert isinstance(together[0], RecallReply)
    assert together[0].items == alone.items and all(len(i) == 3 for i in alone.items)
    np.testing.assert_allclose(np.array(together[0].scores), np.array(alone.scores), rtol=1e-6)
    assert isinstance(together[1], RecallReply) and len(together[1].items[0]) == 20


def test_results_are_the_exact_merge(setup: tuple[RecallEngine, FakeLive, FakeStore]) -> None:
    engine, live, store = setup
    assert live.served is not None
    table = store.tables["items_v1"]
    reply = _single(engine, RecallRequest(hist_item=[[2, 6]], top_k=5))
    user = np.stack([np.roll(table[6], k) for k in range(K)])
    best = (user @ table[1:].T).max(axis=0)
    assert reply.items[0] == (np.argsort(-best, kind="stable")[:5] + 1).tolist()


def test_user_without_history_gets_an_empty_list(setup: tuple[RecallEngine, FakeLive, FakeStore]) -> None:
    engine, _, store = setup
    reply = _single(engine, RecallRequest(user_ids=[7, 99], top_k=4))
    assert len(reply.items[0]) == 4 and reply.items[1] == [] and reply.scores[1] == []
    assert store.calls[-1][1] == K  # only the user with a history is searched
    unknown_items = _single(engine, RecallRequest(hist_item=[[500, 600]], top_k=4))
    assert unknown_items.items == [[]]


def test_user_ids_without_history_source_is_a_bad_request() -> None:
    table = _table(1)
    engine = RecallEngine(FakeLive(FakeServed("v1", "c_v1", FakeTower(table))), FakeStore({"c_v1": table}))
    replies = engine.answer([RecallRequest(user_ids=[1]), RecallRequest(hist_item=[[1]], top_k=2)])
    assert isinstance(replies[0], ErrorReply) and replies[0].code is ErrorCode.BAD_REQUEST
    assert isinstance(replies[1], RecallReply)


def test_no_live_model_is_unavailable() -> None:
    engine = RecallEngine(FakeLive(None), FakeStore({}))
    replies = engine.answer([RecallRequest(hist_item=[[1]]), RecallRequest(hist_item=[[2]])])
    assert [r.code for r in replies if isinstance(r, ErrorReply)] == [ErrorCode.UNAVAILABLE] * 2


def test_swap_during_search_retries_once_on_the_new_model() -> None:
    old, new = _table(1), _table(2)
    live = FakeLive(FakeServed("v1", "c_v1", FakeTower(old)), after_force=FakeServed("v2", "c_v2", FakeTower(new)))
    store = FakeStore({"c_v2": new}, fail={"c_v1": MilvusException(code=100, message="collection not found")})
    replies = RecallEngine(live, store).answer([RecallRequest(hist_item=[[1]]), RecallRequest(hist_item=[[3]])])
    assert [c[0] for c in store.calls] == ["c_v1", "c_v2"]
    assert {(r.model_version, r.collection) for r in replies if isinstance(r, RecallReply)} == {("v2", "c_v2")}
    assert len(replies) == 2


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (MilvusUnavailableException(message="down"), ErrorCode.UNAVAILABLE),
        (MilvusException(code=1100, message="bad"), ErrorCode.INTERNAL),
    ],
)
def test_search_failure_without_swap_is_an_error_reply(error: Exception, code: ErrorCode) -> None:
    table = _table(1)
    store = FakeStore({}, fail={"c_v1": error})
    engine = RecallEngine(FakeLive(FakeServed("v1", "c_v1", FakeTower(table))), store)
    replies = engine.answer([RecallRequest(hist_item=[[1]])])
    assert isinstance(replies[0], ErrorReply) and replies[0].code is code
    assert len(store.calls) == 1  # no retry when the alias did not move


def test_histories_are_passed_as_given(setup: tuple[RecallEngine, FakeLive, FakeStore]) -> None:
    engine, live, _ = setup
    assert live.served is not None
    long = list(range(1, 13))
    engine.answer([RecallRequest(hist_item=[long])])
    assert live.served.tower.seen[-1] == long


def test_l2_keeps_the_smallest_distances() -> None:
    ids = np.array([[5, 6, 7], [7, 8, 0]])
    dist = np.array([[0.5, 0.1, 0.9], [0.2, 0.3, np.inf]], dtype=np.float32)
    got_ids, got_neg = merge_scored(ids, -dist, 3)
    assert got_ids == [6, 7, 8] and [-s for s in got_neg] == pytest.approx([0.1, 0.2, 0.3])
