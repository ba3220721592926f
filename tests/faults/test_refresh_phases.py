"""The refresh worker killed (``os._exit(137)``, no clean-up) at each crash point of a round: live stays on
the previous complete collection and keeps answering searches; the next round drops the orphan the
crash left behind; a normal round afterwards swaps. A crash right after ``alter_alias`` leaves the
new, complete collection live and the previous one still available for rollback."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tests.faults.conftest import (
    SYNTHETIC_ITEMS,
    Names,
    StateFeeder,
    Worker,
    publish_live,
    save_v1,
    worker_env,
)
from tests.faults.refresh_crash import CRASH_CODE, DELTA_PHASES
from workers.infra.row_keys import OPEN
from workers.infra.vector_store import VectorStore
from workers.refresh.generations import Generations
from workers.refresh.live_writer import FAST_PATH_SLOTS
from workers.refresh.registry import ModelRegistry
from workers.refresh.state import RefreshState
from workers.settings import MilvusSettings

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]

# Every crash point before ``alter_alias``; each leaves a different state: "train" nothing, "export" a
# checkpoint v<N+1> without any collection, "insert" a half-filled shadow, "index" an indexed shadow
# not loaded, "verify" a loaded shadow, "swap" a verified shadow. "after-swap" (alter_alias done, the
# refresh state not written) is tested on its own below.
BEFORE_SWAP = ("train", "export", "insert", "index", "verify", "swap")


def _complete_and_searchable(store: VectorStore, registry: ModelRegistry, collection: str) -> None:
    version = registry.version_of(collection)
    assert version is not None
    rows = registry.checkpoint(version).manifest.item_count - 1  # the checkpoint loads: its manifest is whole
    assert store.count(collection) == rows
    hits = store.search(registry.alias, np.ones((1, 8), dtype=np.float32), 5)
    assert (hits.ids > 0).all() and hits.model_versions == {version}


def _round(worker: Worker, crash_at: str | None) -> int:
    if crash_at is None:
        worker.env.pop("MINDSTREAM_FAULT_CRASH_AT", None)
    else:
        worker.env["MINDSTREAM_FAULT_CRASH_AT"] = crash_at
    return worker.start().wait(120)


def test_refresh_crash_in_each_phase_leaves_live_untouched_and_next_round_cleans_up(
    kafka_bootstrap: str, milvus_uri: str, tmp_path: Path, workers: list[Worker]
) -> None:
    names = Names()
    state = tmp_path / "state"
    env = worker_env(state, names, bootstrap=kafka_bootstrap, milvus_uri=milvus_uri)
    env["MINDSTREAM_REFRESH__PUBLICATION"] = "full"  # every round a new epoch: the swap's phases
    registry = ModelRegistry(state / "models", names.alias)
    state_path = state / "refresh" / "state.json"
    feeder = StateFeeder(state, env["MINDSTREAM_KAFKA__CLICKS_TOPIC"], seed=1)
    argv = [sys.executable, "-m", "tests.faults.refresh_crash", "refresh", "--once"]
    worker = Worker(argv, env, tmp_path / "refresh.log")
    workers.append(worker)
    with VectorStore(milvus_uri, MilvusSettings(index_type="FLAT")) as store:
        _, net = save_v1(registry.root, SYNTHETIC_ITEMS)
        live = publish_live(store, registry, net, "v1")
        orphans: set[str] = set()
        for phase in BEFORE_SWAP:
            feeder.feed()
            versions_before = set(registry.versions())
            assert _round(worker, phase) == CRASH_CODE, worker.tail()
            written = set(registry.versions()) - versions_before
            assert len(written) == (0 if phase == "train" else 1), (phase, written)  # the checkpoint of the round
            assert f"FAULT: crashing at {phase}" in worker.tail(2000)
            assert store.resolve_alias(names.alias) == live, f"crash in {phase} moved the alias"
            _complete_and_searchable(store, registry, live)
            left = set(store.list_collections(names.alias + "_v")) - {live}
            assert not orphans & left, f"the round crashing in {phase} did not drop {orphans & left}"
            assert len(left) <= 1  # at most the shadow of this crash (train and export create none)
            assert (len(left) == 1) == (phase not in ("train", "export")), (phase, left)
            if left:
                assert {registry.version_of(name) for name in left} == written, (phase, left, written)
            orphans = left
            assert RefreshState.load(state_path).events_seen == 0, "a crashed round advanced the cursor"

        # killed right after alter_alias: the new collection is live and complete, the old one kept
        feeder.feed()
        assert _round(worker, "after-swap") == CRASH_CODE, worker.tail()
        swapped = store.resolve_alias(names.alias)
        assert swapped is not None and swapped != live
        _complete_and_searchable(store, registry, swapped)

        # the next normal round cleans every orphan and swaps
        assert _round(worker, None) == 0, worker.tail()
        final = store.resolve_alias(names.alias)
        assert final is not None and final != swapped
        _complete_and_searchable(store, registry, final)
        saved = RefreshState.load(state_path)
        kept = {final} | {s.collection for s in saved.superseded}
        assert set(store.list_collections(names.alias + "_v")) <= kept, "an orphan survived the round"
        assert saved.events_seen == feeder.total and saved.swaps == 1
        # the model live before the crash-interrupted swap is still there for rollback (it was dropped
        # as an "orphan" before the fix in Publisher.cleanup)
        assert store.has_collection(live) and live in {s.collection for s in saved.superseded}
        for name in store.list_collections(names.alias + "_v"):
            if name != final:
                store.drop_collection(name)
        store.drop_alias(names.alias)
        store.drop_collection(final)
    feeder.close()


def _announced_and_complete(store: VectorStore, registry: ModelRegistry, collection: str, version: str) -> int:
    """The generation announced for ``collection`` with ``version``: every item of that version visible
    exactly once at it, searches answered, and nothing of a later generation or closed by one left over."""
    announced = Generations.load(store, collection)
    assert (announced.version or registry.version_of(collection)) == version
    g = announced.generation
    items = registry.checkpoint(version).vocab().items
    assert store.count(collection, generation=g) == items
    hits = store.search(collection, np.ones((1, 8), dtype=np.float32), 5, max_generation=g)
    assert (hits.ids > 0).all()
    return g


def test_a_delta_crash_in_each_phase_leaves_the_announced_generation_whole_and_the_next_round_repairs(
    kafka_bootstrap: str, milvus_uri: str, tmp_path: Path, workers: list[Worker]
) -> None:
    names = Names()
    state = tmp_path / "state"
    env = worker_env(state, names, bootstrap=kafka_bootstrap, milvus_uri=milvus_uri)
    env["MINDSTREAM_REFRESH__DELTA_THRESHOLD"] = "0.05"
    registry = ModelRegistry(state / "models", names.alias)
    feeder = StateFeeder(state, env["MINDSTREAM_KAFKA__CLICKS_TOPIC"], seed=2)
    argv = [sys.executable, "-m", "tests.faults.refresh_crash", "refresh", "--once"]
    worker = Worker(argv, env, tmp_path / "refresh.log")
    workers.append(worker)
    with VectorStore(milvus_uri, MilvusSettings(index_type="FLAT")) as store:
        _, net = save_v1(registry.root, SYNTHETIC_ITEMS)
        live = publish_live(store, registry, net, "v1")
        assert store.is_keyed(live)
        for phase in DELTA_PHASES:
            feeder.feed()
            assert _round(worker, phase) == CRASH_CODE, worker.tail()
            assert f"FAULT: crashing at {phase}" in worker.tail(2000)
            assert store.resolve_alias(names.alias) == live  # a delta never moves the alias
            assert _announced_and_complete(store, registry, live, "v1") == 0, phase
        assert _round(worker, None) == 0, worker.tail()
        newest = max(registry.versions(), key=lambda v: int(v[1:]))
        g = _announced_and_complete(store, registry, live, newest)
        assert g == FAST_PATH_SLOTS  # staged above the generations left to fast-path steps
        assert not store.rows_where(live, f"generation > {g} or (gen_to > {g} and gen_to < {OPEN})")  # repaired
        assert not store.rows_where(live, f"generation > 0 and generation < {g}")  # the crashed stages' rows
        assert RefreshState.load(state / "refresh" / "state.json").events_seen == feeder.total
        store.drop_alias(names.alias)
        store.drop_collection(live)
    feeder.close()
