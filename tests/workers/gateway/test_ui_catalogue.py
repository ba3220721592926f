"""The /ui page's issue-32 controls on the real gateway app over the in-memory store (no Milvus, no Kafka):
``exclude_seen``, ``filters`` and ``fallback`` reach the engine as ``POST /rec/recall`` takes them (the same
list), a user without history shows the popular items with the fallback named, and the page carries the
controls (offline, under the CSP). Availability on the page, on the real stack: ``test_catalogue_recall``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from tests.workers.gateway import ui_fakes as fakes
from tests.workers.gateway.test_ui_api import READ, TITLES, USERS, _settings, _store
from workers.gateway.app import create_app
from workers.gateway.catalogue import Catalogue
from workers.gateway.ui import ui_assets
from workers.infra.vector_store import VectorStore
from workers.recall.engine import RecallEngine
from workers.recall.popular import PopularItems

POPULAR = [30, 30, 30, 12, 12, 5]  # clicks: 30 the most, then 12, then 5


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    store = _store()
    popular = PopularItems(half_life_s=60.0, capacity=100, clock_ms=lambda: 1e12)
    popular.add(np.array(POPULAR, dtype=np.int64), np.full(len(POPULAR), 10**12, dtype=np.int64))
    engine = RecallEngine(fakes.Live(store), store, fakes.Histories(USERS), popular=popular)
    app = create_app(
        _settings(tmp_path),
        store=cast(VectorStore, store),
        engine=engine,
        registry=CollectorRegistry(),
        catalogue=Catalogue(TITLES, "test"),
    )
    with TestClient(app, base_url="http://localhost:8000") as test_client:
        yield test_client


@pytest.mark.parametrize(
    "options",
    [
        {"exclude_seen": True},
        {"filters": {"exclude_items": [1, 2, 5, 6]}},
        {"exclude_seen": True, "filters": {"exclude_items": [11]}, "diversity": 0.5, "fallback": "popular"},
    ],
)
def test_explore_sends_the_pages_options_as_rec_recall_takes_them(client: TestClient, options: dict[str, Any]) -> None:
    history = [3, 9, 4]
    out = client.post("/ui/api/explore", json={"items": history, "top_k": 8, **options}).json()
    body = {"hist_item": [history], "top_k": 8, **options}
    assert {k: v for k, v in out["request"].items() if k != "schema_version"} == body
    recalled = client.post("/rec/recall", json=body).json()
    assert [i["id"] for i in out["items"]] == recalled["items"][0] and len(recalled["items"][0]) == 8
    excluded = set(history if options.get("exclude_seen") else ()) | set(
        options.get("filters", {}).get("exclude_items", ())
    )
    assert not excluded & {i["id"] for i in out["items"]}
    assert ("source" in out["reply"]) == ("fallback" in options)


def test_a_user_without_history_gets_the_popular_items_with_the_fallback(client: TestClient) -> None:
    out = client.post("/ui/api/explore", json={"user_id": 99, "top_k": 2, "fallback": "popular"}, headers=READ).json()
    assert out["request"]["user_ids"] == [99] and out["reply"]["source"] == ["popular"]
    assert [i["id"] for i in out["items"]] == [30, 12] and out["items"][0]["title"] == "Movie 30"
    assert "popular" in out["message"] and out["interests"] == 0
    without = client.post("/ui/api/explore", json={"user_id": 99}, headers=READ).json()
    assert without["reply"] is None and "no clicks" in without["message"]  # as before
    filtered = client.post(
        "/ui/api/explore",
        json={"user_id": 99, "top_k": 2, "fallback": "popular", "filters": {"exclude_items": [30]}},
        headers=READ,
    ).json()
    assert [i["id"] for i in filtered["items"]] == [12, 5]


def test_bad_options_are_refused_with_the_reason(client: TestClient) -> None:
    both = client.post(
        "/ui/api/explore", json={"items": [3], "filters": {"include_segments": ["a"], "exclude_segments": ["a"]}}
    )
    assert both.status_code == 422 and "both included and excluded" in both.text
    assert client.post("/ui/api/explore", json={"items": [3], "fallback": "random"}).status_code == 422
    assert client.post("/ui/api/explore", json={"items": [3], "filters": {"exclude_items": [0]}}).status_code == 422


def test_the_page_has_the_controls_and_sends_them() -> None:
    page = (ui_assets() / "index.html").read_text()
    script = (ui_assets() / "ui.js").read_text()
    for control in ("exclude-seen", "fallback", "include-segments", "exclude-segments", "include-categories"):
        assert f'id="{control}"' in page and f'"{control}"' in script, control
    for field in ("exclude_seen", "fallback", "filters", "include_categories", "exclude_categories"):
        assert field in script, field
    assert "withdrawn" in script and "reply.source" in script  # availability and the answering source shown
    assert not re.search(r"<script>|style=", page)  # still nothing inline (CSP 'self')
