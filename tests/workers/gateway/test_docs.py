"""``/docs`` renders offline: headless Chromium against a real uvicorn server on a loopback port.

A recall made THROUGH Swagger UI ("Try it out" -> body -> Execute) must show item ids, the page must
not have requested anything from a non-loopback host, and the gateway's Content-Security-Policy (its
own files plus the hash of Swagger UI's one inline script) must not have blocked anything. Needs
Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y --no-install-recommends chromium
chromium-driver``) and ``selenium``; skipped when they are absent, failed when ``.ci/run`` installed
them (``MINDSTREAM_REQUIRE_TOOLS`` names ``chromium``). A screenshot is left at ``/tmp/docs.png``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from tests.fixtures_milvus import free_port
from tests.workers.gateway.browser import By, Keys, WebDriverWait, chromium, ec, local, requested_urls
from tests.workers.model_fixtures import exact_recall, publish_tiny
from workers.gateway.app import create_app
from workers.infra.vector_store import VectorStore
from workers.recall.engine import RecallEngine
from workers.recall.live_model import LiveModel
from workers.refresh.registry import ModelRegistry
from workers.settings import MilvusSettings, Settings

pytestmark = pytest.mark.integration
SCREENSHOT = Path("/tmp/docs.png")
HISTORIES = [[3, 17, 42], [7, 8]]
OPERATION = "#operations-default-recall_items_rec_recall_post"
LIVE_RESPONSE = f"{OPERATION} .live-responses-table tr.response"


@pytest.fixture(scope="module")
def served(milvus_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """``(base_url, net)``: the gateway on a free loopback port with a tiny live model."""
    alias = f"gwdocs_{uuid.uuid4().hex[:8]}"
    milvus = MilvusSettings(uri=milvus_uri, alias=alias, index_type="FLAT")
    settings = Settings(state_dir=tmp_path_factory.mktemp("gwdocs"), milvus=milvus)
    store = VectorStore(milvus_uri, settings.milvus)
    _, net = publish_tiny(store, settings.models_dir, alias, 200, seed=3)
    live = LiveModel(store, ModelRegistry(settings.models_dir, alias))
    app = create_app(settings, store=store, engine=RecallEngine(live, store), registry=CollectorRegistry())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}", net
    finally:
        server.should_exit = True
        thread.join(10)
        store.drop_alias(alias)
        for name in store.list_collections(alias):
            store.drop_collection(name)
        store.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("chromium"), {"performance": "ALL", "browser": "ALL"}) as driver:
        yield driver


def test_docs_render_offline_and_recall_through_swagger_ui(served: tuple[str, Any], browser: Any) -> None:
    base, net = served
    wait = WebDriverWait(browser, 20)
    browser.get(f"{base}/docs")
    operation = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, OPERATION)))
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, f"{OPERATION} .try-out__btn"))).click()
    body = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f"{OPERATION} textarea.body-param__text")))
    body.send_keys(Keys.CONTROL, "a")
    body.send_keys(Keys.DELETE)
    body.send_keys(json.dumps({"top_k": 5, "hist_item": HISTORIES}))
    browser.find_element(By.CSS_SELECTOR, f"{OPERATION} button.execute").click()
    shown_at = (By.CSS_SELECTOR, f"{LIVE_RESPONSE} .response-col_description pre")
    shown = wait.until(ec.presence_of_element_located(shown_at))
    wait.until(lambda _: '"items"' in shown.text)
    status = browser.find_element(By.CSS_SELECTOR, f"{LIVE_RESPONSE} .response-col_status")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", shown)
    browser.save_screenshot(str(SCREENSHOT))
    assert status.text.strip() == "200"
    reply = json.loads(shown.text)
    assert reply["items"] == exact_recall(net, HISTORIES, 5)
    assert reply["model_version"] == "v1"
    urls = requested_urls(browser)
    assert any(u.endswith("/static/docs/swagger-ui-bundle.js") for u in urls)
    assert any(u.endswith("/rec/recall") for u in urls)
    assert [u for u in urls if not local(u)] == []
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors  # a Content-Security-Policy violation is one
