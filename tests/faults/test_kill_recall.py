"""``kill -9`` of the recall worker at seeded random points under request load. The promise: every
request, sent while the worker was up or while it was down, is answered once the worker is back,
within the client timeout (a restart takes a few seconds, the timeout is 20 s): a request consumed
but not answered before a kill is redelivered, because offsets are stored only after the reply. No
request is lost, none times out, and every reply is the exact FLAT top-k of v1."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pytest

from schemas.messages import ErrorReply, RecallReply, RecallRequest
from tests.background import Background
from tests.faults.conftest import Names, Worker, kill_points, publish_live, save_v1, wait_until, worker_env
from tests.workers.model_fixtures import exact_recall
from workers.infra.kafka import ensure_topics
from workers.infra.vector_store import VectorStore
from workers.recall.client import RecallClient
from workers.refresh.registry import ModelRegistry
from workers.settings import KafkaSettings, MilvusSettings, RecallSettings

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]

ITEMS = 60
HISTORIES = [[1, 2, 3, 4], [11, 12, 13], [30, 31, 32, 33, 34, 35, 36]]
TOP_K = 10
CLIENT_TIMEOUT_S = 20.0
KILLS = kill_points(seed=23, n=5, low=0.1, high=1.5)


@dataclass
class Sent:
    at: float
    future: Future[RecallReply | ErrorReply]
    outage: bool = False  # sent right after a kill, while no worker was running


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
    loading = True
    request = RecallRequest(hist_item=HISTORIES, top_k=TOP_K)

    with RecallClient(kafka, RecallSettings(client_timeout_s=CLIENT_TIMEOUT_S)) as client:

        def send(outage: bool = False) -> Sent:
            entry = Sent(time.monotonic(), client.request(request), outage)
            with lock:
                sent.append(entry)
            return entry

        def load() -> None:
            while loading:
                send()
                time.sleep(0.05)

        def answered_since(t: float) -> Callable[[], bool]:
            def answered() -> bool:
                with lock:
                    recent = [s for s in sent if s.at >= t]
                return any(s.future.done() and s.future.exception() is None for s in recent)

            return answered

        loader = Background(load, "recall load")
        kills: list[float] = []
        try:
            worker.start()
            loader.start()
            for delay in KILLS:
                started = time.monotonic()
                wait_until(answered_since(started), 60, f"replies after start {worker.starts}", watch=[loader])
                time.sleep(delay)  # the kill lands mid-stream of requests, at a seeded point
                worker.assert_alive()
                worker.kill9()
                kills.append(time.monotonic())
                send(outage=True)  # nobody is listening right now
                time.sleep(0.2)  # an outage: the requests of the load queue up unanswered
                worker.start()
            started = time.monotonic()
            wait_until(answered_since(started), 60, "replies after the last restart", watch=[loader])
        finally:
            loading = False
        loader.join(10)  # raises what the load thread raised
        # every request settles (answered, or failed by the client's own deadline) while the worker runs
        wait_until(lambda: client.pending() == 0, CLIENT_TIMEOUT_S + 10, "every request to settle")
        assert worker.stop() == 0, worker.tail()

        with lock:
            entries = list(sent)
        t0 = entries[0].at
        lost: list[str] = []
        for index, entry in enumerate(entries):  # per request: answered, and answered right
            error = entry.future.exception(5)  # settled: pending() is 0
            if error is not None:
                kind = "outage" if entry.outage else "load"
                lost.append(f"#{index} ({kind}, sent at +{entry.at - t0:.2f} s): {error!r}")
                continue
            reply = entry.future.result(5)
            assert isinstance(reply, RecallReply), f"request #{index}: error reply {reply}"
            assert (reply.model_version, reply.collection) == ("v1", collection), f"request #{index}: {reply}"
            assert reply.items == expected, f"request #{index}: a wrong answer"
        assert not lost, f"{len(lost)} of {len(entries)} requests never answered: {lost[:5]}"
        # each kill landed mid-stream: the load had sent a request shortly before it (a stalled load
        # would make the kills land on an idle worker and leave the redelivery untested)
        load_times = [e.at for e in entries if not e.outage]
        for n, killed in enumerate(kills, start=1):
            assert any(killed - 1.0 <= at <= killed for at in load_times), f"kill {n} landed on an idle worker"
