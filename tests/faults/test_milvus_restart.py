"""The embedded Milvus (a separate server, not the session one) killed with SIGKILL and restarted on
the same base directory and port while a refresh loop and a recall worker run: both retry with capped
exponential back-off, neither commits work that did not happen (the refresh cursor stays, recall
answers ``unavailable`` or nothing), and both recover by themselves, without a restart."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.messages import ErrorCode, ErrorReply, RecallReply, RecallRequest
from tests.background import Background
from tests.faults.conftest import (
    SYNTHETIC_ITEMS,
    Names,
    StateFeeder,
    Worker,
    publish_live,
    save_v1,
    wait_until,
    worker_env,
)
from tests.fixtures_milvus import free_port
from workers.infra.kafka import ensure_topics
from workers.infra.milvus_server import EmbeddedMilvus
from workers.infra.vector_store import VectorStore
from workers.recall.client import RecallClient
from workers.refresh.registry import ModelRegistry
from workers.refresh.state import RefreshState
from workers.settings import KafkaSettings, MilvusSettings, RecallSettings

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]

RETRY = re.compile(
    r"^\S+ \S+ WARNING \S+: (?P<what>.+?) failed \(.*\); retry (?P<n>\d+)/(?P<of>\d+) in (?P<delay>[\d.]+) s$", re.M
)
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.2, 5.0  # the README's promise: 0.2 s doubling, at most 5 s a wait


def _assert_backoff_grows(worker: str, log: str) -> None:
    """Every logged retry waits what its number promises (0.2, 0.4, 0.8, ... capped), and this worker
    retried one call at least twice, so growth was seen. Retry numbers count up per call, so the
    check holds even when two threads' retries interleave in one log."""
    retries = [(m["what"], int(m["n"]), float(m["delay"])) for m in RETRY.finditer(log)]
    assert retries, f"{worker}: no retry logged"
    wrong = [r for r in retries if r[2] != round(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (r[1] - 1)), 1)]
    assert not wrong, f"{worker}: back-off not doubling from {BACKOFF_BASE_S} s: {wrong[:5]}"
    assert max(n for _, n, _ in retries) >= 2, f"{worker}: no call retried twice, growth unseen: {retries[:5]}"


def _retried_twice(log: str) -> bool:
    return any(int(m["n"]) >= 2 for m in RETRY.finditer(log))


@pytest.fixture
def own_milvus(tmp_path: Path) -> Iterator[EmbeddedMilvus]:
    with EmbeddedMilvus(tmp_path / "milvus", port=free_port()) as server:
        yield server


def _swaps(state_path: Path) -> int:
    """Swaps the refresh worker recorded (a new collection or a delta into the live one: both count)."""
    return RefreshState.load(state_path).swaps


def test_milvus_killed_and_restarted_workers_back_off_and_recover_by_themselves(
    own_milvus: EmbeddedMilvus, kafka_bootstrap: str, tmp_path: Path, workers: list[Worker]
) -> None:
    names = Names()
    state = tmp_path / "state"
    env = worker_env(state, names, bootstrap=kafka_bootstrap, milvus_uri=own_milvus.uri)
    env["MINDSTREAM_MILVUS__TIMEOUT_S"] = "5"
    registry = ModelRegistry(state / "models", names.alias)
    state_path = state / "refresh" / "state.json"
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        requests_topic=env["MINDSTREAM_KAFKA__REQUESTS_TOPIC"],
        replies_topic=env["MINDSTREAM_KAFKA__REPLIES_TOPIC"],
    )
    ensure_topics(kafka.client_config(), [kafka.requests_topic, kafka.replies_topic])
    feeder = StateFeeder(state, env["MINDSTREAM_KAFKA__CLICKS_TOPIC"], seed=3)
    feeding = True

    def feed() -> None:
        while feeding:
            feeder.feed()
            time.sleep(0.5)

    settings = MilvusSettings(index_type="FLAT", timeout_s=5)
    with VectorStore(own_milvus.uri, settings) as store:
        _, net = save_v1(registry.root, SYNTHETIC_ITEMS)
        publish_live(store, registry, net, "v1")
    refresh = Worker.cli("refresh", env, tmp_path / "refresh.log").start()
    recall = Worker.cli("recall", env, tmp_path / "recall.log").start()
    workers.extend([refresh, recall])
    feeder_thread = Background(feed, "state feed").start()
    request = RecallRequest(hist_item=[[1, 2, 3]], top_k=5)

    def good_reply(client: RecallClient) -> RecallReply | None:
        try:
            reply = client.request(request, timeout=10).result(12)
        except TimeoutError:
            return None
        if isinstance(reply, RecallReply) and reply.collection.startswith(f"{names.alias}_v"):  # a delta: v1's
            assert reply.items[0], reply
            return reply
        return None

    try:
        with RecallClient(kafka, RecallSettings(client_timeout_s=15)) as client:
            wait_until(lambda: _swaps(state_path) >= 1, 90, f"a first swap ({refresh.tail()})")
            wait_until(lambda: good_reply(client), 60, f"a recall reply ({recall.tail()})")

            pid = own_milvus.pid
            assert pid is not None  # never os.kill(0): that is our own process group
            os.kill(pid, signal.SIGKILL)
            at_kill = RefreshState.load(state_path)
            # both workers run into the outage and back off: each logs a second retry of one call
            wait_until(lambda: _retried_twice(refresh.log_text()), 60, f"refresh backing off ({refresh.tail()})")
            wait_until(lambda: _retried_twice(recall.log_text()), 60, f"recall backing off ({recall.tail()})")
            during = client.request(request, timeout=15).result(17)
            assert isinstance(during, ErrorReply) and during.code is ErrorCode.UNAVAILABLE, during
            after_outage = RefreshState.load(state_path)
            assert (after_outage.events_seen, after_outage.swaps) == (at_kill.events_seen, at_kill.swaps)
            refresh.assert_alive()
            recall.assert_alive()

            own_milvus.stop()  # reaps the killed process
            own_milvus.start()  # same base dir, same port: ~25 s (etcd leases of the killed one)
            swaps_at_restart = _swaps(state_path)
            wait_until(
                lambda: _swaps(state_path) > swaps_at_restart, 90, f"a swap after the restart ({refresh.tail()})"
            )
            wait_until(lambda: good_reply(client), 60, f"recall answering after the restart ({recall.tail()})")
            feeding = False
            feeder_thread.join(10)  # raises what the feed raised
            assert RefreshState.load(state_path).events_seen > at_kill.events_seen  # the cursor moves again
        # recovered by themselves: the processes started before the outage are the ones still running
        # (``Popen.poll`` is None: they never exited, and this test starts each only once)
        refresh.assert_alive()
        recall.assert_alive()
        assert refresh.stop() == 0 and recall.stop() == 0
        refresh_log = refresh.log_text()
        assert "refresh round failed; live unchanged" in refresh_log
        _assert_backoff_grows("refresh", refresh_log)
        _assert_backoff_grows("recall", recall.log_text())
    finally:
        feeding = False
        feeder.close()
