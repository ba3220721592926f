"""The model a recall worker serves: the live alias, resolved to a collection, plus the user
tower of the same version, at the generation the fast path announced for it. Swaps are picked up
by re-resolving the alias, generations by re-reading the collection's generation file; the searched
collection is always the resolved one (never the alias itself) and searches are limited to rows of
the announced generations, so a reply can never mix the user vectors of one version with the item
vectors of another, and names exactly the (version, generation) it searched."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace

from model.serving import ServingTower
from workers.infra.vector_store import VectorStore
from workers.refresh.generations import announced_generation
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
    generation_stamp: float = 0.0  # mtime of the generation file read


class LiveModel:
    """Thread-safe holder of the served model; :meth:`current` re-checks the alias at most every
    ``check_every_s`` seconds (an ``alter_alias`` takes effect here within that delay)."""

    def __init__(self, store: VectorStore, registry: ModelRegistry, *, check_every_s: float = 0.5) -> None:
        self._store = store
        self._registry = registry
        self._check_every_s = check_every_s
        self._served: Served | None = None
        self._checked_at = 0.0
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
            ckpt = self._registry.checkpoint(version)
            tower = ServingTower.from_net(ckpt.load_net(), version, vocab=ckpt.vocab())  # external ids
            limit = 0 if self._store.has_generations(collection) else None
            self._served = self._with_generation(Served(version, collection, tower, time.time(), max_generation=limit))
            log.info("serving %s from %s (generation %d)", version, collection, self._served.generation)
            return self._served

    def _with_generation(self, served: Served) -> Served:
        """``served`` at the generation announced now (same object when unchanged)."""
        if served.max_generation is None:
            return served
        generation, stamp = announced_generation(self._registry.root, served.collection, served.generation_stamp)
        if generation is None or generation < served.generation:
            return served  # unchanged (generations never go back for one collection)
        self._served = replace(served, generation=generation, max_generation=generation, generation_stamp=stamp)
        return self._served
