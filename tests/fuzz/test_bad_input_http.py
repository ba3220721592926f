"""Generated bad bodies against the HTTP gateway on the real embedded Milvus (fastapi TestClient).

Whatever the body and its content type, the answer is a 4xx with a JSON explanation (FastAPI's
``detail`` or an ``ErrorReply``), never a 5xx; a good body still gets its 200. Good and bad are
decided by the independent oracle (``tests.fuzz.oracle.valid_http_request``), not by the codec.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from model.net import MindNet
from schemas.codec import MAX_PAYLOAD_BYTES, encode
from workers.gateway.app import create_app
from workers.infra.vector_store import VectorStore
from workers.recall.engine import RecallEngine
from workers.recall.live_model import LiveModel
from workers.refresh.registry import ModelRegistry
from workers.settings import HttpSettings, MilvusSettings, Settings

from ..workers.model_fixtures import exact_recall, publish_tiny
from . import bad_request_shape, bad_requests, fuzz, huge_request, non_utf8, oracle, requests, truncated

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOKEN = "fuzz-admin-token"
READ_TOKEN = "fuzz-read-token"
JSON_TYPES = ["application/json", "application/json; charset=utf-8", "application/vnd.api+json"]
OTHER_TYPES = [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "image/png"]
NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]


@dataclass
class Env:
    client: TestClient
    net: MindNet
    store: VectorStore
    alias: str
    registry: CollectorRegistry


@pytest.fixture(scope="module")
def env(milvus_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    alias = f"fuzz_http_{uuid.uuid4().hex[:8]}"
    state_dir: Path = tmp_path_factory.mktemp("fuzz-http")
    settings = Settings(
        state_dir=state_dir,
        milvus=MilvusSettings(uri=milvus_uri, alias=alias, index_type="FLAT"),
        http=HttpSettings(admin_token=SecretStr(TOKEN), read_token=SecretStr(READ_TOKEN)),
    )
    store = VectorStore(milvus_uri, settings.milvus)
    try:
        _, net = publish_tiny(store, settings.models_dir, alias, 150, seed=7)
        live = LiveModel(store, ModelRegistry(settings.models_dir, alias), check_every_s=0.5)
        registry = CollectorRegistry()
        app = create_app(settings, store=store, engine=RecallEngine(live, store), registry=registry)
        with TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1:8000") as client:
            yield Env(client, net, store, alias, registry)
    finally:
        for name in store.list_collections(alias):
            if store.resolve_alias(alias) == name:
                store.drop_alias(alias)
            store.drop_collection(name)
        store.close()


@st.composite
def non_finite_request(draw: st.DrawFn) -> bytes:
    """NaN / Infinity where integers must be: Python's json accepts them, strict JSON cannot echo them."""
    token = draw(st.sampled_from(NON_FINITE))
    template = draw(
        st.sampled_from(
            [
                '{"hist_item": [[1, %s]]}',
                '{"hist_item": [[1]], "top_k": %s}',
                '{"user_ids": [%s]}',
                "%s",
                "[%s]",
                '{"hist_item": %s}',
                '{"schema_version": %s, "hist_item": [[1]]}',
            ]
        )
    )
    return (template % token).encode()


bodies = st.one_of(
    bad_requests,
    non_finite_request(),
    non_utf8(requests),
    truncated(requests),
    huge_request(),
    bad_request_shape(),
    requests.map(encode),  # valid ones too: 200 (hist_item) or 400 (user_ids: no history source here)
)


def _post(client: TestClient, path: str, body: bytes, content_type: str | None, token: str | None = None) -> Any:
    headers = {"content-type": content_type} if content_type else {}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return client.post(path, content=body, headers=headers)


def _explained(response: Any) -> dict[str, Any]:
    """A JSON object saying what is wrong: FastAPI's ``detail`` or an ``ErrorReply``."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    payload = response.json()
    assert isinstance(payload, dict), payload
    if "detail" in payload:
        detail = payload["detail"]
        assert detail and (isinstance(detail, str) or all({"loc", "msg", "type"} <= set(d) for d in detail))
    else:
        assert payload["code"] in ("bad_request", "too_large") and payload["message"], payload
    return payload


@fuzz(200)
@given(body=bodies, content_type=st.sampled_from(JSON_TYPES))
def test_bad_json_bodies_get_4xx_with_an_explanation(env: Env, body: bytes, content_type: str | None) -> None:
    r = _post(env.client, "/rec/recall", body, content_type, READ_TOKEN)  # user_ids need it (else 401)
    assert r.status_code < 500, (body[:200], r.status_code, r.text[:300])
    if oracle.valid_http_request(body):
        if oracle.request_uses_history(body, http=True):  # no history source in this app: 400, explained
            assert r.status_code == 400, (body[:200], r.status_code, r.text[:300])
            assert _explained(r)["code"] == "bad_request"
            return
        assert r.status_code == 200, (body[:200], r.status_code, r.text[:300])
        reply = r.json()
        users = len(json.loads(body)["hist_item"])
        assert reply["model_version"] == "v1" and len(reply["items"]) == len(reply["scores"]) == users, reply
        return
    assert r.status_code in (400, 413, 422), (body[:200], r.status_code, r.text[:300])
    _explained(r)


@fuzz(60)
@given(body=bodies | st.binary(max_size=64), content_type=st.sampled_from(OTHER_TYPES))
def test_other_content_types_get_4xx(env: Env, body: bytes, content_type: str | None) -> None:
    """No content type or a non-JSON one: the body is not parsed as JSON (FastAPI is strict), 422."""
    r = _post(env.client, "/rec/recall", body, content_type)
    assert r.status_code in (400, 413, 422), (body[:200], content_type, r.status_code, r.text[:300])
    _explained(r)


@fuzz(40)
@given(body=bodies, path=st.sampled_from(["/rec/drop", "/rec/insert_data"]))
def test_admin_endpoints_refuse_bad_bodies_without_the_token(env: Env, body: bytes, path: str) -> None:
    r = _post(env.client, path, body, "application/json")
    assert r.status_code == 401, r.text[:300]
    assert env.store.resolve_alias(env.alias) == f"{env.alias}_v1"


def test_oversized_and_deep_bodies(env: Env) -> None:
    big = b'{"hist_item": [[1]]}' + b" " * MAX_PAYLOAD_BYTES
    r = _post(env.client, "/rec/recall", big, "application/json")
    assert r.status_code == 413 and _explained(r)["code"] == "too_large"
    for depth in (50, 900, 5000):  # under and over Python's recursion limit
        deep = b'{"hist_item": ' + b"[" * depth + b"]" * depth + b"}"
        r = _post(env.client, "/rec/recall", deep, "application/json")
        assert r.status_code in (400, 422), (depth, r.text[:200])
        _explained(r)


def test_good_body_after_the_fuzzing_is_200_and_no_5xx_was_counted(env: Env) -> None:
    history = [[3, 17, 42], [7]]
    r = env.client.post("/rec/recall", json={"top_k": 5, "hist_item": history})
    assert r.status_code == 200, r.text
    assert r.json()["items"] == exact_recall(env.net, history, 5)
    metrics = env.client.get("/metrics").text
    assert 'status="422"' in metrics and 'status="5' not in metrics
    assert json.loads(env.client.get("/healthz").text) == {"status": "ok"}
