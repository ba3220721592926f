"""The `diversity` request field: lambda 0 is today's reply, lambda > 0 ComiRec's greedy merge, invalid
values are refused with the reason on the Kafka path (bad_request) and the HTTP path (422)."""

from __future__ import annotations

import json
from typing import Annotated, Any, cast

import numpy as np
import pytest
from confluent_kafka import Message
from fastapi import Body, FastAPI
from fastapi.testclient import TestClient

from model.data.items import ItemCatalogue
from model.diversity import ItemFeatures, intra_list_diversity
from schemas.headers import CORRELATION_ID, REPLY_TO
from schemas.messages import ErrorCode, ErrorReply, RecallReply, RecallRequest
from tests.workers.recall.test_engine import FakeLive, FakeServed, FakeStore, FakeTower
from workers.gateway.fast_recall import FastRecallMiddleware
from workers.gateway.recall import RecallService
from workers.recall.engine import RecallEngine, merge_scored
from workers.recall.replies import ReplyPolicy
from workers.recall.worker import _parse

K, DIM, ITEMS = 2, 4, 30
CATALOGUE = ItemCatalogue.from_mapping({i: [f"c{i % 3}"] for i in range(1, ITEMS + 1)})
HISTORIES = [[3, 4], [9], [17, 25, 2]]

POLICY = ReplyPolicy.for_stack("recall.replies", ["recall.requests"], None, 256)


class VectorFakeTower(FakeTower):
    def item_vectors(self, item_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(item_ids)
        return np.where(((ids > 0) & (ids <= ITEMS))[:, None], self.table[np.clip(ids, 0, ITEMS)], 0.0)


def _engine(tower_cls: type[FakeTower] = FakeTower, categories: ItemCatalogue | None = CATALOGUE) -> RecallEngine:
    table = np.random.default_rng(1).standard_normal((ITEMS + 1, DIM)).astype(np.float32)
    live = FakeLive(FakeServed("v1", "items_v1", tower_cls(table)))
    return RecallEngine(live, FakeStore({"items_v1": table}), categories=categories)


def _reply(engine: RecallEngine, **body: Any) -> RecallReply:
    reply = engine.answer([RecallRequest(hist_item=HISTORIES, **body)])[0]
    assert isinstance(reply, RecallReply), reply
    return reply


def _coverage(items: list[int]) -> int:
    return int(CATALOGUE.matrix(np.array(items)).any(axis=0).sum())


@pytest.mark.parametrize("tower_cls", [FakeTower, VectorFakeTower])
def test_diversity_zero_or_absent_is_exactly_todays_reply(tower_cls: type[FakeTower]) -> None:
    engine = _engine(tower_cls)
    today = _reply(engine, top_k=7)
    for value in (None, 0.0, 0):
        got = _reply(engine, top_k=7, diversity=value)
        assert (got.items, got.scores) == (today.items, today.scores)  # bit-identical lists and scores
    # and today's reply is the plain merge by score of the K x top_k candidates
    table = engine.store.tables["items_v1"]  # type: ignore[attr-defined]
    interests = engine.live.current().tower.interests(HISTORIES)  # type: ignore[union-attr]
    for user, row in enumerate(interests):
        scores = row @ table[1:].T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :7]
        ids, best = merge_scored(order + 1, np.take_along_axis(scores, order, axis=1), 7)
        assert (today.items[user], today.scores[user]) == (ids, best)


def test_a_larger_lambda_broadens_the_list_by_categories() -> None:
    engine = _engine()
    plain, broad = _reply(engine, top_k=6), _reply(engine, top_k=6, diversity=5.0)
    for p, b in zip(plain.items, broad.items, strict=True):
        assert _coverage(b) >= _coverage(p)
        assert len(b) == len(set(b)) == 6
        cats = CATALOGUE.matrix(np.array(b))
        assert (intra_list_diversity(ItemFeatures(cats)) or 0) >= (
            intra_list_diversity(ItemFeatures(CATALOGUE.matrix(np.array(p)))) or 0
        )
    assert any(_coverage(b) > _coverage(p) for p, b in zip(plain.items, broad.items, strict=True))
    # every picked item is a candidate of the plain K x top_k merge, with its search score
    wide = _reply(engine, top_k=12)
    for w, ws, b, bs in zip(wide.items, wide.scores, broad.items, broad.scores, strict=True):
        score_of = dict(zip(w, ws, strict=True))
        assert all(score_of.get(i, s) == pytest.approx(s) for i, s in zip(b, bs, strict=True))


def test_item_vectors_when_there_is_no_catalogue() -> None:
    engine = _engine(VectorFakeTower, categories=None)
    plain, broad = _reply(engine, top_k=6), _reply(engine, top_k=6, diversity=50.0)
    assert plain.items != broad.items
    tower = engine.live.current().tower  # type: ignore[union-attr]
    for p, b in zip(plain.items, broad.items, strict=True):
        vec = cast(VectorFakeTower, tower)
        div_p = intra_list_diversity(ItemFeatures(vectors=vec.item_vectors(np.array(p)).astype(np.float32)))
        div_b = intra_list_diversity(ItemFeatures(vectors=vec.item_vectors(np.array(b)).astype(np.float32)))
        assert div_b is not None and div_p is not None and div_b >= div_p - 1e-9


def test_nothing_to_compare_keeps_the_score_order() -> None:
    engine = _engine(FakeTower, categories=None)  # no catalogue, no item vectors
    assert _reply(engine, top_k=6, diversity=3.0).items == _reply(engine, top_k=6).items


def test_a_diversified_reply_does_not_depend_on_the_batch() -> None:
    engine = _engine()
    alone = _reply(engine, top_k=5, diversity=0.5)
    batch = engine.answer(
        [RecallRequest(hist_item=[[1, 2]], top_k=40), RecallRequest(hist_item=HISTORIES, top_k=5, diversity=0.5)]
    )
    assert isinstance(batch[1], RecallReply) and (batch[1].items, batch[1].scores) == (alone.items, alone.scores)


BAD_DIVERSITY: list[tuple[object, str]] = [
    (-0.1, "greater than or equal to 0"),
    (-1, "greater than or equal to 0"),
    ("0.5", "valid number"),
    (True, "valid number"),
    ([0.5], "valid number"),
    (1e6, "less than or equal to 1000"),
]


def _msg(body: bytes) -> Message:
    return Message(
        topic="recall.requests", value=body, headers=[(CORRELATION_ID, b"c1"), (REPLY_TO, b"recall.replies.me")]
    )


@pytest.mark.parametrize(("value", "reason"), BAD_DIVERSITY)
def test_kafka_path_answers_bad_request_with_the_reason(value: object, reason: str) -> None:
    pending = _parse(_msg(json.dumps({"hist_item": [[1]], "diversity": value}).encode()), "recall.replies", POLICY)
    assert pending.request is None and isinstance(pending.reply, ErrorReply)
    assert pending.reply.code is ErrorCode.BAD_REQUEST
    assert "diversity" in pending.reply.message and reason in pending.reply.message
    for raw in (b'{"hist_item": [[1]], "diversity": NaN}', b'{"hist_item": [[1]], "diversity": Infinity}'):
        nan = _parse(_msg(raw), "recall.replies", POLICY)
        assert isinstance(nan.reply, ErrorReply) and "finite number" in nan.reply.message


class _Service:
    async def answer_timed(self, request: RecallRequest, receive: object = None) -> tuple[int, RecallReply, float]:
        items = [[1]] * request.n_users
        reply = RecallReply(items=items, scores=[[0.5]] * len(items), model_version="v", collection="c", took_ms=0)
        return 200, reply, 0.0

    def observe_reply(self, ready: float) -> None:
        pass


@pytest.mark.parametrize(("value", "reason"), BAD_DIVERSITY)
def test_http_path_answers_422_with_the_reason(value: object, reason: str) -> None:
    app = FastAPI()

    @app.post("/rec/recall")
    def recall(request: Annotated[RecallRequest, Body()]) -> dict[str, str]:
        return {"answered_by": "fastapi"}

    app.add_middleware(FastRecallMiddleware, service=cast(RecallService, _Service()))
    client = TestClient(app)
    r = client.post("/rec/recall", json={"hist_item": [[1]], "diversity": value})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(d["loc"][-1] == "diversity" and reason in d["msg"] for d in detail), detail
    assert client.post("/rec/recall", json={"hist_item": [[1]], "diversity": 0.5}).status_code == 200


def test_the_wire_model_and_its_json_schema_carry_the_field() -> None:
    from schemas.generate import render_all

    schema = json.loads(render_all()["RecallRequest.json"])
    field = schema["properties"]["diversity"]
    assert field["default"] is None and "diversity" in RecallRequest.model_fields
    assert any(option.get("minimum") == 0 for option in field["anyOf"])
