"""The ASGI fast path of /rec/recall: valid bodies answered directly, everything else left to FastAPI;
``user_ids`` only with the read (or admin) token; a full queue is 503 with Retry-After."""

from __future__ import annotations

import time
from typing import Annotated, Any, cast

from fastapi import Body, FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from schemas.messages import RecallReply, RecallRequest
from workers.gateway.auth import HISTORY_NEEDS_TOKEN, HistoryGuard
from workers.gateway.fast_recall import FastRecallMiddleware
from workers.gateway.recall import QueueFull, RecallService

READ, ADMIN = "read-t0ken", "admin-t0ken"


class FakeService:
    def __init__(self) -> None:
        self.seen: list[RecallRequest] = []
        self.replies: list[float] = []  # the "reply" stage of each answered request
        self.full = False

    async def answer_timed(self, request: RecallRequest, receive: Any = None) -> tuple[int, RecallReply, float]:
        if self.full:
            raise QueueFull(1024, 3)
        self.seen.append(request)
        items = [[h[-1]] for h in request.hist_item] if request.hist_item else [[u] for u in request.user_ids or []]
        reply = RecallReply(
            items=items, scores=[[0.5]] * len(items), model_version="v1", collection="c_v1", took_ms=1.0
        )
        return 200, reply, time.perf_counter()

    def observe_reply(self, ready: float) -> None:
        self.replies.append(time.perf_counter() - ready)


def _client() -> tuple[TestClient, FakeService, list[Any]]:
    service = FakeService()
    routed: list[Any] = []
    app = FastAPI()

    @app.post("/rec/recall")
    def recall(request: Annotated[RecallRequest, Body()]) -> dict[str, str]:
        routed.append(request)
        return {"answered_by": "fastapi"}

    @app.post("/echo")
    def echo(body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        return body

    guard = HistoryGuard(SecretStr(READ), SecretStr(ADMIN))
    app.add_middleware(FastRecallMiddleware, service=cast(RecallService, service), guard=guard)
    return TestClient(app), service, routed


def test_a_valid_body_is_answered_by_the_fast_path() -> None:
    client, service, routed = _client()
    r = client.post("/rec/recall", json={"top_k": 3, "hist_item": [[1, 2, 7], [9]]})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {
        **RecallReply(
            items=[[7], [9]], scores=[[0.5]] * 2, model_version="v1", collection="c_v1", took_ms=1.0
        ).model_dump(mode="json")
    }
    assert [req.top_k for req in service.seen] == [3] and routed == []
    assert len(service.replies) == 1 and 0 <= service.replies[0] < 1.0  # observed once, after the send


def test_an_invalid_body_reaches_fastapi_unchanged_and_gets_its_422() -> None:
    client, service, routed = _client()
    r = client.post("/rec/recall", json={"top_k": 0, "hist_item": [[1]]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "top_k"]  # FastAPI's own error format
    r = client.post("/rec/recall", content=b'{"hist_item": [[1, 2]', headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert service.seen == [] and routed == []


def test_other_paths_and_content_types_are_left_to_fastapi() -> None:
    client, service, routed = _client()
    assert client.post("/echo", json={"a": 1}).json() == {"a": 1}
    r = client.post("/rec/recall", content=b'{"hist_item": [[1]]}', headers={"content-type": "text/plain"})
    assert service.seen == [] and routed == []
    # FastAPI's own answer: a text/plain body is not parsed as JSON, so the model gets a string
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "model_attributes_type" and r.json()["detail"][0]["loc"] == ["body"]


def test_user_ids_need_the_read_or_the_admin_token() -> None:
    client, service, routed = _client()
    body = {"top_k": 3, "user_ids": [5, 6]}
    r = client.post("/rec/recall", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert (r.json()["code"], r.json()["message"]) == ("bad_request", HISTORY_NEEDS_TOKEN)
    for wrong in ("Bearer wrong", f"Basic {READ}", f"Bearer {READ}x", "Bearer"):
        r = client.post("/rec/recall", json=body, headers={"Authorization": wrong})
        assert r.status_code in (401, 403) and "items" not in r.json(), wrong
    assert service.seen == [] and routed == []  # nothing was looked up
    for token in (READ, ADMIN):
        r = client.post("/rec/recall", json=body, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["items"] == [[5], [6]]
    assert client.post("/rec/recall", json={"hist_item": [[1, 2]]}).status_code == 200  # the caller's own ids: open


def test_a_full_queue_is_503_with_retry_after() -> None:
    client, service, _ = _client()
    service.full = True
    r = client.post("/rec/recall", json={"top_k": 3, "hist_item": [[1, 2]]})
    assert r.status_code == 503 and r.headers["retry-after"] == "3"
    assert r.json()["code"] == "unavailable" and "busy" in r.json()["message"]
