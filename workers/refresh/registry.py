"""Where served models live: checkpoints ``v<N>`` under one root, each served from the Milvus
collection ``<alias>_v<N>``. The collection name therefore names the model version that produced
its vectors, and any reader holding a collection name can load the matching user tower.

The refresh worker writes versions under its local ``root``; with a shared store
(``models.store_url``, :mod:`workers.infra.model_store`) it also publishes each one there, and
readers on other hosts list and fetch versions from the store (into their local cache)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from model.checkpoint import Checkpoint, list_versions, open_checkpoint
from workers.infra.model_store import LocalModelStore, ModelStore, model_store
from workers.settings import Settings


@dataclass(frozen=True)
class ModelRegistry:
    root: Path
    alias: str
    store: ModelStore | None = None  # None: ``root`` is all there is (one host)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        store = model_store(settings)
        return cls(settings.models_dir, settings.milvus.alias, None if isinstance(store, LocalModelStore) else store)

    def collection_for(self, version: str) -> str:
        return f"{self.alias}_{version}"

    def version_of(self, collection: str) -> str | None:
        """``<alias>_v<N>`` -> ``v<N>``; None for collections that are not ours."""
        match = re.fullmatch(re.escape(self.alias) + r"_(v\d+)", collection)
        return match.group(1) if match else None

    def checkpoint(self, version: str) -> Checkpoint:
        if self.store is None or (self.root / version / "manifest.json").exists():
            return open_checkpoint(self.root, version)
        return open_checkpoint(self.store.fetch(version).parent, version)

    def versions(self) -> list[str]:
        return self.store.versions() if self.store is not None else list_versions(self.root)

    def latest(self) -> Checkpoint | None:
        versions = self.versions()
        return self.checkpoint(versions[-1]) if versions else None

    def publish(self, ckpt: Checkpoint) -> None:
        """Make a version saved under ``root`` readable from the shared store (nothing to do without one)."""
        if self.store is not None:
            self.store.publish(ckpt.path, ckpt.manifest.version)

    def forget(self, versions: Iterable[str]) -> None:
        """Delete versions pruned from ``root`` from the shared store too."""
        if self.store is not None:
            for version in versions:
                self.store.delete(version)
