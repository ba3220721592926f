"""The HTTP gateway against the real embedded Milvus (fastapi.testclient, no network).

One tiny model is live for the module; tests run in file order: the publish and drop tests come last.
``user_ids`` (a user's history) are sent with the read token; the live model is watched in the
background (no alias lookup on the request path) and a swap that dropped the served collection is
retried once on the new model.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from model.net import MindNet
from schemas.codec import MAX_PAYLOAD_BYTES
from tests.workers.model_fixtures import exact_recall, publish_tiny, save_tiny
from workers.gateway.admin import Admin, CountResult
from workers.gateway.app import create_app
from workers.gateway.auth import NOT_CONFIGURED
from workers.infra.vector_store import VectorStore
from workers.recall.engine import HistorySource, RecallEngine
from workers.recall.live_model import LiveModel
from workers.recall.metrics import STAGES
from workers.refresh.publish_lock import lock_path, publish_lock
from workers.refresh.registry import ModelRegistry
from workers.refresh.state import RefreshState
from workers.settings import HttpSettings, MilvusSettings, RecallSettings, Settings

pytestmark = pytest.mark.integration
TOKEN = "test-admin-token"
READ_TOKEN = "test-read-token"
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
BASE_URL = "http://127.0.0.1:8000"  # a Host the gateway answers
HISTORIES = [[3, 17, 42], [100, 101, 102, 103, 104, 105, 106], [7]]
USERS = {11: [3, 17, 42], 12: [7]}


class FakeHistory:
    def history(self, user_id: int, maxlen: int) -> list[int]:
        return USERS.get(user_id, [])[-maxlen:]


@dataclass
class Env:
    settings: Settings
    store: VectorStore
    alias: str
    nets: dict[str, MindNet]
    registry: CollectorRegistry
    client: TestClient


def _settings(state_dir: Path, uri: str, alias: str, token: str | None = TOKEN, **recall: float) -> Settings:
    return Settings(
        state_dir=state_dir,
        milvus=MilvusSettings(uri=uri, alias=alias, index_type="FLAT"),
        http=HttpSettings(admin_token=SecretStr(token) if token else None, read_token=SecretStr(READ_TOKEN)),
        recall=RecallSettings(**recall),
    )


def _client(app: FastAPI, **kw: Any) -> TestClient:
    return TestClient(app, base_url=BASE_URL, **kw)


def _engine(settings: Settings, store: VectorStore, history: HistorySource | None = None) -> RecallEngine:
    live = LiveModel(store, ModelRegistry(settings.models_dir, settings.milvus.alias), check_every_s=0.1)
    return RecallEngine(live, store, history)


def _app(settings: Settings, store: VectorStore, engine: RecallEngine | None = None, **kw: Any) -> FastAPI:
    engine = engine or _engine(settings, store, FakeHistory())
    return create_app(settings, store=store, engine=engine, registry=CollectorRegistry(), **kw)


@pytest.fixture(scope="module")
def env(milvus_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    alias = f"gw_{uuid.uuid4().hex[:8]}"
    settings = _settings(tmp_path_factory.mktemp("gateway"), milvus_uri, alias)
    store = VectorStore(milvus_uri, settings.milvus)
    version, net = publish_tiny(store, settings.models_dir, alias, 200, seed=1)
    registry = CollectorRegistry()
    app = create_app(settings, store=store, engine=_engine(settings, store, FakeHistory()), registry=registry)
    with _client(app) as client:
        yield Env(settings, store, alias, {version: net}, registry, client)
    for name in store.list_collections(alias):
        if store.resolve_alias(alias) == name:
            store.drop_alias(alias)
        store.drop_collection(name)
    store.close()


def test_recall_returns_items_scores_and_version(env: Env) -> None:
    r = env.client.post("/rec/recall", json={"top_k": 10, "hist_item": HISTORIES})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model_version"], body["collection"]) == ("v1", f"{env.alias}_v1")
    assert body["items"] == exact_recall(env.nets["v1"], HISTORIES, 10)
    assert [len(s) for s in body["scores"]] == [10, 10, 10]
    assert all(s == sorted(s, reverse=True) for s in body["scores"])
    assert body["took_ms"] >= 0
    by_user = env.client.post("/rec/recall", json={"top_k": 10, "user_ids": [11, 12, 99]}, headers=READ).json()
    assert by_user["items"] == [body["items"][0], body["items"][2], []]  # unknown user: empty, not an error


def test_user_ids_need_the_read_token(env: Env) -> None:
    r = env.client.post("/rec/recall", json={"top_k": 10, "user_ids": [11]})
    assert r.status_code == 401 and r.json()["code"] == "bad_request" and "items" not in r.json()
    r = env.client.post("/rec/recall", json={"top_k": 10, "user_ids": [11]}, headers={"Authorization": "Bearer no"})
    assert r.status_code == 403 and "items" not in r.json()
    admin = {"Authorization": f"Bearer {TOKEN}"}
    assert env.client.post("/rec/recall", json={"user_ids": [11]}, headers=admin).status_code == 200


LONG = [[1]] * 257
BAD: dict[str, tuple[Any, str]] = {
    "no-source": ({"top_k": 5}, "exactly one of hist_item or user_ids"),
    "both-sources": ({"hist_item": [[1]], "user_ids": [1]}, "exactly one"),
    "string-ids": ({"hist_item": [["1"]]}, "hist_item"),
    "string-top-k": ({"hist_item": [[1]], "top_k": "5"}, "top_k"),
    "top-k-0": ({"hist_item": [[1]], "top_k": 0}, "top_k"),
    "top-k-5000": ({"hist_item": [[1]], "top_k": 5000}, "top_k"),
    "no-users": ({"hist_item": []}, "hist_item"),
    "empty-sequence": ({"hist_item": [[]]}, "hist_item"),
    "item-id-0": ({"hist_item": [[0]]}, "hist_item"),
    "too-many-users": ({"hist_item": LONG}, "hist_item"),
    "too-many-user-ids": ({"user_ids": list(range(1, 258))}, "user_ids"),
    "unknown-field": ({"hist_item": [[1]], "topk": 5}, "topk"),
    "diversity-negative": ({"hist_item": [[1]], "diversity": -0.5}, "greater than or equal to 0"),
    "diversity-string": ({"hist_item": [[1]], "diversity": "high"}, "valid number"),
    "not-an-object": ([1, 2], "body"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_bodies_get_422_with_field_details(env: Env, case: str) -> None:
    body, where = BAD[case]
    r = env.client.post("/rec/recall", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail and all({"loc", "msg", "type"} <= set(d) for d in detail)
    assert any(where in json.dumps([d["loc"], d["msg"]]) for d in detail), detail


def test_malformed_json_and_oversized_bodies(env: Env) -> None:
    r = env.client.post("/rec/recall", content=b'{"hist_item": [[1, 2]', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    big = b'{"hist_item": [[' + b"1," * (MAX_PAYLOAD_BYTES // 2) + b"1]]}"
    r = env.client.post("/rec/recall", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        yield b'{"hist_item": [['
        for _ in range(MAX_PAYLOAD_BYTES // 2**16 + 1):
            yield b"1," * 2**15
        yield b"1]]}"

    r = env.client.post("/rec/recall", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_user_ids_without_a_history_source_is_400(env: Env) -> None:
    app = _app(env.settings, env.store, _engine(env.settings, env.store, history=None))
    with _client(app) as client:
        r = client.post("/rec/recall", json={"user_ids": [11]}, headers=READ)
    assert r.status_code == 400 and r.json()["code"] == "bad_request"


def test_internal_errors_never_leak(env: Env) -> None:
    class Broken:
        def search(
            self,
            name_or_alias: str,
            queries: np.ndarray,
            top_k: int,
            *,
            with_versions: bool = True,
            max_generation: int | None = None,
        ) -> Any:
            raise RuntimeError("secret internals: connection to 10.1.2.3:19530 password=hunter2")

    class BrokenAdmin(Admin):
        def count(self) -> CountResult:
            raise RuntimeError("secret internals in admin")

    live = LiveModel(env.store, ModelRegistry(env.settings.models_dir, env.alias), check_every_s=0.1)
    engine = RecallEngine(live, Broken())
    app = _app(env.settings, env.store, engine, admin=BrokenAdmin(env.settings, env.store))
    with _client(app, raise_server_exceptions=False) as client:
        r = client.post("/rec/recall", json={"hist_item": [[1, 2]]})
        assert r.status_code == 500 and r.json()["code"] == "internal"
        assert "secret" not in r.text and "10.1.2.3" not in r.text
        r = client.post("/rec/count")
        assert r.status_code == 500 and "secret" not in r.text


def test_count_health_and_readiness(env: Env) -> None:
    r = env.client.post("/rec/count")
    assert r.status_code == 200
    assert r.json() == {"count": 199, "collection": f"{env.alias}_v1", "model_version": "v1"}
    assert env.client.get("/healthz").json() == {"status": "ok"}
    r = env.client.get("/readyz")
    assert r.status_code == 200 and r.json()["collection"] == f"{env.alias}_v1"


def test_no_live_alias_is_503(env: Env, tmp_path: Path) -> None:
    settings = _settings(tmp_path, env.settings.milvus.uri or "", f"gw_none_{uuid.uuid4().hex[:8]}")
    with _client(_app(settings, env.store)) as client:
        r = client.post("/rec/recall", json={"hist_item": [[1, 2]]})
        assert r.status_code == 503 and r.json()["code"] == "unavailable"
        assert client.get("/readyz").status_code == 503
        assert client.post("/rec/count").status_code == 503
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("path", ["/rec/insert_data", "/rec/drop", "/qa/drop"])
def test_admin_endpoints_refuse_without_the_token(env: Env, path: str, tmp_path: Path) -> None:
    r = env.client.post(path)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert env.client.post(path, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert env.client.post(path, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert env.client.post(path, headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 403
    unconfigured = _settings(tmp_path, env.settings.milvus.uri or "", env.alias, token=None)
    with _client(_app(unconfigured, env.store)) as client:
        r = client.post(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 403 and r.json()["detail"] == NOT_CONFIGURED
    assert env.store.resolve_alias(env.alias) == f"{env.alias}_v1"  # nothing happened


def test_metrics_count_requests_by_endpoint_and_status(env: Env) -> None:
    env.client.post("/rec/recall", json={"hist_item": [[1]]})
    text = env.client.get("/metrics").text
    assert 'mindstream_http_requests_total{endpoint="/rec/recall",method="POST",status="200"}' in text
    assert 'mindstream_http_requests_total{endpoint="/rec/recall",method="POST",status="422"}' in text
    assert 'mindstream_http_requests_total{endpoint="/rec/drop",method="POST",status="401"}' in text
    assert 'mindstream_http_request_duration_seconds_bucket{endpoint="/rec/recall"' in text
    assert 'mindstream_recall_requests_total{status="ok"}' in text
    assert TOKEN not in text and "wrong" not in text


def _stage_sums(registry: CollectorRegistry) -> float:
    return sum(
        registry.get_sample_value("mindstream_recall_stage_seconds_sum", {"stage": stage}) or 0.0 for stage in STAGES
    )


def _stage_counts(registry: CollectorRegistry) -> dict[str, float]:
    return {
        stage: registry.get_sample_value("mindstream_recall_stage_seconds_count", {"stage": stage}) or 0.0
        for stage in STAGES
    }


def test_a_real_requests_stages_add_up_to_its_measured_time(env: Env) -> None:
    """One request at a time through the real gateway and Milvus: the stages observed for it (wait, history,
    tower, search, merge, reply) are each observed once, history only for ``user_ids``, and together fit in
    what the client measured (disjoint intervals inside the request)."""
    for i in range(30):
        by_users = i % 2 == 0
        body = {"top_k": 10, "user_ids": [11, 12]} if by_users else {"top_k": 10, "hist_item": HISTORIES}
        before = _stage_sums(env.registry)
        counts = _stage_counts(env.registry)
        began = time.perf_counter()
        r = env.client.post("/rec/recall", json=body, headers=READ)
        total = time.perf_counter() - began
        assert r.status_code == 200, r.text
        stages = _stage_sums(env.registry) - before
        assert 0 < stages <= total
        observed = {stage: n - counts[stage] for stage, n in _stage_counts(env.registry).items()}
        assert observed == {stage: 0.0 if stage == "history" and not by_users else 1.0 for stage in STAGES}, observed


def test_the_live_model_is_followed_off_the_request_path(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recalls read the model in hand: only the background watchers (and the page's sampler) ask Milvus
    what the alias points at."""
    callers: list[str] = []
    resolve = env.store.resolve_alias

    def spy(alias: str) -> str | None:
        callers.append(threading.current_thread().name)
        return resolve(alias)

    monkeypatch.setattr(env.store, "resolve_alias", spy)
    deadline = time.monotonic() + 30
    while not {"live-model-watch", "alias-check"} <= set(callers):  # both watchers tick (every 0.1 / 0.5 s)
        assert time.monotonic() < deadline, f"the watchers did not run: {callers}"
        r = env.client.post("/rec/recall", json={"top_k": 5, "hist_item": HISTORIES})
        assert r.status_code == 200, r.text
        r = env.client.post("/rec/recall", json={"top_k": 5, "user_ids": [11]}, headers=READ)
        assert r.status_code == 200, r.text
    assert set(callers) <= {"live-model-watch", "alias-check", "ui-status"}, callers


def test_a_swap_that_dropped_the_served_collection_is_retried_on_the_new_model(env: Env, tmp_path: Path) -> None:
    """The watchers are far from their next check (an hour): the engine still holds v1 when v1 is dropped
    under it; the failed search re-resolves the alias once and the request is answered by v2."""
    alias = f"gw_swap_{uuid.uuid4().hex[:8]}"
    settings = _settings(tmp_path, env.settings.milvus.uri or "", alias, alias_check_s=3600)
    publish_tiny(env.store, settings.models_dir, alias, 200, seed=5)
    live = LiveModel(env.store, ModelRegistry(settings.models_dir, alias), check_every_s=3600)
    assert live.current(force=True) is not None  # v1 in hand before the watcher's (hour-long) wait begins
    app = create_app(settings, store=env.store, engine=RecallEngine(live, env.store), registry=CollectorRegistry())
    try:
        with _client(app) as client:
            assert client.post("/rec/recall", json={"hist_item": HISTORIES}).json()["model_version"] == "v1"
            _, net = publish_tiny(env.store, settings.models_dir, alias, 160, seed=6)
            env.store.drop_collection(f"{alias}_v1")
            r = client.post("/rec/recall", json={"top_k": 7, "hist_item": HISTORIES})
            assert r.status_code == 200, r.text
            assert r.json()["model_version"] == "v2" and r.json()["items"] == exact_recall(net, HISTORIES, 7)
    finally:
        env.store.drop_alias(alias)
        for name in env.store.list_collections(alias):
            env.store.drop_collection(name)


def test_admin_endpoints_wait_for_no_refresh_round(env: Env) -> None:
    """While another process (a refresh round) holds the alias's publish lock: 409, nothing touched."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with publish_lock(lock_path(env.settings.refresh_dir, env.alias), wait=True):
        for path in ("/rec/insert_data", "/rec/drop", "/qa/drop"):
            r = env.client.post(path, headers=auth)
            assert r.status_code == 409, r.text
            assert "refresh round" in r.json()["message"]
    assert env.store.resolve_alias(env.alias) == f"{env.alias}_v1"


def test_insert_data_publishes_the_newest_checkpoint_and_swaps(env: Env) -> None:
    ckpt, net = save_tiny(env.settings.models_dir, 160, seed=2)
    assert ckpt.manifest.version == "v2"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = env.client.post("/rec/insert_data", headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model_version"], body["collection"], body["rows"]) == ("v2", f"{env.alias}_v2", 159)
    assert body["swapped"] and body["previous"] == f"{env.alias}_v1"
    assert env.store.resolve_alias(env.alias) == f"{env.alias}_v2"
    state = RefreshState.load(env.settings.refresh_dir / "state.json")
    assert [s.collection for s in state.superseded] == [f"{env.alias}_v1"]  # kept for rollback
    r = env.client.post("/rec/recall", json={"top_k": 8, "hist_item": HISTORIES})
    assert r.json()["model_version"] == "v2"
    assert r.json()["items"] == exact_recall(net, HISTORIES, 8)
    assert env.client.post("/rec/count").json()["count"] == 159
    again = env.client.post("/rec/insert_data", headers=auth).json()
    assert again["swapped"] is False and again["collection"] == f"{env.alias}_v2"  # idempotent


def test_drop_removes_the_alias_and_our_collections(env: Env) -> None:
    r = env.client.post("/rec/drop", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    assert r.json() == {"alias_dropped": True, "dropped": [f"{env.alias}_v1", f"{env.alias}_v2"], "kept": []}
    assert env.store.resolve_alias(env.alias) is None
    assert env.store.list_collections(env.alias) == []
    assert RefreshState.load(env.settings.refresh_dir / "state.json").superseded == []
    r = env.client.post("/rec/recall", json={"hist_item": [[1, 2]]})
    assert r.status_code == 503 and r.json()["code"] == "unavailable"
    assert env.client.get("/readyz").status_code == 503
    assert env.client.post("/rec/count").status_code == 503


def test_qa_drop_is_rec_drop_under_the_seeds_path(env: Env) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    published = env.client.post("/rec/insert_data", headers=auth)
    assert published.status_code == 200, published.text
    r = env.client.post("/qa/drop", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json() == {"alias_dropped": True, "dropped": [published.json()["collection"]], "kept": []}
    assert env.store.resolve_alias(env.alias) is None
    assert env.client.post("/rec/count").status_code == 503
