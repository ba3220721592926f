"""Item ids are opaque 64-bit keys, end to end on the real broker and Milvus: clicks on 2^62+3,
10^12+7 and 2^63-1 grow the table by three rows (not to the largest id), become recallable after one
refresh (each is among a top 10 of 43 items, every reply exactly the brute-force answer of v2), and
come back with their exact ids over Kafka and HTTP; no reply holds an id outside the vocabulary of
the version that answered it."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from model.checkpoint import open_checkpoint
from schemas.messages import ClickEvent
from tests.workers.model_fixtures import exact_recall_of
from tests.workers.test_streaming_e2e import Stack, stack  # noqa: F401  (the stack fixture)
from workers.gateway.app import create_app
from workers.ingest.state_reader import StateReader
from workers.recall.engine import RecallEngine
from workers.recall.live_model import LiveModel
from workers.refresh.generations import Generations
from workers.refresh.registry import ModelRegistry

pytestmark = pytest.mark.integration

SPARSE = [(1 << 62) + 3, 10**12 + 7, (1 << 63) - 1]
BASE_ITEMS = 40  # the stack's base model knows items 1..40
TOP_K = 10  # of 43 items


def _clicks(first_user: int, users: int, rng: np.random.Generator) -> list[ClickEvent]:
    """Users of cluster 0 (items 1..10) who also click the sparse items."""
    events, ts = [], 0
    for user in range(first_user, first_user + users):
        for _ in range(12):
            ts += 1
            item = int(rng.choice(SPARSE)) if rng.random() < 0.5 else int(rng.integers(1, 11))
            events.append(ClickEvent(event_id=f"s-{user}-{ts}", user_id=user, item_id=item, ts=ts))
    return events


def test_sparse_64_bit_ids_end_to_end(stack: Stack) -> None:  # noqa: F811
    alias = stack.settings.milvus.alias
    epoch = f"{alias}_v1"  # v2 is a delta into it
    stack.wait_for_live("v1")
    stack.produce(_clicks(5000, 30, np.random.default_rng(3)))
    stack.wait_for_live("v2")

    v2 = open_checkpoint(stack.settings.models_dir, "v2")
    vocab = v2.vocab()
    assert v2.manifest.item_count == BASE_ITEMS + len(SPARSE) + 1  # distinct items + padding, not 2^63
    assert vocab.rows(SPARSE).min() > BASE_ITEMS  # appended after the learnt rows
    announced = Generations.load(stack.store, epoch).generation
    assert stack.store.count(epoch, generation=announced) == BASE_ITEMS + len(SPARSE)
    known = set(vocab.ids[1:].tolist())

    # A quarter of the catalogue per reply: a sparse id in it was ranked there by v2 (exactly as the brute
    # force over v2's own table ranks it), not let in by a top_k that returns every item.
    history = [1, 2, SPARSE[0], SPARSE[1]]
    deadline = time.monotonic() + 15
    reply = stack.client.recall(hist_item=[history], top_k=TOP_K)
    while reply.model_version != "v2" and time.monotonic() < deadline:
        time.sleep(0.2)
        reply = stack.client.recall(hist_item=[history], top_k=TOP_K)
    assert reply.model_version == "v2"
    assert reply.items == exact_recall_of(v2, [history], TOP_K)  # exact 64-bit ids over Kafka
    assert set(SPARSE) & set(reply.items[0]), f"v2 recalls no sparse id for {history}: {reply.items}"
    with StateReader(stack.settings.state_dir, stack.settings.kafka.clicks_topic) as reader:
        streamed = reader.history(5000, stack.settings.mind.maxlen)  # what recall reads for the user
    assert set(SPARSE) & set(streamed)
    by_user = stack.client.recall(user_ids=[5000], top_k=TOP_K)
    assert by_user.model_version == "v2" and by_user.items == exact_recall_of(v2, [streamed], TOP_K)
    recalled = set(reply.items[0]) | set(by_user.items[0])

    live = LiveModel(stack.store, ModelRegistry(stack.settings.models_dir, alias), check_every_s=0.1)
    app = create_app(
        stack.settings, store=stack.store, engine=RecallEngine(live, stack.store, None), registry=CollectorRegistry()
    )
    with TestClient(app, base_url="http://127.0.0.1:8000") as http:  # a Host the gateway answers
        over_http = [SPARSE[2], SPARSE[2], 3]
        r = http.post("/rec/recall", json={"top_k": TOP_K, "hist_item": [over_http]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == "v2"
        assert body["items"] == exact_recall_of(v2, [over_http], TOP_K)  # exact ids through JSON too
        recalled |= set(body["items"][0])
        # the seed's example: ids the version may not know are ignored, the request still answers
        seed = http.post("/rec/recall", json={"top_k": 10, "hist_item": [[43, 23, 65], [675, 3456]]})
        assert seed.status_code == 200, seed.text
        items = seed.json()["items"]
        assert len(items) == 2 and set(items[0]) <= known and 0 < len(items[0]) <= 10
        assert items[1] == []  # no id of that history is known: no personalised answer
    assert recalled <= known, "a reply holds an id outside v2's vocabulary"
    assert set(SPARSE) <= recalled, f"never recalled: {set(SPARSE) - recalled}"
