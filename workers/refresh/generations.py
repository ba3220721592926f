"""Generations of a live collection: what is announced, and with which model version.

A collection (an *epoch*) is built as generation 0 by the model version it is named after. Each
later write, a fast-path step (new items under the live version's weights) or a delta (the rows a
major round changed, under its new version), goes in as rows of a later generation of the same
collection, is verified, and only then is announced here as ``(generation, version)``: readers
search the rows visible at the ``g`` they read (:func:`workers.infra.row_keys.visible`) with the
tower of the ``version`` they read, so rows of a write that has not been announced (or crashed
half-way) are never seen. ``history`` keeps the newest announcement of each recent version: a rollback
announces the previous version's.

The announcement is a property of the collection in Milvus (:data:`PROPERTY`, one meta-store write):
every worker that searches the collection reads it where it reads the alias, on any host, and it
goes when the collection is dropped. No file is shared.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Protocol

PROPERTY = "mindstream.generations"


class PropertyStore(Protocol):
    """Where announcements live (:class:`workers.infra.vector_store.VectorStore`)."""

    def properties(self, name: str) -> dict[str, str]: ...

    def set_property(self, name: str, key: str, value: str) -> None: ...


HISTORY_KEPT = 8


@dataclass
class Generations:
    collection: str
    generation: int = 0
    announced_at: list[float] = field(default_factory=list)  # time.time() of the announcements kept
    version: str | None = None  # the model version readers use; None: the collection's own (its name)
    history: list[tuple[int, str | None]] = field(default_factory=list)  # (generation, version), newest last

    def announce(self, generation: int, version: str | None, at: float) -> None:
        """Record ``(generation, version)`` as the announced state (the caller saves it). ``history`` keeps
        the newest announcement of each of the last versions: a rollback goes back a version, not a step."""
        if not self.history:  # the state before the first announcement: the epoch's build
            self.history = [(self.generation, self.version)]
        self.generation, self.version = generation, version
        newest: dict[str | None, int] = {}
        for g, v in [*self.history, (generation, version)]:
            newest[v] = max(g, newest.get(v, g))
        self.history = sorted(((g, v) for v, g in newest.items()), key=lambda e: e[0])[-HISTORY_KEPT:]
        self.announced_at = [*self.announced_at, at][-HISTORY_KEPT:]

    def rollback_target(self) -> tuple[int, str | None] | None:
        """The newest announcement of the version before the announced one, or None."""
        earlier = [(g, v) for g, v in self.history if v != self.version and g < self.generation]
        return earlier[-1] if earlier else None

    @staticmethod
    def parse(collection: str, raw: str | None) -> Generations:
        if not raw:
            return Generations(collection)
        data = json.loads(raw)
        data["history"] = [tuple(entry) for entry in data.get("history", [])]
        return Generations(**{**data, "collection": collection})

    @staticmethod
    def load(store: PropertyStore, collection: str) -> Generations:
        """The announced state of ``collection`` (generation 0 when nothing was announced)."""
        return Generations.parse(collection, store.properties(collection).get(PROPERTY))

    def save(self, store: PropertyStore) -> None:
        store.set_property(self.collection, PROPERTY, json.dumps(asdict(self), separators=(",", ":")))


def announced(store: PropertyStore, collection: str, known: str | None = None) -> tuple[Generations | None, str]:
    """``(state, raw)`` of ``collection``'s announcement, cheap to poll: ``(None, known)`` when its raw value
    is still ``known`` (nothing to parse)."""
    raw = store.properties(collection).get(PROPERTY, "")
    if known is not None and raw == known:
        return None, known
    return Generations.parse(collection, raw), raw


def announced_generation(store: PropertyStore, collection: str) -> int:
    """:func:`announced`'s generation only."""
    state, _ = announced(store, collection)
    assert state is not None
    return state.generation
