"""``kill -9`` of the refresh loop (``mindstream refresh``) at seeded random points while clicks keep
arriving: the live alias resolves to a complete, searchable collection right after every kill and
whenever it is sampled (every ~0.3 s) in between. Then one more round is killed at a fixed point
(shadow built and indexed, not loaded: ``tests.faults.refresh_crash``), so an orphan certainly exists;
after the last restart the next round succeeds and that orphan, and any the random kills left, is gone."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from model.checkpoint import list_versions, pointed_versions, version_number
from tests.background import Background
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
from tests.faults.refresh_crash import CRASH_CODE
from workers.infra.vector_store import VectorStore
from workers.refresh.publish_lock import PublishBusy, lock_path, publish_lock
from workers.refresh.registry import ModelRegistry
from workers.refresh.state import RefreshState
from workers.settings import MilvusSettings, RefreshSettings

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]

# Where each kill lands: seconds after a round began (the worker took the publish lock; then cleanup, read
# and training), or after its checkpoint was written (publishing: shadow created, index, load ~3 s, insert,
# verify, swap), at seeded points inside that part. Training 15 batches takes ~0.05 s, less than the test's
# own reaction on a loaded machine: a worker started for a kill in training trains 2,000 (~2.5 s).
KILLS = [
    *zip(("round", "round"), kill_points(seed=7, n=2, low=0.0, high=0.5), strict=True),
    *zip(("publish",) * 3, kill_points(seed=8, n=3, low=0.0, high=2.5), strict=True),
]
TRAIN_BATCHES = {"round": "2000", "publish": "15"}


def test_refresh_kill_9_five_times_live_stays_complete_and_orphans_are_cleaned(
    kafka_bootstrap: str, milvus_uri: str, tmp_path: Path, workers: list[Worker]
) -> None:
    names = Names()
    state = tmp_path / "state"
    env = worker_env(state, names, bootstrap=kafka_bootstrap, milvus_uri=milvus_uri)
    env["MINDSTREAM_REFRESH__PUBLICATION"] = "full"  # kills land in the swap's phases (deltas: test_refresh_phases)
    registry = ModelRegistry(state / "models", names.alias)
    feeder = StateFeeder(state, env["MINDSTREAM_KAFKA__CLICKS_TOPIC"], seed=2)
    worker = Worker.cli("refresh", env, tmp_path / "refresh.log")
    workers.append(worker)
    violations: list[str] = []
    seen: set[str] = set()
    running = True
    lock = lock_path(state / "refresh", names.alias)

    with VectorStore(milvus_uri, MilvusSettings(index_type="FLAT")) as store:
        _, net = save_v1(registry.root, SYNTHETIC_ITEMS)
        publish_live(store, registry, net, "v1")

        checking = threading.Lock()
        query = np.ones((1, 8), dtype=np.float32)

        def check_live(when: str) -> None:
            """What a recall worker relies on: the alias names a complete collection of a saved version."""
            with checking:
                try:
                    live = store.resolve_alias(names.alias)
                    version = registry.version_of(live or "")
                    if live is None or version is None:
                        violations.append(f"{when}: alias resolves to {live}")
                        return
                    seen.add(version)
                    rows = registry.checkpoint(version).manifest.item_count - 1
                    if store.count(live) != rows:
                        violations.append(f"{when}: {live} is incomplete")
                    hits = store.search(live, query, 5)
                    if not (hits.ids > 0).all() or hits.model_versions != {version}:
                        violations.append(f"{when}: {live} answered {hits}")
                except Exception as exc:  # the collection vanished under the alias, ...
                    violations.append(f"{when}: {exc!r}")

        def watch() -> None:  # sampled every ~0.3 s throughout, besides the checks right after each kill
            while running:
                check_live("sampled")
                time.sleep(0.3)

        def orphans() -> set[str]:
            """Shadows of crashed rounds: unrecorded collections newer than live. An unrecorded one older
            than live is a previous live whose record a kill lost (between alter_alias and the state
            write): the worker adopts it as superseded, for rollback, by design."""
            live = store.resolve_alias(names.alias) or ""
            recorded = {s.collection for s in RefreshState.load(state / "refresh" / "state.json").superseded}
            unrecorded = set(store.list_collections(names.alias + "_v")) - {live} - recorded
            live_n = version_number(registry.version_of(live) or "v0")
            return {c for c in unrecorded if version_number(registry.version_of(c) or "v0") > live_n}

        def feed() -> None:
            while running:
                feeder.feed()
                time.sleep(0.4)

        def in_round() -> bool:
            """The worker holds the alias's publish lock: a round is in progress (probed without waiting)."""
            try:
                with publish_lock(lock, wait=False):
                    return False
            except PublishBusy:
                return True

        def checkpoint_since(before: set[str]) -> Callable[[], bool]:
            """The round has written its checkpoint: a version directory that was not there when it began."""
            return lambda: bool(set(list_versions(registry.root)) - before)

        threads = [Background(watch, "live sampler"), Background(feed, "click feed")]
        hit: list[str] = []
        try:
            for thread in threads:
                thread.start()
            for n, (part, delay) in enumerate(KILLS, start=1):
                worker.env["MINDSTREAM_REFRESH__TRAIN_BATCHES"] = TRAIN_BATCHES[part]
                worker.start()
                wait_until(in_round, 90, f"a round to begin ({worker.tail()})", every=0.01, watch=threads)
                published = checkpoint_since(set(list_versions(registry.root)))
                if part == "publish":
                    wait_until(published, 60, f"the round's checkpoint ({worker.tail()})", every=0.01, watch=threads)
                time.sleep(delay)  # the kill lands at a seeded point of that part
                worker.assert_alive()
                at = ("publish" if published() else "train") if in_round() else "between rounds"
                worker.kill9()
                hit.append(at)
                check_live(f"right after kill {n} ({at})")  # the state a kill leaves is the one that matters
            assert "between rounds" not in hit and set(hit) == {"train", "publish"}, f"kills landed in {hit}"

            # A round killed at a known point: its shadow is flushed and indexed, never loaded or aliased.
            crash_env = {**worker.env, "MINDSTREAM_FAULT_CRASH_AT": "index"}
            argv = [sys.executable, "-m", "tests.faults.refresh_crash", "refresh"]
            crashing = Worker(argv, crash_env, worker.log_path)
            workers.append(crashing)
            assert crashing.start().wait(120) == CRASH_CODE, crashing.tail()
            check_live("after the round killed before load")
            left = orphans()
            assert left, "the round killed after its index build left no shadow behind"
            running = False
            for thread in threads:
                thread.join(10)  # raises what the thread raised
            assert not violations, violations[:5]

            before = max(version_number(v) for v in seen)
            worker.start()

            def newer_live() -> str | None:
                live = store.resolve_alias(names.alias)
                return live if live and version_number(live.rsplit("_", 1)[1]) > before else None

            def round_state() -> RefreshState | None:
                saved = RefreshState.load(state / "refresh" / "state.json")
                return saved if saved.events_seen == feeder.total else None

            final = wait_until(newer_live, 90, f"a successful round after the last restart ({worker.tail()})")
            # alter_alias comes before the state write: wait for the round's state (cursor at the end)
            saved = wait_until(round_state, 30, "the round's refresh state")
            assert final is not None and saved is not None
            kept = {final} | {s.collection for s in saved.superseded}
            assert not left & set(store.list_collections(names.alias + "_v")), f"the orphans {left} survived"
            assert set(store.list_collections(names.alias + "_v")) <= kept, "orphans survived the round"
            assert saved.events_seen == feeder.total, "events lost or counted twice by the refresh cursor"
            assert worker.stop() == 0, worker.tail()
            held = {v for name in store.list_collections(names.alias + "_v") if (v := registry.version_of(name))}
            assert registry.version_of(final) in held
            for version in held:
                registry.checkpoint(version).load_net()  # every version Milvus serves or can roll back to loads
            on_disk, keep = set(list_versions(registry.root)), RefreshSettings().keep_versions
            assert held <= on_disk
            # version retention (refresh.keep_versions) kept the newest ones besides what Milvus holds
            newest = sorted(on_disk, key=version_number)[-keep:]
            assert on_disk <= held | set(newest) | pointed_versions(registry.root), on_disk
        finally:
            running = False
            feeder.close()
            for name in store.list_collections(names.alias + "_v"):
                if name != store.resolve_alias(names.alias):
                    store.drop_collection(name)
