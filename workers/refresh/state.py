"""The refresh worker's own durable state: the training-buffer cursor, the event count it has
seen, and the superseded collections kept for rollback. Written atomically (temp + rename).

The live version is never stored here: Milvus' alias is the single source of truth for it, so a
crash between ``alter_alias`` and this write cannot leave two opinions about what is live."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workers.ingest.state_reader import Cursor


@dataclass
class Superseded:
    collection: str
    since: float  # when it stopped being live (time.time())


@dataclass
class RefreshState:
    cursor: str = "{}"  # Cursor.to_json()
    events_seen: int = 0
    superseded: list[Superseded] = field(default_factory=list)
    rounds: int = 0
    swaps: int = 0
    epoch_deltas: int = 0  # delta rounds published into the live collection since it was built

    @staticmethod
    def file(refresh_dir: Path) -> Path:
        """Where the refresh worker keeps its state."""
        return refresh_dir / "state.json"

    def get_cursor(self) -> Cursor:
        return Cursor.from_json(self.cursor)

    @staticmethod
    def load(path: Path) -> RefreshState:
        if not path.exists():
            return RefreshState()
        raw = json.loads(path.read_text())
        raw["superseded"] = [Superseded(**s) for s in raw.get("superseded", [])]
        return RefreshState(**raw)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
