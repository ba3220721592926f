"""``refresh.fast_path_max_pending`` on the fast path's bookkeeping alone (no Milvus, no state): a flood of
new item ids fills the pending items up to the cap, oldest first, the rest are counted as deferred, and
the places come back when a live version knows the items that held them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
from prometheus_client import CollectorRegistry

from model.cold_start import FrozenModel
from model.vocab import ItemVocab
from workers.infra.vector_store import VectorStore
from workers.ingest.state_reader import StateReader
from workers.ingest.state_store import StoredClick
from workers.refresh.fast_path import FastPath, _Live
from workers.refresh.metrics import RefreshMetrics
from workers.settings import RefreshSettings, Settings


def _fast(tmp_path: Path, cap: int) -> tuple[FastPath, CollectorRegistry]:
    settings = Settings(state_dir=tmp_path, refresh=RefreshSettings(fast_path_max_pending=cap))
    registry = CollectorRegistry()
    none = cast(Any, None)
    fast = FastPath(settings, cast(VectorStore, none), cast(StateReader, none), metrics=RefreshMetrics(registry))
    return fast, registry


def _clicks(items: range | list[int], user: int = 7) -> list[StoredClick]:
    return [StoredClick(f"e{user}-{i}", user, item, 0, None) for i, item in enumerate(items)]


def _deferred(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("mindstream_refresh_new_items_deferred_total", {"path": "fast_path"})


def test_a_flood_of_new_ids_holds_the_first_ones_up_to_the_cap(tmp_path: Path) -> None:
    fast, registry = _fast(tmp_path, cap=1000)
    flood = range(10**12, 10**12 + 100_000)  # 100k distinct ids, one click each
    fast.observe(_clicks(flood), now=1e9)
    assert len(fast.pending) == 1000 and list(fast.pending)[:3] == list(flood[:3])  # the oldest hold the places
    assert _deferred(registry) == 99_000
    # clicks on held items still count (their clickers give them context); new ids still find no place
    fast.observe(_clicks([flood[0]] * 3 + [5, 6], user=8), now=1e9)
    assert fast.pending[flood[0]].clickers == [7, 8, 8, 8]
    assert len(fast.pending) == 1000 and _deferred(registry) == 99_002  # one deferral per new id per step


def test_places_come_back_once_a_live_version_knows_the_items(tmp_path: Path) -> None:
    fast, registry = _fast(tmp_path, cap=3)
    fast.observe(_clicks([11, 12, 13, 14, 15]), now=1e9)
    assert list(fast.pending) == [11, 12, 13] and _deferred(registry) == 2
    # a major version embeds 11 and 12 (and the deferred 14: the round takes every click it consumes)
    vocab = ItemVocab.from_ids([1, 11, 12, 14])
    live = _Live("c_v2", "v2", vocab, cast(FrozenModel, cast(Any, None)), True)
    fast._forget_known(live, now=1e9)
    assert list(fast.pending) == [13]
    events = _clicks([14, 15, 16, 17])
    known = vocab.rows(np.array([e.item_id for e in events])) > 0
    fast.note(events, known.tolist(), now=1e9)  # 14 is known now: only unknown items take a place
    assert list(fast.pending) == [13, 15, 16] and _deferred(registry) == 3
