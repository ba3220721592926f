"""Generations of a live collection: what the fast path added to a version, and what is announced.

A model version ``v<N>`` is built as generation 0. Each fast-path step adds the vectors of items
the version did not know (computed under that version's weights) as generation ``g + 1`` rows of
the same collection, verifies them, and only then writes this file: readers search
``generation <= g`` for the ``g`` they read here, so rows of a step that has not been announced
(or crashed half-way) are never seen. One JSON file per collection, under the models directory
(every worker that serves a version can read it), written atomically (temp + fsync + rename).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

GENERATIONS_DIR = "generations"


@dataclass
class Generations:
    collection: str
    generation: int = 0
    items: list[int] = field(default_factory=list)  # external ids added by generations 1..generation
    announced_at: list[float] = field(default_factory=list)  # time.time() of each generation's announce

    @staticmethod
    def path(models_dir: Path, collection: str) -> Path:
        return models_dir / GENERATIONS_DIR / f"{collection}.json"

    @staticmethod
    def load(models_dir: Path, collection: str) -> Generations:
        """The announced state of ``collection`` (generation 0 when nothing was added)."""
        path = Generations.path(models_dir, collection)
        if not path.exists():
            return Generations(collection)
        return Generations(**json.loads(path.read_text()))

    def save(self, models_dir: Path) -> None:
        path = Generations.path(models_dir, self.collection)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            fh.write(json.dumps(asdict(self)))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def drop(self, models_dir: Path) -> None:
        Generations.path(models_dir, self.collection).unlink(missing_ok=True)


def announced_generation(models_dir: Path, collection: str, known_stamp: float = 0.0) -> tuple[int | None, float]:
    """``(generation, mtime)`` of ``collection``'s file, cheap enough to poll: ``(0, 0.0)`` if none, and
    ``(None, known_stamp)`` without reading the file when its mtime is still ``known_stamp``."""
    path = Generations.path(models_dir, collection)
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return 0, 0.0
    if mtime == known_stamp:
        return None, known_stamp
    return Generations.load(models_dir, collection).generation, mtime
