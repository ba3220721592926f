"""Generations of a live collection: what is announced, and with which model version.

A collection (an *epoch*) is built as generation 0 by the model version it is named after. Each
later write, a fast-path step (new items under the live version's weights) or a delta (the rows a
major round changed, under its new version), goes in as generation ``g + 1`` rows of the same
collection, is verified, and only then is announced here as ``(generation, version)``: readers
search the rows visible at the ``g`` they read (:func:`workers.infra.row_keys.visible`) with the
tower of the ``version`` they read, so rows of a write that has not been announced (or crashed
half-way) are never seen. ``history`` keeps the newest announcement of each recent version: a rollback
announces the previous version's. One JSON file per collection, under the models directory (every worker that serves a
version can read it), written atomically (temp + fsync + rename).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

GENERATIONS_DIR = "generations"


HISTORY_KEPT = 8


@dataclass
class Generations:
    collection: str
    generation: int = 0
    items: list[int] = field(default_factory=list)  # ids the fast path added under ``version`` (since it)
    announced_at: list[float] = field(default_factory=list)  # time.time() of the announcements kept
    version: str | None = None  # the model version readers use; None: the collection's own (its name)
    history: list[tuple[int, str | None]] = field(default_factory=list)  # (generation, version), newest last

    def announce(self, generation: int, version: str | None, at: float) -> None:
        """Record ``(generation, version)`` as the announced state (the caller saves it). ``history`` keeps
        the newest announcement of each of the last versions: a rollback goes back a version, not a step."""
        if version != self.version:
            self.items = []  # a new version: what the fast path added is in it, or is added again
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
    def path(models_dir: Path, collection: str) -> Path:
        return models_dir / GENERATIONS_DIR / f"{collection}.json"

    @staticmethod
    def load(models_dir: Path, collection: str) -> Generations:
        """The announced state of ``collection`` (generation 0 when nothing was added)."""
        path = Generations.path(models_dir, collection)
        if not path.exists():
            return Generations(collection)
        data = json.loads(path.read_text())
        data["history"] = [tuple(entry) for entry in data.get("history", [])]
        return Generations(**data)

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


def announced(models_dir: Path, collection: str, known_stamp: float = 0.0) -> tuple[Generations | None, float]:
    """``(state, mtime)`` of ``collection``'s file, cheap enough to poll: generation 0 if none, and
    ``(None, known_stamp)`` without reading the file when its mtime is still ``known_stamp``."""
    path = Generations.path(models_dir, collection)
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return Generations(collection), 0.0
    if mtime == known_stamp:
        return None, known_stamp
    return Generations.load(models_dir, collection), mtime


def announced_generation(models_dir: Path, collection: str, known_stamp: float = 0.0) -> tuple[int | None, float]:
    """:func:`announced`'s generation only."""
    state, stamp = announced(models_dir, collection, known_stamp)
    return (state.generation if state is not None else None), stamp
