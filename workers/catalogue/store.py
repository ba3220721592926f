"""Catalogue state: SQLite (WAL), one file per partition of the items topic:
``<state_dir>/catalogue/<topic>-p<N>.sqlite``, with the ingest state's conventions
(``workers/ingest/state_store.py``):

* **Atomic with the position.** One ``BEGIN IMMEDIATE`` transaction per batch writes the items *and*
  the partition's last offset; the worker stores Kafka offsets only after ``COMMIT`` returned and
  resumes from the offset kept here, so a crash can only re-read, never lose.
* **Idempotent.** An item's row is the event with the newest ``ts`` (ties: the later record): an
  upsert that is older than the row changes nothing, so re-reading a batch gives the same rows.
* **Durable.** ``synchronous=FULL``: a committed withdrawal survives power loss.
* **One row per item.** Disk and memory follow the number of items, whatever the number of events.
  A tombstone (null value) keeps the item's row as unavailable without metadata, so a deleted item
  is never recalled again until a newer event announces it.
* **A change feed.** Every write gives the row the next ``seq`` of its file (indexed): a reader polls
  ``seq > cursor`` for what changed, and the partial index on unavailable rows answers
  "which items are withdrawn" in time proportional to their number.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from schemas.messages import ItemEvent

__all__ = [
    "SCHEMA_VERSION",
    "ApplyResult",
    "ItemRecord",
    "ItemStore",
    "Tombstone",
    "catalogue_dir",
    "partition_path",
    "record_of",
]

SCHEMA_VERSION: Final = 1
# Categories are stored joined by the ASCII unit separator, which a category never contains (no control
# characters: schemas.messages.CATEGORY_PATTERN); splitting is ~10x faster than a JSON array per row.
_SEPARATOR: Final = "\x1f"
_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS items (
        item_id INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        available INTEGER NOT NULL,
        title TEXT,
        categories TEXT,
        segment TEXT,
        seq INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS items_by_seq ON items (seq)",
    "CREATE INDEX IF NOT EXISTS items_unavailable ON items (item_id) WHERE available = 0",
    """CREATE TABLE IF NOT EXISTS positions (
        topic TEXT NOT NULL,
        partition INTEGER NOT NULL,
        last_offset INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (topic, partition)
    )""",
)
_COLUMNS: Final = "item_id, ts, available, title, categories, segment"
# The newest wins; ties go to the later record (a producer re-announcing an item at the same ts).
_UPSERT: Final = (
    f"INSERT INTO items ({_COLUMNS}, seq) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (item_id) DO UPDATE SET ts = excluded.ts, available = excluded.available, "
    "title = excluded.title, categories = excluded.categories, segment = excluded.segment, seq = excluded.seq "
    "WHERE excluded.ts >= items.ts"
)
# A tombstone always applies (it is the newest record of its key): unavailable, no metadata, and a ts
# no older than the row's, so only an event at least as new announces the item again.
_TOMBSTONE: Final = (
    f"INSERT INTO items ({_COLUMNS}, seq) VALUES (?, ?, 0, NULL, NULL, NULL, ?) "
    "ON CONFLICT (item_id) DO UPDATE SET ts = max(items.ts, excluded.ts), available = 0, title = NULL, "
    "categories = NULL, segment = NULL, seq = excluded.seq"
)
_POSITION: Final = (
    "INSERT INTO positions (topic, partition, last_offset, updated_ms) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (topic, partition) DO UPDATE SET last_offset = excluded.last_offset, "
    "updated_ms = excluded.updated_ms"
)


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """An item as the catalogue holds it (the newest event's fields)."""

    item_id: int
    ts: int
    available: bool
    title: str | None = None
    categories: tuple[str, ...] = ()
    segment: str | None = None

    @staticmethod
    def from_row(row: Sequence[Any]) -> ItemRecord:
        """From ``SELECT item_id, ts, available, title, categories, segment``."""
        item_id, ts, available, title, categories, segment = row
        cats = tuple(categories.split(_SEPARATOR)) if categories else ()
        return ItemRecord(int(item_id), int(ts), bool(available), title, cats, segment)


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A null value on the items topic: the item is deleted (``ts``: the record's Kafka timestamp, or 0)."""

    item_id: int
    ts: int = 0


def record_of(event: ItemEvent) -> ItemRecord:
    return ItemRecord(
        event.item_id, event.ts, event.available, event.title, tuple(event.categories or ()), event.segment
    )


def catalogue_dir(state_dir: Path) -> Path:
    return state_dir / "catalogue"


def partition_path(state_dir: Path, topic: str, partition: int) -> Path:
    """The file partition ``partition`` of ``topic`` is applied to (Kafka topic names are path-safe)."""
    return catalogue_dir(state_dir) / f"{topic}-p{partition}.sqlite"


def _row(record: ItemRecord, seq: int) -> tuple[object, ...]:
    categories = _SEPARATOR.join(record.categories) if record.categories else None
    return (record.item_id, record.ts, int(record.available), record.title, categories, record.segment, seq)


@dataclass(frozen=True)
class ApplyResult:
    """One :meth:`ItemStore.apply`: rows changed (events newer than the row, and tombstones) and
    events ignored because the row was newer."""

    changed: int
    stale: int


class ItemStore:
    """The single writer of one partition's file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version not in (0, SCHEMA_VERSION):
            self._conn.close()
            raise RuntimeError(f"{path}: catalogue schema {version}, this code reads {SCHEMA_VERSION}")
        with _Transaction(self._conn):
            for statement in _SCHEMA:
                self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @classmethod
    def open(cls, state_dir: Path, topic: str, partition: int) -> ItemStore:
        return cls(partition_path(state_dir, topic, partition))

    def apply(
        self, changes: Sequence[ItemRecord | Tombstone], topic: str, partition: int, last_offset: int
    ) -> ApplyResult:
        """Apply ``changes`` in their (offset) order and record ``last_offset``, in one durable transaction."""
        changed = 0
        events = 0
        with _Transaction(self._conn):
            seq = int(self._conn.execute("SELECT coalesce(max(seq), 0) FROM items").fetchone()[0])
            for change in changes:
                seq += 1
                if isinstance(change, Tombstone):
                    cursor = self._conn.execute(_TOMBSTONE, (change.item_id, change.ts, seq))
                else:
                    events += 1
                    cursor = self._conn.execute(_UPSERT, _row(change, seq))
                changed += cursor.rowcount
            self._conn.execute(_POSITION, (topic, partition, last_offset, int(time.time() * 1000)))
        tombstones = len(changes) - events
        return ApplyResult(changed, events - (changed - tombstones))

    def last_offset(self, topic: str, partition: int) -> int | None:
        """The offset of the last message applied (valid or dead-lettered), None before the first batch."""
        row = self._conn.execute(
            "SELECT last_offset FROM positions WHERE topic = ? AND partition = ?", (topic, partition)
        ).fetchone()
        return None if row is None else int(row[0])

    def get(self, item_id: int) -> ItemRecord | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM items WHERE item_id = ?", (item_id,)).fetchone()
        return None if row is None else ItemRecord.from_row(row)

    def counts(self) -> tuple[int, int]:
        """``(items, unavailable items)`` in this file."""
        items = int(self._conn.execute("SELECT count(*) FROM items").fetchone()[0])
        gone = int(self._conn.execute("SELECT count(*) FROM items WHERE available = 0").fetchone()[0])
        return items, gone

    def close(self) -> None:
        self._conn.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` when the block raises."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        self._conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")
