"""Where served models live: checkpoints ``v<N>`` under one root, each served from the Milvus
collection ``<alias>_v<N>``. The collection name therefore names the model version that produced
its vectors, and any reader holding a collection name can load the matching user tower."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from model.checkpoint import Checkpoint, list_versions, open_checkpoint


@dataclass(frozen=True)
class ModelRegistry:
    root: Path
    alias: str

    def collection_for(self, version: str) -> str:
        return f"{self.alias}_{version}"

    def version_of(self, collection: str) -> str | None:
        """``<alias>_v<N>`` -> ``v<N>``; None for collections that are not ours."""
        match = re.fullmatch(re.escape(self.alias) + r"_(v\d+)", collection)
        return match.group(1) if match else None

    def checkpoint(self, version: str) -> Checkpoint:
        return open_checkpoint(self.root, version)

    def versions(self) -> list[str]:
        return list_versions(self.root)

    def latest(self) -> Checkpoint | None:
        versions = self.versions()
        return open_checkpoint(self.root, versions[-1]) if versions else None
