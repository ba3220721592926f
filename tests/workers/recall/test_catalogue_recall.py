"""Issue 32 end to end on the real embedded broker and the real embedded Milvus.

Item events go through the items topic and the catalogue worker into the catalogue state; the rows
of the served collection take their metadata from it; the recall worker (Kafka, built by
``build_worker``) and the gateway (HTTP, ``create_app``) follow the state (``follow_serving_state``).
Checked against exact numpy search with the same predicate (:meth:`RecallFilters.admits`) and against
a plain model of the click stream:

* every filter returns only matching items, and ``top_k`` of them when enough exist;
* ``exclude_seen`` never returns a history item (``hist_item``: the given sequence; ``user_ids``: the
  streamed history) and still fills ``top_k``;
* an item made unavailable disappears from both paths within seconds (``hist_item`` and ``user_ids``,
  with and without ``diversity``, and from the fallback), is never returned afterwards, and comes back
  once available again; with the withdrawn items inside the search and left out after it;
* the fallback answers an unknown user with the window's most clicked available items;
* old-format requests get old-format replies.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, SecretStr

from model.export import UserTower, item_table
from model.metrics import merge_interests
from model.net import MindNet
from schemas.codec import encode
from schemas.headers import CORRELATION_ID, REPLY_TO, get_header
from schemas.messages import ClickEvent, ItemEvent, RecallFilters, RecallReply, RecallRequest
from tests.waiting import wait_until
from tests.workers.model_fixtures import TINY, publish_tiny
from workers.catalogue.metrics import CatalogueMetrics
from workers.catalogue.reader import CatalogueReader
from workers.catalogue.row_metadata import CatalogueMetadata
from workers.catalogue.worker import CatalogueWorker
from workers.gateway.app import create_app
from workers.gateway.catalogue import Catalogue, StreamedItems
from workers.infra.kafka import close_producer, ensure_topics, make_producer
from workers.infra.topics import items_topics
from workers.infra.vector_store import VectorStore
from workers.ingest.state_reader import StateReader
from workers.ingest.state_store import PartitionStore
from workers.recall.budget import Budget
from workers.recall.client import RecallClient
from workers.recall.engine import RecallEngine
from workers.recall.item_filters import Filtering
from workers.recall.live_model import LiveModel
from workers.recall.metrics import RecallMetrics
from workers.recall.serving_state import ServingState, follow_serving_state
from workers.recall.worker import build_worker
from workers.refresh.registry import ModelRegistry
from workers.runtime import StopFlag
from workers.settings import (
    CatalogueSettings,
    DataSettings,
    HttpSettings,
    KafkaSettings,
    MilvusSettings,
    RecallSettings,
    Settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ITEMS = 300  # ids 1..299 in the collection
ANNOUNCED = 280  # 1..280 announced on the items topic; 281..299 exist through clicks only
TOP_K = 10
HALF_LIFE_S = 60.0
READ_TOKEN = "catalogue-read-token"
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
HISTORY = [3, 17, 42]
HISTORIES = [HISTORY, [100, 101, 102, 103, 104, 105, 106], [7]]
STREAMED = {1: [3, 17, 42], 2: [100, 101, 102, 103, 104, 105, 106]}  # user -> clicks in the ingest state
UNKNOWN_USER = 999_999
# The stream's popular items: (item, clicks one half-life before the newest, clicks at the newest). Decayed:
# 290 (never announced) 9 + 0 -> 4.5; 50: 2 + 10 -> 11; 5: 16 + 0 -> 8; ... distinct, exact in float64.
POPULAR = [(50, 2, 10), (5, 16, 0), (9, 0, 9), (77, 6, 5), (120, 4, 6), (33, 0, 7), (64, 10, 1), (201, 2, 5)]
POPULAR += [(150, 0, 5), (11, 8, 0), (12, 0, 3), (290, 9, 0), (14, 2, 2), (35, 0, 2), (21, 2, 1), (28, 0, 1)]
OLD_REPLY_KEYS = {"schema_version", "items", "scores", "model_version", "generation", "collection", "took_ms"}


def segment_of(item: int) -> str | None:
    return ("eu", "us", None)[item % 3] if item <= ANNOUNCED else None


def categories_of(item: int) -> tuple[str, ...]:
    if item > ANNOUNCED:
        return ()
    cats = ["odd" if item % 2 else "even"]
    if item % 5 == 0:
        cats.append("x")
    if item % 7 == 0:
        cats.append("Sci-Fi & Fantasy")  # spaces and '&' go into the expression as they are
    return tuple(cats)


class OldReply(BaseModel):
    """A reply as a strict client of the release before issue 32 reads it (no ``source``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    schema_version: int
    items: list[list[int]]
    scores: list[list[float]]
    model_version: str
    generation: int
    collection: str
    took_ms: float


@dataclass
class Env:
    settings: Settings
    net: MindNet
    items: Producer
    client: RecallClient
    http: TestClient
    state: ServingState
    engine: RecallEngine  # the gateway's
    post: RecallEngine  # withdrawn items left out after the search (recall.unavailable_in_search = 0)
    withdrawn: set[int]

    def announce(self, item: int, available: bool) -> None:
        """An item event on the items topic (newer than every earlier one)."""
        event = ItemEvent(
            item_id=item,
            ts=int(time.time() * 1000),
            available=available,
            title=f"Item {item}",
            categories=list(categories_of(item)) or None,
            segment=segment_of(item),
        )
        self.items.produce(self.settings.kafka.items_topic, key=event.kafka_key(), value=encode(event))
        self.items.flush(10)
        (self.withdrawn.discard if available else self.withdrawn.add)(item)

    def admits(self, filters: RecallFilters | None = None, exclude: set[int] | None = None) -> Callable[[int], bool]:
        """The reference predicate: available, ``filters.admits`` on the announced metadata, not excluded."""

        def admitted(item: int) -> bool:
            if item in self.withdrawn or (exclude is not None and item in exclude):
                return False
            return filters is None or filters.admits(segment_of(item), categories_of(item), item)

        return admitted

    def exact(self, histories: list[list[int]], top_k: int, admits: Callable[[int], bool]) -> list[list[int]]:
        """Brute-force search of every interest over the admitted items + the reference merge."""
        ids = np.array([i for i in range(1, ITEMS) if admits(i)], dtype=np.int64)
        interests = UserTower(self.net, "x").interests(histories)
        scores = interests @ item_table(self.net)[ids].T
        order = np.argsort(-scores, axis=2, kind="stable")[:, :, :top_k]
        merged = merge_interests(ids[order], np.take_along_axis(scores, order, axis=2), top_k)
        return [m.tolist() for m in merged]

    def popular(self, top_k: int, admits: Callable[[int], bool]) -> list[int]:
        """The plain model of the stream: decayed click counts (exact powers of two), ties by id."""
        counts = {item: old * 0.5 + new for item, old, new in POPULAR}
        for history in STREAMED.values():
            for item in history:
                counts[item] = counts.get(item, 0.0) + 1.0
        ranked = sorted(counts, key=lambda item: (-counts[item], item))
        return [item for item in ranked if admits(item)][:top_k]

    def http_recall(self, body: dict[str, Any]) -> RecallReply:
        answer = self.http.post("/rec/recall", json=body, headers=READ if "user_ids" in body else {})
        assert answer.status_code == 200, answer.text
        return RecallReply.model_validate_json(answer.text)


def _clicks(settings: Settings, newest_ms: int) -> None:
    """The stream in the ingest state: the users' histories and the popular items' clicks."""
    events: list[ClickEvent] = []
    for user, history in STREAMED.items():
        events += [
            ClickEvent(event_id=f"h{user}-{n}", user_id=user, item_id=i, ts=newest_ms) for n, i in enumerate(history)
        ]
    old_ms = newest_ms - int(HALF_LIFE_S * 1000)
    for item, old, new in POPULAR:
        events += [ClickEvent(event_id=f"o{item}-{n}", user_id=500 + n, item_id=item, ts=old_ms) for n in range(old)]
        events += [ClickEvent(event_id=f"n{item}-{n}", user_id=600 + n, item_id=item, ts=newest_ms) for n in range(new)]
    part = PartitionStore.open(settings.state_dir, settings.kafka.clicks_topic, 0)
    part.apply(events, settings.kafka.clicks_topic, 0, last_offset=len(events) - 1)
    part.close()


def _run(target: Callable[[StopFlag], None], stop: StopFlag) -> threading.Thread:
    thread = threading.Thread(target=target, args=(stop,), daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def env(kafka_bootstrap: str, milvus_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tag = uuid.uuid4().hex[:8]
    state_dir: Path = tmp_path_factory.mktemp("catalogue-recall")
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        clicks_topic=f"clicks-{tag}",
        requests_topic=f"req-{tag}",
        replies_topic=f"rep-{tag}",
        recall_group=f"recall-{tag}",
        items_topic=f"items-{tag}",
        items_dlq_topic=f"items-{tag}.dlq",
        catalogue_group=f"catalogue-{tag}",
    )
    settings = Settings(
        state_dir=state_dir,
        data=DataSettings(dataset="synthetic"),
        kafka=kafka,
        milvus=MilvusSettings(uri=milvus_uri, alias=f"cat_{tag}", index_type="FLAT"),
        catalogue=CatalogueSettings(batch_size=500, batch_timeout_s=0.1, poll_s=0.1, stats_interval_ms=0),
        recall=RecallSettings(
            alias_check_s=0.3,
            max_wait_ms=2.0,
            client_timeout_s=10.0,
            popular_half_life_s=HALF_LIFE_S,
            popular_refresh_s=0.1,
        ),
        http=HttpSettings(read_token=SecretStr(READ_TOKEN)),
    )
    conf = kafka.client_config()
    ensure_topics(conf, [*items_topics(kafka), kafka.requests_topic, kafka.replies_topic])
    stop = StopFlag()
    threads: list[threading.Thread] = []
    with contextlib.ExitStack() as stack:
        catalogue = CatalogueWorker(
            conf,
            topic=kafka.items_topic,
            dlq_topic=kafka.items_dlq_topic,
            group_id=kafka.catalogue_group,
            session_timeout_ms=6000,
            state_dir=state_dir,
            metrics=CatalogueMetrics(CollectorRegistry()),
            settings=settings.catalogue,
        )
        threads.append(_run(catalogue.run, stop))
        newest_ms = int(time.time() * 1000) - 5000
        _clicks(settings, newest_ms)
        producer = make_producer(conf)
        stack.callback(close_producer, producer, 5.0)
        for item in range(1, ANNOUNCED + 1):
            event = ItemEvent(
                item_id=item,
                ts=newest_ms,
                available=True,
                title=f"Item {item}",
                categories=list(categories_of(item)),
                segment=segment_of(item),
            )
            producer.produce(kafka.items_topic, key=event.kafka_key(), value=encode(event))
        producer.flush(10)
        reader = stack.enter_context(CatalogueReader(state_dir, kafka.items_topic))
        wait_until(lambda: reader.counts()[0] == ANNOUNCED, 60, "the catalogue worker to apply the announcements")

        # the served collection: its rows written with the catalogue's metadata
        metadata = CatalogueMetadata.open(settings)
        stack.callback(metadata.close)
        writer = stack.enter_context(VectorStore(milvus_uri, settings.milvus, metadata=metadata))
        _, net = publish_tiny(writer, settings.models_dir, settings.milvus.alias, ITEMS, seed=1)

        # the recall worker (Kafka) and the gateway (HTTP), following the catalogue and the stream
        state = follow_serving_state(settings, stack)
        clicked = len(POPULAR) + sum(len(h) for h in STREAMED.values())
        wait_until(lambda: len(state.popular) == clicked, 30, "the popular counts to read the stream")
        store = stack.enter_context(VectorStore(milvus_uri, settings.milvus, serving=True))
        history = stack.enter_context(StateReader(state_dir, kafka.clicks_topic))
        metrics = RecallMetrics(CollectorRegistry())
        worker = build_worker(settings, conf, store, history, metrics, view=state.view, popular=state.popular)
        threads.append(_run(worker.run, stop))
        client = stack.enter_context(RecallClient(kafka, settings.recall))

        def engine(filtering: Filtering) -> RecallEngine:
            live = LiveModel(store, ModelRegistry(settings.models_dir, settings.milvus.alias), check_every_s=0.3)
            stack.callback(live.close)
            return RecallEngine(
                live,
                store,
                stack.enter_context(StateReader(state_dir, kafka.clicks_topic)),
                budget=Budget.from_settings(settings.recall),
                view=state.view,
                popular=state.popular,
                filtering=filtering,
            )

        gateway = engine(Filtering.from_settings(settings.recall))
        page_reader = stack.enter_context(CatalogueReader(state_dir, kafka.items_topic))
        page = Catalogue().with_stream(StreamedItems(state.view, page_reader))
        app = create_app(settings, store=store, engine=gateway, registry=CollectorRegistry(), catalogue=page)
        http = stack.enter_context(TestClient(app, base_url="http://localhost:8000"))
        post = engine(Filtering(unavailable_in_search=0, post_filter_overfetch=60))
        try:
            yield Env(settings, net, producer, client, http, state, gateway, post, set())
        finally:
            stop.set()
            for thread in threads:
                thread.join(20)
    assert not any(thread.is_alive() for thread in threads)


# ------------------------------------------------------------------ filters


FILTERS = {
    "include-segment": RecallFilters(include_segments=["eu"]),
    "no-named-segment": RecallFilters(exclude_segments=["eu", "us"]),  # items without a segment pass
    "include-category": RecallFilters(include_categories=["x"]),
    "exclude-category": RecallFilters(exclude_categories=["odd"]),
    "fewer-than-top-k": RecallFilters(  # odd multiples of 7 in segment us: 7 items
        include_segments=["us"], include_categories=["Sci-Fi & Fantasy"], exclude_categories=["even"]
    ),
    "exclude-items": RecallFilters(exclude_items=[50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60]),
    "all-at-once": RecallFilters(
        include_segments=["us", "eu"], exclude_segments=[], exclude_categories=["even"], exclude_items=[1, 4, 7]
    ),
    "nothing-matches": RecallFilters(include_categories=["no such category"]),
}


@pytest.mark.parametrize("name", list(FILTERS))
def test_every_filter_returns_only_matching_items_and_top_k_of_them(env: Env, name: str) -> None:
    filters = FILTERS[name]
    admits = env.admits(filters)
    admitted = [i for i in range(1, ITEMS) if admits(i)]
    expected = env.exact(HISTORIES, TOP_K, admits)
    kafka = env.client.recall(hist_item=HISTORIES, top_k=TOP_K, filters=filters)
    http = env.http_recall({"hist_item": HISTORIES, "top_k": TOP_K, "filters": filters.model_dump(exclude_none=True)})
    for reply in (kafka, http):
        assert reply.items == expected, name
        assert all(len(items) == min(TOP_K, len(admitted)) for items in reply.items)
        assert all(admits(i) for items in reply.items for i in items)
    if name == "fewer-than-top-k":
        assert 0 < len(admitted) < TOP_K  # every matching item, no more
    diverse = env.client.recall(hist_item=HISTORIES, top_k=TOP_K, filters=filters, diversity=0.5)
    assert all(len(items) == min(TOP_K, len(admitted)) and all(admits(i) for i in items) for items in diverse.items)


def test_filters_on_users_ids_and_in_one_batch_with_other_filters(env: Env) -> None:
    """Requests with different filters answered in one micro-batch are searched apart, each exact."""
    requests = [RecallRequest(hist_item=HISTORIES, top_k=TOP_K, filters=f) for f in FILTERS.values()]
    replies = env.engine.answer(requests)
    for (name, filters), reply in zip(FILTERS.items(), replies, strict=True):
        assert isinstance(reply, RecallReply), reply
        assert reply.items == env.exact(HISTORIES, TOP_K, env.admits(filters)), name
    filters = FILTERS["include-category"]
    streamed = env.client.recall(user_ids=list(STREAMED), top_k=TOP_K, filters=filters)
    assert streamed.items == env.exact(list(STREAMED.values()), TOP_K, env.admits(filters))


# ------------------------------------------------------------------ exclude_seen


def test_exclude_seen_never_returns_a_history_item_and_still_fills_top_k(env: Env) -> None:
    plain = env.client.recall(hist_item=[HISTORY], top_k=TOP_K).items[0]
    history = [*HISTORY, *plain[:3]]  # the history holds items the plain recall returns
    assert set(env.client.recall(hist_item=[history], top_k=TOP_K).items[0]) & set(history)
    kafka = env.client.recall(hist_item=[history, [7]], top_k=TOP_K, exclude_seen=True)
    http = env.http_recall({"hist_item": [history, [7]], "top_k": TOP_K, "exclude_seen": True})
    for reply in (kafka, http):
        assert reply.items[0] == env.exact([history], TOP_K, env.admits(exclude=set(history)))[0]
        assert reply.items[1] == env.exact([[7]], TOP_K, env.admits(exclude={7}))[0]
        assert not set(reply.items[0]) & set(history) and len(reply.items[0]) == TOP_K
    # user_ids: the streamed history recall reads (its last maxlen clicks) is left out
    read = {user: clicks[-TINY.maxlen :] for user, clicks in STREAMED.items()}
    streamed = env.client.recall(user_ids=list(read), top_k=TOP_K, exclude_seen=True)
    for user, items in zip(read, streamed.items, strict=True):
        assert not set(items) & set(read[user]) and len(items) == TOP_K
        assert items == env.exact([read[user]], TOP_K, env.admits(exclude=set(read[user])))[0]
    http = env.http_recall({"user_ids": list(read), "top_k": TOP_K, "exclude_seen": True})
    assert http.items == streamed.items
    diverse = env.client.recall(user_ids=list(read), top_k=TOP_K, exclude_seen=True, diversity=1.0)
    assert all(not set(i) & set(read[u]) and len(i) == TOP_K for u, i in zip(read, diverse.items, strict=True))
    # a large top_k: every item but the history (the catalogue allows no more)
    everything = env.client.recall(hist_item=[history], top_k=ITEMS, exclude_seen=True).items[0]
    assert sorted(everything) == sorted(set(range(1, ITEMS)) - set(history) - env.withdrawn)


# ------------------------------------------------------------------ availability


def _model_lists(env: Env, item: int) -> list[tuple[str, list[list[int]]]]:
    """Every way of asking for the lists ``item`` is at the head of: both paths, hist_item and user_ids,
    with and without diversity."""
    out: list[tuple[str, list[list[int]]]] = []
    for diversity in (None, 0.5):
        extra: dict[str, Any] = {} if diversity is None else {"diversity": diversity}
        out.append((f"kafka hist {diversity}", env.client.recall(hist_item=[HISTORY], top_k=TOP_K, **extra).items))
        out.append((f"kafka user {diversity}", env.client.recall(user_ids=[1], top_k=TOP_K, **extra).items))
        out.append((f"http hist {diversity}", env.http_recall({"hist_item": [HISTORY], "top_k": TOP_K, **extra}).items))
        out.append((f"http user {diversity}", env.http_recall({"user_ids": [1], "top_k": TOP_K, **extra}).items))
    post = env.post.answer([RecallRequest(hist_item=[HISTORY], top_k=TOP_K)])[0]
    assert isinstance(post, RecallReply)
    out.append(("left out after the search", post.items))
    return out


def _popular_lists(env: Env) -> list[tuple[str, list[int]]]:
    kafka = env.client.recall(user_ids=[UNKNOWN_USER], top_k=TOP_K, fallback="popular")
    http = env.http_recall({"user_ids": [UNKNOWN_USER], "top_k": TOP_K, "fallback": "popular"})
    return [("kafka popular", kafka.items[0]), ("http popular", http.items[0])]


def test_an_unavailable_item_disappears_from_both_paths_within_seconds_and_comes_back(env: Env) -> None:
    top = env.client.recall(hist_item=[HISTORY], top_k=TOP_K).items[0][0]
    head = env.popular(1, env.admits())[0]
    assert all(top in lists[0] for _, lists in _model_lists(env, top))
    assert all(items[0] == head for _, items in _popular_lists(env))
    withdrawn_at = time.monotonic()
    env.announce(top, available=False)
    env.announce(head, available=False)

    def gone() -> bool:
        return all(top not in lists[0] for _, lists in _model_lists(env, top)) and all(
            head not in items for _, items in _popular_lists(env)
        )

    wait_until(gone, 15, f"items {top} and {head} to disappear")
    took = time.monotonic() - withdrawn_at
    assert took < 15  # the goal is p99 <= 5 s at 100k items (measured by bench, not here)
    for _ in range(5):  # never again, on any path, and the lists are still full and exact
        for name, lists in _model_lists(env, top):
            assert top not in lists[0] and len(lists[0]) == TOP_K, name
        for name, items in _popular_lists(env):
            assert head not in items and items == env.popular(TOP_K, env.admits()), name
        assert env.client.recall(hist_item=[HISTORY], top_k=TOP_K).items == env.exact([HISTORY], TOP_K, env.admits())
        post = env.post.answer([RecallRequest(hist_item=HISTORIES, top_k=TOP_K)])[0]
        assert isinstance(post, RecallReply) and post.items == env.exact(HISTORIES, TOP_K, env.admits())

    env.announce(top, available=True)
    env.announce(head, available=True)
    wait_until(
        lambda: (
            all(top == lists[0][0] for name, lists in _model_lists(env, top) if "None" in name)
            and all(top in lists[0] for _, lists in _model_lists(env, top))  # with diversity too, as before
            and all(items[0] == head for _, items in _popular_lists(env))
        ),
        15,
        f"items {top} and {head} to come back",
    )


def test_the_page_shows_availability(env: Env) -> None:
    env.announce(4, available=False)
    try:
        wait_until(lambda: not env.state.view.is_available(4), 15, "the view to see the withdrawal")
        out = env.http.post("/ui/api/explore", json={"items": [3, 4], "top_k": 5}).json()
        assert [(i["id"], i["available"], i["title"]) for i in out["history"]] == [
            (3, True, "Item 3"),
            (4, False, "Item 4"),
        ]
        assert out["history"][0]["genres"] == list(categories_of(3))
        assert all(i["available"] for i in out["items"]) and 4 not in [i["id"] for i in out["items"]]
        unknown = env.http.post(
            "/ui/api/explore", json={"user_id": UNKNOWN_USER, "top_k": 5, "fallback": "popular"}, headers=READ
        ).json()
        assert unknown["reply"]["source"] == ["popular"] and "popular" in unknown["message"]
        assert [i["id"] for i in unknown["items"]] == env.popular(5, env.admits())
    finally:
        env.announce(4, available=True)
        wait_until(lambda: env.state.view.is_available(4), 15, "the view to see the item back")


def test_an_item_announced_before_its_first_click_is_known_but_not_recalled(env: Env) -> None:
    """Known to the catalogue (the page shows its title and genres) as soon as it is announced; recallable
    only once the model can place it: no search returns it, and as a history it is no usable history."""
    new = ITEMS + 10  # not in the collection: never clicked
    event = ItemEvent(
        item_id=new, ts=int(time.time() * 1000), available=True, title="Brand new", categories=["x"], segment="eu"
    )
    env.items.produce(env.settings.kafka.items_topic, key=event.kafka_key(), value=encode(event))
    env.items.flush(10)
    wait_until(lambda: env.state.view.get(new) is not None, 15, "the view to know the announced item")
    out = env.http.post("/ui/api/explore", json={"items": [3, new], "top_k": 5}).json()
    assert [(i["id"], i["title"], i["genres"]) for i in out["history"]][1] == (new, "Brand new", ["x"])
    matching = RecallFilters(include_segments=["eu"], include_categories=["x"])
    everything = env.client.recall(hist_item=HISTORIES, top_k=ITEMS, filters=matching)
    http = env.http_recall({"hist_item": HISTORIES, "top_k": ITEMS, "filters": matching.model_dump(exclude_none=True)})
    for reply in (everything, http):
        assert all(new not in items for items in reply.items)
        expected = env.exact(HISTORIES, ITEMS, env.admits(matching))  # every matching item but it
        assert [sorted(items) for items in reply.items] == [sorted(items) for items in expected]
    unplaced = env.client.recall(hist_item=[[new]], top_k=TOP_K, fallback="popular")
    assert unplaced.source == ["popular"] and new not in unplaced.items[0]


# ------------------------------------------------------------------ the fallback


def test_the_fallback_answers_an_unknown_user_with_the_windows_most_clicked_available_items(env: Env) -> None:
    reply = env.client.recall(user_ids=[UNKNOWN_USER, 1], top_k=TOP_K, fallback="popular")
    assert reply.source == ["popular", "model"]
    assert reply.items[0] == env.popular(TOP_K, env.admits())
    assert reply.items[1] == env.exact([STREAMED[1]], TOP_K, env.admits())[0]
    assert reply.scores[0] == sorted(reply.scores[0], reverse=True) and reply.scores[0][0] > 0
    # a history of items the model does not know is no usable history either
    unknown_items = env.client.recall(hist_item=[[10**12]], top_k=TOP_K, fallback="popular")
    assert unknown_items.source == ["popular"] and unknown_items.items[0] == reply.items[0]
    # filters and exclusions hold on the fallback too
    filters = RecallFilters(exclude_segments=["us"], exclude_items=[50])
    filtered = env.client.recall(user_ids=[UNKNOWN_USER], top_k=TOP_K, fallback="popular", filters=filters)
    assert filtered.items[0] == env.popular(TOP_K, env.admits(filters)) and 50 not in filtered.items[0]
    http = env.http_recall({"user_ids": [UNKNOWN_USER], "top_k": 3, "fallback": "popular"})
    assert http.source == ["popular"] and http.items == [env.popular(3, env.admits())]
    # without the field: an empty list and no source, as before
    before = env.client.recall(user_ids=[UNKNOWN_USER], top_k=TOP_K)
    assert before.items == [[]] and before.source is None


# ------------------------------------------------------------------ old callers


def _raw_roundtrip(env: Env, body: bytes) -> dict[str, Any]:
    kafka = env.settings.kafka
    consumer = Consumer({**kafka.client_config(), "group.id": f"raw-{uuid.uuid4().hex}"})
    end = consumer.get_watermark_offsets(TopicPartition(kafka.replies_topic, 0), timeout=10)[1]
    consumer.assign([TopicPartition(kafka.replies_topic, 0, end)])
    cid = uuid.uuid4().hex
    producer = make_producer(kafka.client_config())
    producer.produce(kafka.requests_topic, value=body, headers=[(CORRELATION_ID, cid), (REPLY_TO, kafka.replies_topic)])
    producer.flush(10)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for msg in consumer.consume(10, 0.2):
                if msg.error() is None and get_header(msg.headers(), CORRELATION_ID) == cid:
                    parsed: dict[str, Any] = json.loads(msg.value() or b"")
                    return parsed
        raise AssertionError("no reply")
    finally:
        consumer.close()


def test_old_format_requests_get_old_format_replies(env: Env) -> None:
    expected = env.exact([HISTORY], 5, env.admits())
    for body in (
        b'{"hist_item": [[3, 17, 42]], "top_k": 5}',
        b'{"schema_version": 1, "hist_item": [[3, 17, 42]], "top_k": 5}',
    ):
        raw = _raw_roundtrip(env, body)
        assert set(raw) == OLD_REPLY_KEYS and raw["items"] == expected
        OldReply.model_validate(raw)  # what a strict client of the previous release accepts
    http = env.http.post("/rec/recall", json={"hist_item": [HISTORY], "top_k": 5})
    assert http.status_code == 200 and set(http.json()) == OLD_REPLY_KEYS and http.json()["items"] == expected
    # a new client that uses no new field sends no new field
    sent = json.loads(encode(RecallRequest(hist_item=[HISTORY], top_k=5)))
    assert not {"exclude_seen", "filters", "fallback"} & set(sent)
