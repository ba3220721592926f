"""``kill -9`` of the refresh loop (``mindstream refresh``) at seeded random points while clicks keep
arriving: the live alias always resolves to a complete, loadable collection; after the last restart
the next round succeeds and every orphan of the killed rounds is gone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from model.checkpoint import version_number
from tests.faults.conftest import (
    SYNTHETIC_ITEMS,
    Names,
    StateFeeder,
    Worker,
    kill_points,
    publish_live,
    save_v1,
    wait_until,
    worker_env,
)
from workers.infra.vector_store import VectorStore
from workers.refresh.registry import ModelRegistry
from workers.refresh.state import RefreshState
from workers.settings import MilvusSettings

pytestmark = [pytest.mark.integration, pytest.mark.fault]

KILLS = kill_points(seed=7, n=5, low=1.0, high=8.0)  # start-up ~3 s, then a round: train ~1 s, publish ~6-8 s


def test_refresh_kill_9_five_times_live_stays_complete_and_orphans_are_cleaned(
    kafka_bootstrap: str, milvus_uri: str, tmp_path: Path, workers: list[Worker]
) -> None:
    names = Names()
    state = tmp_path / "state"
    env = worker_env(state, names, bootstrap=kafka_bootstrap, milvus_uri=milvus_uri)
    registry = ModelRegistry(state / "models", names.alias)
    feeder = StateFeeder(state, env["MINDSTREAM_KAFKA__CLICKS_TOPIC"], seed=2)
    worker = Worker.cli("refresh", env, tmp_path / "refresh.log")
    workers.append(worker)
    violations: list[str] = []
    seen: set[str] = set()
    running = threading.Event()
    running.set()

    with VectorStore(milvus_uri, MilvusSettings(index_type="FLAT")) as store:
        _, net = save_v1(registry.root, SYNTHETIC_ITEMS)
        publish_live(store, registry, net, "v1")

        def watch() -> None:  # what a recall worker relies on, checked every ~0.3 s throughout
            query = np.ones((1, 8), dtype=np.float32)
            while running.is_set():
                try:
                    live = store.resolve_alias(names.alias)
                    version = registry.version_of(live or "")
                    if live is None or version is None:
                        violations.append(f"alias resolves to {live}")
                        continue
                    seen.add(version)
                    rows = registry.checkpoint(version).manifest.item_count - 1
                    if store.count(live) != rows:
                        violations.append(f"{live} is incomplete")
                    hits = store.search(live, query, 5)
                    if not (hits.ids > 0).all() or hits.model_versions != {version}:
                        violations.append(f"{live} answered {hits}")
                except Exception as exc:  # the collection vanished under the alias, ...
                    violations.append(repr(exc))
                time.sleep(0.3)

        def feed() -> None:
            while running.is_set():
                feeder.feed()
                time.sleep(0.4)

        threads = [threading.Thread(target=watch, daemon=True), threading.Thread(target=feed, daemon=True)]
        try:
            for thread in threads:
                thread.start()
            for delay in KILLS:
                worker.start()
                time.sleep(delay)
                worker.assert_alive()
                worker.kill9()
            running.clear()
            for thread in threads:
                thread.join(10)
            assert not violations, violations[:5]
            assert len(registry.versions()) >= 3, "the kills should interrupt rounds, not only start-ups"

            before = max(version_number(v) for v in seen)
            worker.start()
            final = wait_until(
                lambda: (
                    (live := store.resolve_alias(names.alias))
                    and version_number(live.rsplit("_", 1)[1]) > before
                    and live
                ),
                90,
                f"a successful round after the last restart ({worker.tail()})",
            )
            saved = RefreshState.load(state / "refresh" / "state.json")
            kept = {final} | {s.collection for s in saved.superseded}
            assert set(store.list_collections(names.alias + "_v")) <= kept, "orphans survived the round"
            assert saved.events_seen == feeder.total, "events lost or counted twice by the refresh cursor"
            assert worker.stop() == 0, worker.tail()
            for version in seen | {registry.version_of(final) or ""}:
                registry.checkpoint(version).load_net()  # every version that was ever live loads
        finally:
            running.clear()
            feeder.close()
            for name in store.list_collections(names.alias + "_v"):
                if name != store.resolve_alias(names.alias):
                    store.drop_collection(name)
