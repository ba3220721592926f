"""``/ui`` in headless Chromium against a real uvicorn gateway with a live model (the embedded Milvus).

The page renders without console errors (so without a Content-Security-Policy violation: the
gateway's policy allows the page's own files only) and without a request off the machine; the live
version it shows is the alias's; the explorer's list for a history equals ``POST /rec/recall``'s reply
for the same history (typed items, and a user id: refused until the read token is typed into the
page, then answered); the admin buttons are refused without the token and work
with it (refresh sets the trigger, rollback moves the alias and the page follows); a screenshot is
taken and is not blank (``/tmp/ui.png``). Needs Debian's ``chromium`` and ``chromium-driver`` and
``selenium``, as ``test_docs.py``.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from tests.fixtures_milvus import free_port
from tests.workers.gateway.browser import By, WebDriverWait, chromium, local, requested_urls
from tests.workers.model_fixtures import publish_tiny
from workers.gateway.app import create_app
from workers.infra.vector_store import VectorStore
from workers.recall.engine import RecallEngine
from workers.recall.live_model import LiveModel
from workers.refresh.registry import ModelRegistry
from workers.refresh.state import RefreshState, Superseded
from workers.refresh.worker import REFRESH_REQUEST
from workers.settings import HttpSettings, MilvusSettings, Settings

pytestmark = pytest.mark.integration
SCREENSHOT = Path("/tmp/ui.png")
TOKEN = "ui-browser-token"
READ_TOKEN = "ui-browser-read-token"
USERS = {11: [3, 17, 42, 8]}


class History:
    def history(self, user_id: int, maxlen: int) -> list[int]:
        return USERS.get(user_id, [])[-maxlen:]


@dataclass
class Served:
    base: str
    store: VectorStore
    alias: str
    settings: Settings


@pytest.fixture(scope="module")
def served(milvus_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The gateway on a free loopback port; v1 and v2 published, v2 live, v1 kept for rollback."""
    alias = f"gwui_{uuid.uuid4().hex[:8]}"
    settings = Settings(
        state_dir=tmp_path_factory.mktemp("gwui"),
        milvus=MilvusSettings(uri=milvus_uri, alias=alias, index_type="FLAT"),
        http=HttpSettings(admin_token=SecretStr(TOKEN), read_token=SecretStr(READ_TOKEN), ui_sample_s=1.0),
    )
    store = VectorStore(milvus_uri, settings.milvus)
    publish_tiny(store, settings.models_dir, alias, 200, seed=3)
    publish_tiny(store, settings.models_dir, alias, 200, seed=4)
    RefreshState(superseded=[Superseded(f"{alias}_v1", time.time())]).save(RefreshState.file(settings.refresh_dir))
    live = LiveModel(store, ModelRegistry(settings.models_dir, alias), check_every_s=0.1)
    app = create_app(settings, store=store, engine=RecallEngine(live, store, History()), registry=CollectorRegistry())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield Served(f"http://127.0.0.1:{port}", store, alias, settings)
    finally:
        server.should_exit = True
        thread.join(10)
        store.drop_alias(alias)
        for name in store.list_collections(alias):
            store.drop_collection(name)
        store.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("chromium-ui"), {"performance": "ALL", "browser": "ALL"}) as driver:
        yield driver


def _post(url: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        out: dict[str, Any] = json.loads(response.read())
        return out


def _alias_version(s: Served) -> str:
    collection = s.store.resolve_alias(s.alias)
    assert collection is not None
    return collection.rsplit("_", 1)[1]


def _refresh_request(s: Served) -> str | None:
    collection = s.store.resolve_alias(s.alias)
    assert collection is not None
    return s.store.properties(collection).get(REFRESH_REQUEST)


def _shown_ids(driver: Any) -> list[int]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#groups li[data-rank]")
    ranked = sorted(rows, key=lambda r: int(r.get_attribute("data-rank")))
    return [int(r.get_attribute("data-item")) for r in ranked]


def _console_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_ui_now_explore_admin(served: Served, browser: Any) -> None:
    wait = WebDriverWait(browser, 20)
    browser.get(f"{served.base}/ui")
    wait.until(lambda d: d.find_element(By.ID, "live-version").text not in ("-", ""))
    assert browser.find_element(By.ID, "live-version").text == _alias_version(served) == "v2"
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#charts .chart svg")) >= 8)
    timing = browser.execute_script("const n = performance.getEntriesByType('navigation')[0]; return n.toJSON();")
    print(f"/ui load: {timing['loadEventEnd']:.0f} ms to the load event")

    # Explore: typed items (by id), then a user id, each against /rec/recall for the same history
    browser.find_element(By.ID, "tab-explore").click()
    top_k = int(browser.find_element(By.ID, "top-k").get_attribute("value"))
    box = browser.find_element(By.ID, "item-query")
    box.send_keys("3, 17, 42")
    browser.find_element(By.ID, "items-go").click()
    wait.until(lambda d: d.find_element(By.ID, "rec-ids").text != "")
    reply = _post(f"{served.base}/rec/recall", {"hist_item": [[3, 17, 42]], "top_k": top_k})
    assert _shown_ids(browser) == reply["items"][0]
    assert [int(x) for x in browser.find_element(By.ID, "rec-ids").text.split(", ")] == reply["items"][0]
    answered = browser.find_element(By.ID, "answered-by").text
    assert f"model {reply['model_version']}, generation {reply['generation']}" in answered
    history = browser.find_elements(By.CSS_SELECTOR, "#history li")
    assert history[0].text.split(" #")[0] == "Four Rooms"  # ML-100K's item 3, by title
    assert len(browser.find_elements(By.CSS_SELECTOR, "#groups .group")) == 2  # K = 2: grouped per interest

    box.clear()
    browser.find_element(By.ID, "items-clear").click()
    browser.find_element(By.ID, "user-id").send_keys("11")
    browser.find_element(By.ID, "user-go").click()  # no token yet: a user's history is refused
    wait.until(lambda d: "HTTP 401" in d.find_element(By.ID, "explore-message").text)
    assert browser.find_element(By.ID, "explore-result").get_attribute("hidden") is not None
    browser.find_element(By.ID, "read-token").send_keys(READ_TOKEN)
    browser.find_element(By.ID, "read-token-save").click()
    assert browser.execute_script("return sessionStorage.getItem('mindstream-read-token')") == READ_TOKEN
    assert browser.execute_script("return localStorage.length") == 0  # the tab's session only
    browser.find_element(By.ID, "user-go").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history li")) == len(USERS[11]))
    by_user = _post(f"{served.base}/rec/recall", {"user_ids": [11], "top_k": top_k}, READ_TOKEN)
    wait.until(lambda d: _shown_ids(d) == by_user["items"][0])

    errors = _console_errors(browser)
    assert [e for e in errors if not _refused_call(e)] == []  # rendered, polled and explored without an error
    assert not any("Content Security Policy" in str(e["message"]) for e in errors)

    # Admin: refused without the token, done with it
    browser.find_element(By.ID, "tab-admin").click()
    result = browser.find_element(By.ID, "admin-result")
    browser.find_element(By.ID, "admin-rollback").click()
    wait.until(lambda d: result.get_attribute("data-status") == "401")
    assert "refused (HTTP 401)" in result.text and _alias_version(served) == "v2"
    browser.find_element(By.ID, "token").send_keys("wrong")
    browser.find_element(By.ID, "token-save").click()
    browser.find_element(By.ID, "admin-refresh").click()
    wait.until(lambda d: result.get_attribute("data-status") == "403")
    assert _refresh_request(served) is None
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "token-save").click()
    browser.find_element(By.ID, "admin-refresh").click()
    wait.until(lambda d: result.get_attribute("data-status") == "200")
    assert _refresh_request(served) is not None
    browser.execute_script("arguments[0].removeAttribute('data-status')", result)
    browser.find_element(By.ID, "admin-rollback").click()
    wait.until(lambda d: result.get_attribute("data-status") == "200")
    assert '"model_version": "v1"' in result.text and _alias_version(served) == "v1"
    browser.find_element(By.ID, "tab-now").click()
    wait.until(lambda d: d.find_element(By.ID, "live-version").text == "v1")
    wait.until(lambda d: "rollback v2" in d.find_element(By.ID, "events").text)

    browser.save_screenshot(str(SCREENSHOT))
    assert _not_blank(SCREENSHOT)
    refused = [e for e in _console_errors(browser) if not _refused_call(e)]
    assert refused == []  # the only "errors": the browser's own notes of the two refused calls
    urls = requested_urls(browser)
    assert any(u.endswith("/ui/api/status") for u in urls) and any(u.endswith("/ui/api/explore") for u in urls)
    assert [u for u in urls if not local(u)] == []


def _refused_call(entry: dict[str, Any]) -> bool:
    """The browser's note of an admin call, or a user's explore, refused for its token."""
    message = str(entry["message"])
    return (
        entry.get("source") == "network"
        and any(f"{path} " in message for path in ("/rec/refresh", "/rec/rollback", "/ui/api/explore"))
        and any(f"status of {code}" in message for code in (401, 403))
    )


def _not_blank(path: Path) -> bool:
    """More than a handful of colours: text and charts were drawn."""
    from PIL import Image

    with Image.open(path) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000) or []
    return len(colours) > 50
