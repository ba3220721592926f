"""The /ui page's JSON API on the real gateway app, over an in-memory store (no Milvus, no Kafka).

* ``/ui/api/status``: what the sampler read (its values are checked against the metrics in
  ``test_ui_status.py``); the live version is the alias's.
* ``/ui/api/explore``: the list, scores, version and generation equal ``POST /rec/recall``'s for the
  same history (user id or typed items); the interest tags agree with a brute-force search of each
  interest; titles come from the catalogue. A user id needs the read token (or the admin token).
* the admin operations behind the page's buttons: refused without the token, done with it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from tests.workers.gateway import ui_fakes as fakes
from workers.gateway.app import create_app, worker_metrics_urls
from workers.gateway.catalogue import Catalogue, ItemInfo
from workers.gateway.ui import LiveReader, ui_assets
from workers.gateway.ui_status import StatusSampler, registry_source
from workers.infra.vector_store import VectorStore
from workers.recall.engine import RecallEngine
from workers.refresh.registry import ModelRegistry
from workers.refresh.state import RefreshState, Superseded
from workers.refresh.worker import REFRESH_REQUEST
from workers.settings import HttpSettings, IngestSettings, MilvusSettings, RecallSettings, Settings

TOKEN = "ui-test-token"
READ_TOKEN = "ui-read-token"
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
ALIAS = "uitest"
USERS = {7: [3, 9, 4, 12, 30, 31, 2], 8: [5]}
TITLES = {i: ItemInfo(f"Movie {i}", ("Drama",) if i % 2 else ("Comedy", "Romance")) for i in range(1, 31)}


@dataclass
class Env:
    client: TestClient
    store: fakes.Store
    settings: Settings
    sampler: StatusSampler


def _settings(state_dir: Path, token: str | None = TOKEN) -> Settings:
    return Settings(
        state_dir=state_dir,
        milvus=MilvusSettings(uri="http://127.0.0.1:1", alias=ALIAS),
        http=HttpSettings(
            admin_token=SecretStr(token) if token else None, read_token=SecretStr(READ_TOKEN), ui_sample_s=3600
        ),
    )


def _env(state_dir: Path, store: fakes.Store, token: str | None = TOKEN) -> Iterator[Env]:
    settings = _settings(state_dir, token)
    engine = RecallEngine(fakes.Live(store), store, fakes.Histories(USERS))
    registry = CollectorRegistry()
    created = {"v1": time.time() - 100, "v2": time.time() - 10}
    fake_registry = fakes.Registry(ALIAS, state_dir / "models", created)
    live = LiveReader(cast(VectorStore, store), cast(ModelRegistry, fake_registry))
    sampler = StatusSampler({"gateway": registry_source(registry)}, live, sample_s=3600)
    app = create_app(
        settings,
        store=cast(VectorStore, store),
        engine=engine,
        registry=registry,
        sampler=sampler,
        catalogue=Catalogue(TITLES, "test"),
    )
    with TestClient(app, base_url="http://localhost:8000") as client:
        yield Env(client, store, settings, sampler)


def _store(live: str | None = "v2") -> fakes.Store:
    store = fakes.Store(ALIAS, {f"{ALIAS}_v1": fakes.table(1), f"{ALIAS}_v2": fakes.table(2)})
    if live is not None:
        store.target = f"{ALIAS}_{live}"
    return store


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from _env(tmp_path, _store())


# ------------------------------------------------------------------ the page and its files


def test_root_links_the_page_and_the_page_is_served_offline(env: Env) -> None:
    root = env.client.get("/")
    assert root.status_code == 200 and 'href="/ui"' in root.text and 'href="/docs"' in root.text
    page = env.client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', page.text)
    assert sorted(assets) == ["/ui/static/ui.css", "/ui/static/ui.js"]
    for path in assets:
        assert env.client.get(path).status_code == 200, path
    for name in ("index.html", "ui.js", "ui.css"):  # nothing fetched from another host
        text = (ui_assets() / name).read_text()
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text)) - {"http://www.w3.org/2000/svg"}
        assert urls == set(), (name, urls)


# ------------------------------------------------------------------ status


def test_status_is_the_samplers_and_names_the_alias_version(env: Env) -> None:
    env.sampler.sample()
    body = env.client.get("/ui/api/status").json()
    assert body == json.loads(env.sampler.encoded())
    assert body["live"]["state"] == "live"
    assert (body["live"]["version"], body["live"]["collection"]) == ("v2", env.store.resolve_alias(ALIAS))
    assert body["live"]["items"] == fakes.ITEMS and body["live"]["generation"] == 0
    assert 10 <= body["live"]["age_s"] < 20
    assert body["workers"]["gateway"]["up"] is True
    assert {w for w, info in body["workers"].items() if not info["configured"]} == {"ingest", "refresh", "recall"}


def test_status_without_a_live_model_says_so(tmp_path: Path) -> None:
    for env in _env(tmp_path, _store(live=None)):
        body = env.client.get("/ui/api/status").json()
        assert body["live"]["state"] == "none" and "no model is live yet" in body["live"]["message"]
        reply = env.client.post("/ui/api/explore", json={"items": [3, 4]})
        assert reply.status_code == 503 and reply.json()["code"] == "unavailable"
        assert env.client.post("/ui/api/explore", json={"user_id": 7}, headers=READ).status_code == 503


def test_worker_metrics_urls_follow_the_ports_and_the_overrides(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path,
        ingest=IngestSettings(metrics_port=9101),
        recall=RecallSettings(metrics_port=9103),
        http=HttpSettings(ui_metrics={"recall": "http://recall:9103/metrics"}),
    )
    assert worker_metrics_urls(settings) == {
        "ingest": "http://127.0.0.1:9101/metrics",
        "recall": "http://recall:9103/metrics",
    }


# ------------------------------------------------------------------ explore


def _brute_force_tags(store: fakes.Store, history: list[int], items: list[int]) -> list[int]:
    """The interest whose exact inner product with each item is the highest."""
    vectors = store.collections[store.target or ""]
    interests = fakes.Tower(vectors).interests([history])[0]
    return [int(np.argmax(interests @ vectors[i])) for i in items]


@pytest.mark.parametrize("top_k", [1, 8, 40])
def test_explore_items_equals_rec_recall(env: Env, top_k: int) -> None:
    history = [3, 9, 4]
    explored = env.client.post("/ui/api/explore", json={"items": history, "top_k": top_k})
    assert explored.status_code == 200, explored.text
    out = explored.json()
    recalled = env.client.post("/rec/recall", json={"hist_item": [history], "top_k": top_k}).json()
    assert (out["request"]["hist_item"], out["request"]["top_k"]) == ([history], top_k)  # the body sent
    assert [i["id"] for i in out["items"]] == recalled["items"][0]
    assert [i["score"] for i in out["items"]] == recalled["scores"][0]
    for key in ("model_version", "generation", "collection", "items", "scores"):
        assert out["reply"][key] == recalled[key]
    assert [h["id"] for h in out["history"]] == history
    assert out["history"][0] == {"id": 3, "key": "3", "title": "Movie 3", "genres": ["Drama"]}
    assert out["interests"] == fakes.K
    assert [i["interest"] for i in out["items"]] == _brute_force_tags(env.store, history, recalled["items"][0])


def test_explore_passes_diversity_as_rec_recall_takes_it(env: Env) -> None:
    history = [3, 9, 4]
    body = {"hist_item": [history], "top_k": 12, "diversity": 0.5}
    explored = env.client.post("/ui/api/explore", json={"items": history, "top_k": 12, "diversity": 0.5})
    assert explored.status_code == 200, explored.text
    out = explored.json()
    assert out["request"] == {**body, "schema_version": out["request"]["schema_version"]}
    recalled = env.client.post("/rec/recall", json=body).json()
    assert [i["id"] for i in out["items"]] == recalled["items"][0]
    assert env.client.post("/ui/api/explore", json={"items": history, "diversity": -1}).status_code == 422


def test_explore_user_needs_the_read_or_the_admin_token(env: Env) -> None:
    refused = env.client.post("/ui/api/explore", json={"user_id": 7})
    assert refused.status_code == 401 and refused.json()["code"] == "bad_request" and "history" not in refused.json()
    wrong = env.client.post("/ui/api/explore", json={"user_id": 7}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and "history" not in wrong.json()
    admin = env.client.post("/ui/api/explore", json={"user_id": 7}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert admin.status_code == 200 and admin.json()["history"]
    assert env.client.post("/ui/api/explore", json={"items": [3, 9]}).status_code == 200  # items: open


def test_explore_user_reads_the_history_as_recall_does(env: Env) -> None:
    out = env.client.post("/ui/api/explore", json={"user_id": 7, "top_k": 10}, headers=READ).json()
    assert [h["id"] for h in out["history"]] == USERS[7][-fakes.MAXLEN :]
    by_user = env.client.post("/rec/recall", json={"user_ids": [7], "top_k": 10}, headers=READ).json()
    assert [i["id"] for i in out["items"]] == by_user["items"][0]
    assert out["reply"]["model_version"] == "v2"
    untitled = [i for i in out["items"] if i["id"] > 30]
    assert all(i["title"] is None and i["genres"] == [] for i in untitled)


def test_explore_user_without_history_and_items_the_model_does_not_know(env: Env) -> None:
    out = env.client.post("/ui/api/explore", json={"user_id": 99}, headers=READ).json()
    assert out["items"] == [] and out["reply"] is None and "no clicks" in out["message"]
    big = 2**62 + 1  # past 2^53: the page shows ``key``, the exact digits
    unknown = env.client.post("/ui/api/explore", json={"items": [10_000, big]}).json()
    assert unknown["items"] == [] and unknown["reply"]["items"] == [[]] and "known" in unknown["message"]
    assert [h["key"] for h in unknown["history"]] == ["10000", str(big)]


@pytest.mark.parametrize(
    "body", [{}, {"user_id": 1, "items": [1]}, {"items": []}, {"items": [0]}, {"user_id": "1"}, {"top_k": 0}]
)
def test_explore_rejects_bad_bodies(env: Env, body: dict[str, Any]) -> None:
    assert env.client.post("/ui/api/explore", json=body).status_code == 422


def test_item_search_by_title_and_id(env: Env) -> None:
    found = env.client.get("/ui/api/items", params={"q": "movie 1"}).json()
    assert [i["id"] for i in found] == [1, *range(10, 20), 21]  # every title holding "movie" and "1"
    assert env.client.get("/ui/api/items", params={"q": "12"}).json()[0]["id"] == 12
    assert env.client.get("/ui/api/items", params={"q": "35"}).json() == [
        {"id": 35, "key": "35", "title": None, "genres": []}
    ]
    assert env.client.get("/ui/api/items", params={"q": "nothing like it"}).json() == []


# ------------------------------------------------------------------ admin


def test_refresh_needs_the_token(env: Env) -> None:
    def request() -> str | None:
        live = env.store.resolve_alias(env.store.alias)
        return env.store.properties(live).get(REFRESH_REQUEST) if live else None

    assert env.client.post("/rec/refresh").status_code == 401
    assert env.client.post("/rec/refresh", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert request() is None
    done = env.client.post("/rec/refresh", headers={"Authorization": f"Bearer {TOKEN}"})
    assert done.status_code == 200 and done.json() == {"requested": True, "request": request()}


def test_rollback_needs_the_token_and_moves_the_alias_back(env: Env) -> None:
    state = RefreshState(superseded=[Superseded(f"{ALIAS}_v1", time.time() - 5)])
    state.save(RefreshState.file(env.settings.refresh_dir))
    assert env.client.post("/rec/rollback").status_code == 401
    assert env.client.post("/rec/rollback", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert env.store.target == f"{ALIAS}_v2"
    env.sampler.sample()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    done = env.client.post("/rec/rollback", headers=auth)
    assert done.status_code == 200, done.text
    assert done.json() == {"live": f"{ALIAS}_v1", "model_version": "v1", "was": f"{ALIAS}_v2"}
    assert env.store.target == f"{ALIAS}_v1"
    status = env.client.get("/ui/api/status").json()  # sampled by the rollback itself
    assert status["live"]["version"] == "v1"
    assert [(e["kind"], e["from"], e["to"]) for e in status["events"]] == [("rollback", "v2", "v1")]
    again = env.client.post("/rec/rollback", headers=auth)  # v2 was kept: a second one undoes the first
    assert again.status_code == 200 and env.store.target == f"{ALIAS}_v2"
    env.store.collections.pop(f"{ALIAS}_v1")
    nothing = env.client.post("/rec/rollback", headers=auth)
    assert nothing.status_code == 409 and "nothing to roll back" in nothing.json()["message"]


def test_admin_without_a_configured_token_is_refused(tmp_path: Path) -> None:
    for env in _env(tmp_path, _store(), token=None):
        for path in ("/rec/refresh", "/rec/rollback"):
            assert env.client.post(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 403
