"""The model a recall worker serves: the live alias, resolved to a collection, plus the user
tower of the version announced for it, at the announced generation. Swaps are picked up by
re-resolving the alias; deltas and fast-path steps by re-reading the collection's announcement, a
property of the collection in Milvus (:mod:`workers.refresh.generations`: a delta announces a new
version on the same collection, whose tower is loaded before it is served). The searched collection
is always the resolved one (never the alias itself) and searches are limited to the rows visible at
the announced generation, so a reply names exactly the (version, generation) it searched, and every
vector it searched was published for that version (its own row, or a row within ``refresh.delta_threshold`` of it)."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, replace

from model.serving import ServingTower
from workers.infra.vector_store import VectorStore
from workers.refresh.generations import announced
from workers.refresh.registry import ModelRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    version: str
    collection: str
    tower: ServingTower  # numpy forward pass of the version's user tower (no Paddle per request)
    since: float  # time.time() when this version became the one served here
    generation: int = 0  # fast-path generation announced for the collection
    max_generation: int | None = None  # search filter: None for collections without generations
    generation_stamp: str | None = None  # the announcement as read (raw), to skip parsing it again


class LiveModel:
    """Thread-safe holder of the served model; :meth:`current` re-checks the alias at most every
    ``check_every_s`` seconds (an ``alter_alias`` takes effect here within that delay)."""

    def __init__(self, store: VectorStore, registry: ModelRegistry, *, check_every_s: float = 0.5) -> None:
        self._store = store
        self._registry = registry
        self._check_every_s = check_every_s
        self._served: Served | None = None
        self._checked_at = -math.inf  # monotonic() can be below check_every_s right after boot
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._closed = threading.Event()

    def watch(self) -> None:
        """Re-resolve the alias (and load a new tower) in a background thread, so that requests never
        wait for it: :meth:`current` then just returns the model in hand."""
        if self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._watch, name="live-model-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._closed.wait(self._check_every_s):
            try:
                self.current(force=True)
            except Exception:
                log.exception("re-resolving the live alias failed; keeping %s", self._served)

    def close(self) -> None:
        self._closed.set()

    def current(self, *, force: bool = False) -> Served | None:
        now = time.monotonic()
        fresh = now - self._checked_at < self._check_every_s
        if not force and (fresh or (self._watcher is not None and self._served is not None)):
            return self._served
        with self._lock:
            self._checked_at = now
            collection = self._store.resolve_alias(self._registry.alias)
            served = self._served
            if collection is None:
                return served  # alias gone (e.g. dropped by an operator): keep serving what we hold
            if served is not None and served.collection == collection:
                return self._with_generation(served)
            version = self._registry.version_of(collection)
            if version is None:
                log.error("alias %s points at %s, which is not a model collection", self._registry.alias, collection)
                return served
            limit = 0 if self._store.has_generations(collection) else None
            first = Served(version, collection, self._tower(version), time.time(), max_generation=limit)
            self._served = self._with_generation(first)
            log.info("serving %s from %s (generation %d)", self._served.version, collection, self._served.generation)
            return self._served

    def _tower(self, version: str) -> ServingTower:
        ckpt = self._registry.checkpoint(version)
        return ServingTower.from_net(ckpt.load_net(), version, vocab=ckpt.vocab())  # external ids

    def _with_generation(self, served: Served) -> Served:
        """``served`` at the (generation, version) announced now (same object when unchanged)."""
        if served.max_generation is None:
            return served
        state, stamp = announced(self._store, served.collection, served.generation_stamp)
        if state is None:
            return served  # the announcement did not change
        version = state.version or self._registry.version_of(served.collection) or served.version
        if version == served.version and state.generation == served.generation:
            self._served = replace(served, generation_stamp=stamp)
            return self._served
        tower = served.tower if version == served.version else self._tower(version)
        self._served = replace(
            served,
            version=version,
            tower=tower,
            since=time.time() if version != served.version else served.since,
            generation=state.generation,
            max_generation=state.generation,
            generation_stamp=stamp,
        )
        if version != served.version:
            log.info("serving %s from %s (generation %d)", version, served.collection, state.generation)
        return self._served
