"""``kill -9`` of the recall worker at seeded random points under request load: replies keep coming
after every restart, a request sent while the worker is down is answered after the restart (within
the client timeout) or times out cleanly, and no reply is ever wrong (exact FLAT top-k of v1)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pytest

from schemas.messages import ErrorReply, RecallReply, RecallRequest
from tests.faults.conftest import Names, Worker, kill_points, publish_live, save_v1, wait_until, worker_env
from tests.workers.model_fixtures import exact_recall
from workers.infra.kafka import ensure_topics
from workers.infra.vector_store import VectorStore
from workers.recall.client import RecallClient
from workers.refresh.registry import ModelRegistry
from workers.settings import KafkaSettings, MilvusSettings, RecallSettings

pytestmark = [pytest.mark.integration, pytest.mark.fault]

ITEMS = 60
HISTORIES = [[1, 2, 3, 4], [11, 12, 13], [30, 31, 32, 33, 34, 35, 36]]
TOP_K = 10
CLIENT_TIMEOUT_S = 20.0
KILLS = kill_points(seed=23, n=5, low=0.1, high=1.5)


@dataclass
class Sent:
    at: float
    future: Future[RecallReply | ErrorReply]
    outage: bool = False


def test_recall_kill_9_five_times_replies_resume_and_none_is_wrong(
    kafka_bootstrap: str, milvus_uri: str, tmp_path: Path, workers: list[Worker]
) -> None:
    names = Names()
    state = tmp_path / "state"
    env = worker_env(state, names, bootstrap=kafka_bootstrap, milvus_uri=milvus_uri)
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        requests_topic=env["MINDSTREAM_KAFKA__REQUESTS_TOPIC"],
        replies_topic=env["MINDSTREAM_KAFKA__REPLIES_TOPIC"],
    )
    ensure_topics(kafka.client_config(), [kafka.requests_topic, kafka.replies_topic])
    registry = ModelRegistry(state / "models", names.alias)
    _, net = save_v1(registry.root, ITEMS, seed=3)
    expected = exact_recall(net, HISTORIES, TOP_K)
    with VectorStore(milvus_uri, MilvusSettings(index_type="FLAT")) as store:
        collection = publish_live(store, registry, net, "v1")

    worker = Worker.cli("recall", env, tmp_path / "recall.log")
    workers.append(worker)
    sent: list[Sent] = []
    lock = threading.Lock()
    loading = threading.Event()
    loading.set()
    request = RecallRequest(hist_item=HISTORIES, top_k=TOP_K)

    with RecallClient(kafka, RecallSettings(client_timeout_s=CLIENT_TIMEOUT_S)) as client:

        def send(outage: bool = False) -> Sent:
            entry = Sent(time.monotonic(), client.request(request), outage)
            with lock:
                sent.append(entry)
            return entry

        def load() -> None:
            while loading.is_set():
                send()
                time.sleep(0.05)

        def answered_since(t: float) -> bool:
            with lock:
                recent = [s for s in sent if s.at >= t]
            return any(s.future.done() and s.future.exception() is None for s in recent)

        loader = threading.Thread(target=load, daemon=True)
        outages: list[Sent] = []
        try:
            worker.start()
            loader.start()
            for delay in KILLS:
                started = time.monotonic()
                wait_until(lambda s=started: answered_since(s), 60, f"replies after start {worker.starts}")
                time.sleep(delay)  # the kill lands mid-stream of requests, at a seeded point
                worker.assert_alive()
                worker.kill9()
                outages.append(send(outage=True))  # nobody is listening right now
                time.sleep(0.2)
                worker.start()
            started = time.monotonic()
            wait_until(lambda: answered_since(started), 60, "replies after the last restart")
        finally:
            loading.clear()
            loader.join(10)
        assert worker.stop() == 0, worker.tail()

        with lock:
            entries = list(sent)
        answered, timed_out = 0, 0
        for entry in entries:
            try:
                reply = entry.future.result(CLIENT_TIMEOUT_S + 5)
            except TimeoutError:  # the client deadline (concurrent.futures raises the same class)
                timed_out += 1
                continue
            assert isinstance(reply, RecallReply), f"error reply: {reply}"
            assert (reply.model_version, reply.collection) == ("v1", collection)
            assert reply.items == expected, "a wrong answer"
            answered += 1
        # every outage request was answered after the restart (restart << client timeout)
        assert all(o.future.exception() is None for o in outages), [o.future.exception() for o in outages]
        assert answered > 5 * len(KILLS) and answered + timed_out == len(entries)
        assert client.pending() == 0
    assert worker.starts == len(KILLS) + 1
