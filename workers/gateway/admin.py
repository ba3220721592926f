"""What the gateway's admin endpoints do: count the live collection, publish the newest model, drop.

* ``insert_data``: the newest checkpoint of the model registry is published with the same swap
  discipline as the refresh worker (:class:`workers.refresh.publish.Publisher`: shadow ``<alias>_v<N>`` ->
  insert -> flush -> index -> load -> verify -> ``alter_alias``); the previous collection is recorded
  as superseded in the refresh state, so the refresh worker's cleanup and rollback see it. When the
  newest version is already live nothing is rebuilt (idempotent).
* ``drop``: the live alias, then every collection of ours (``<alias>_v<N>``) that no other alias
  points at; the refresh state forgets the dropped ones.
* ``rollback``: what ``mindstream rollback`` does: the alias goes back to the most recently superseded
  collection that still exists, and the one it leaves is kept as superseded (so a second rollback
  undoes the first).
* ``refresh``: what ``mindstream refresh --now`` does: ask the running refresh loop (any process
  sharing the state directory) for a round now; the round itself runs there.

Publishing and dropping are serialised with every other publisher of the alias, in this process and
in others (the refresh worker, ``mindstream rollback``: ``workers.refresh.publish_lock``); a call while one
runs is refused (:class:`Busy`, HTTP 409) instead of queued behind a long publish or refresh round.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from workers.infra.vector_store import AliasedCollectionError, VectorStore
from workers.refresh.live_writer import LiveWriter, NoRollback
from workers.refresh.publish import Publisher
from workers.refresh.publish_lock import PublishBusy, lock_path, publish_lock
from workers.refresh.registry import ModelRegistry
from workers.refresh.segments import SegmentMap
from workers.refresh.state import RefreshState
from workers.settings import Settings

__all__ = [
    "Admin",
    "Busy",
    "CountResult",
    "DropResult",
    "InsertResult",
    "NoModel",
    "NotLive",
    "NothingToRollBack",
    "RefreshRequested",
    "RollbackResult",
]

log = logging.getLogger(__name__)


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CountResult(_Result):
    count: int = Field(description="Item vectors in the live collection")
    collection: str = Field(description="Collection the live alias points at")
    model_version: str | None = Field(description="Model version that produced the vectors (None: not ours)")


class InsertResult(_Result):
    model_version: str
    collection: str
    rows: int = Field(description="Item vectors in the published collection")
    previous: str | None = Field(description="Collection the alias pointed at before (kept for rollback)")
    swapped: bool = Field(description="False when this version was already live (nothing rebuilt)")
    phases: dict[str, float] = Field(default_factory=dict, description="Seconds per publish phase")


class DropResult(_Result):
    alias_dropped: bool
    dropped: list[str] = Field(description="Collections dropped")
    kept: list[str] = Field(description="Collections of ours kept because another alias points at them")


class RollbackResult(_Result):
    live: str = Field(description="Collection the alias points at now")
    model_version: str | None = Field(description="Model version of that collection")
    was: str | None = Field(description="Collection it pointed at before (kept for the next rollback)")


class RefreshRequested(_Result):
    requested: bool = Field(
        description="The request is on the live collection: the refresh loop starts a round within a poll"
    )
    request: str = Field(description="The request's id (a property of the live collection, read by the refresh loop)")


class Busy(RuntimeError):
    """Another publish or drop is running."""


class NoModel(RuntimeError):
    """The model registry holds no checkpoint to publish."""


class NotLive(RuntimeError):
    """The live alias points at no collection."""


class NothingToRollBack(RuntimeError):
    """No superseded collection is left to point the alias back at."""


class Admin:
    def __init__(self, settings: Settings, store: VectorStore, registry: ModelRegistry | None = None) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry or ModelRegistry.from_settings(settings)
        self.state_path: Path = RefreshState.file(settings.refresh_dir)
        self.segments_path: Path = settings.refresh_dir / "segments.sqlite"

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The alias's publish lock: it excludes this gateway's other threads as well as other processes."""
        try:
            with publish_lock(lock_path(self.settings.refresh_dir, self.registry.alias), wait=False):
                yield
        except PublishBusy:
            raise Busy(
                "a refresh round, insert_data or drop is already working on the alias: try again when it has finished"
            ) from None

    def live(self) -> str | None:
        return self.store.resolve_alias(self.registry.alias)

    def count(self) -> CountResult:
        collection = self.live()
        if collection is None:
            raise NotLive(f"alias {self.registry.alias} points at no collection")
        return CountResult(
            count=self.store.count(collection),
            collection=collection,
            model_version=self.registry.version_of(collection),
        )

    def insert_data(self) -> InsertResult:
        with self._exclusive():
            ckpt = self.registry.latest()
            if ckpt is None:
                raise NoModel(f"no model checkpoint under {self.registry.root.name}/: train or refresh one first")
            version = ckpt.manifest.version
            collection = self.registry.collection_for(version)
            if self.live() == collection:
                return InsertResult(
                    model_version=version,
                    collection=collection,
                    rows=self.store.count(collection),
                    previous=collection,
                    swapped=False,
                )
            state = RefreshState.load(self.state_path)
            segments = SegmentMap(self.segments_path) if self.segments_path.exists() else None
            try:
                publisher = Publisher(
                    self.store,
                    self.registry,
                    self.settings.refresh,
                    segments=segments,
                    top_n=self.settings.eval.top_n,
                    seed=self.settings.train.seed,
                )
                report = publisher.publish(ckpt, state)
            finally:
                if segments is not None:
                    segments.close()
            state.save(self.state_path)
            publisher.seal(report)
            return InsertResult(
                model_version=report.version,
                collection=report.collection,
                rows=report.rows,
                previous=report.previous,
                swapped=report.swapped,
                phases=report.phases,
            )

    def rollback(self) -> RollbackResult:
        """The previous announcement of the live collection (a delta undone), else the previous epoch."""
        with self._exclusive():
            live = self.store.resolve_alias(self.registry.alias)
            if live is not None:
                writer = LiveWriter(self.store, self.settings.mind.dim)
                try:
                    (_, version), (_, was) = writer.rollback(live)
                    version = version or self.registry.version_of(live)
                    log.warning("rolled %s back to %s (was %s)", live, version, was)
                    return RollbackResult(live=live, model_version=version, was=f"{live}@{was}")
                except NoRollback:
                    pass
            state = RefreshState.load(self.state_path)
            try:
                target, previous = Publisher(self.store, self.registry, self.settings.refresh).rollback(state)
            except RuntimeError as exc:
                raise NothingToRollBack(str(exc)) from None
            state.epoch_deltas = 0
            state.save(self.state_path)
        log.warning("rolled alias %s back to %s (was %s)", self.registry.alias, target, previous)
        return RollbackResult(live=target, model_version=self.registry.version_of(target), was=previous)

    def refresh(self) -> RefreshRequested:
        from workers.refresh.worker import NothingLive, request_refresh

        try:
            return RefreshRequested(requested=True, request=request_refresh(self.store, self.registry.alias))
        except NothingLive as exc:
            raise NotLive(str(exc)) from None

    def drop(self) -> DropResult:
        with self._exclusive():
            alias = self.registry.alias
            alias_dropped = self.live() is not None
            if alias_dropped:
                self.store.drop_alias(alias)
            dropped, kept = [], []
            for name in self.store.list_collections(alias + "_v"):
                if self.registry.version_of(name) is None:
                    continue
                try:
                    self.store.drop_collection(name)
                    dropped.append(name)
                except AliasedCollectionError:
                    kept.append(name)
            if dropped and self.state_path.exists():
                state = RefreshState.load(self.state_path)
                state.superseded = [s for s in state.superseded if s.collection not in dropped]
                state.save(self.state_path)
            log.warning("dropped alias %s (%s) and collections %s", alias, alias_dropped, dropped)
            return DropResult(alias_dropped=alias_dropped, dropped=dropped, kept=kept)
