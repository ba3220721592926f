"""Read-only view over every partition file of the catalogue state (for recall, the gateway, the refresh).

Opening files read-only never blocks the catalogue writer (WAL); new partition files are picked up on
each call. Across files (the items topic's partitions; an item lives in one unless the partition count
changed) the row with the newest ``ts`` is the item's. A cursor is the last ``seq`` read per file
(:class:`workers.ingest.state_reader.Cursor`, the ingest state's).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Final

from workers.catalogue.store import ItemRecord, catalogue_dir
from workers.ingest.state_reader import Cursor

__all__ = ["CatalogueReader", "Cursor"]

_COLUMNS: Final = "item_id, ts, available, title, categories, segment"
_CHUNK: Final = 500  # ids per IN (...) query, well under SQLite's parameter limit


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def _newer(found: dict[int, ItemRecord], record: ItemRecord) -> None:
    known = found.get(record.item_id)
    if known is None or record.ts >= known.ts:
        found[record.item_id] = record


class CatalogueReader:
    """``unavailable_ids()``, ``changed_since(cursor)``, ``metadata(ids)``, ``counts()`` across partition files."""

    def __init__(self, state_dir: Path, topic: str) -> None:
        self.directory = catalogue_dir(state_dir)
        self.topic = topic
        self._conns: dict[str, sqlite3.Connection] = {}

    def _connections(self) -> dict[str, sqlite3.Connection]:
        for path in sorted(self.directory.glob(f"{self.topic}-p*.sqlite")):
            if path.name not in self._conns:
                conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
                if conn.execute("PRAGMA user_version").fetchone()[0] == 0:  # writer still creating it
                    conn.close()
                    continue
                self._conns[path.name] = conn
        return self._conns

    def unavailable_ids(self) -> set[int]:
        """Items whose newest state is unavailable (withdrawn or deleted): never to be recalled.

        Reads the partial index of unavailable rows: time follows their number, not the catalogue's."""
        conns = list(self._connections().values())
        gone: dict[int, int] = {}
        for conn in conns:
            for item_id, ts in conn.execute("SELECT item_id, ts FROM items WHERE available = 0"):
                gone[item_id] = max(ts, gone.get(item_id, ts))
        if len(conns) > 1 and gone:  # the same item in another file, announced again there later
            for record in self._records(conns, list(gone)):
                if record.available and record.ts > gone[record.item_id]:
                    del gone[record.item_id]
        return set(gone)

    def changed_since(self, cursor: Cursor, limit: int | None = None) -> tuple[list[ItemRecord], Cursor]:
        """Items written after ``cursor`` (their current state, file by file in write order) and the new
        cursor; ``limit`` caps the records returned, call again with the new cursor for the rest."""
        out: list[ItemRecord] = []
        positions = dict(cursor.positions)
        for name, conn in self._connections().items():
            left = -1 if limit is None else limit - len(out)
            if left == 0:
                break
            rows = conn.execute(
                f"SELECT seq, {_COLUMNS} FROM items WHERE seq > ? ORDER BY seq LIMIT ?", (positions.get(name, 0), left)
            ).fetchall()
            if rows:
                out.extend(ItemRecord.from_row(row[1:]) for row in rows)
                positions[name] = int(rows[-1][0])
        return out, Cursor(MappingProxyType(positions))

    def metadata(self, ids: Iterable[int]) -> dict[int, ItemRecord]:
        """The catalogue's record of each of ``ids`` it knows (absent: never announced)."""
        return {r.item_id: r for r in self._records(list(self._connections().values()), list(dict.fromkeys(ids)))}

    def _records(self, conns: list[sqlite3.Connection], ids: list[int]) -> list[ItemRecord]:
        found: dict[int, ItemRecord] = {}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for conn in conns:
                for row in conn.execute(f"SELECT {_COLUMNS} FROM items WHERE item_id IN ({marks})", chunk):
                    _newer(found, ItemRecord.from_row(row))
        return list(found.values())

    def counts(self) -> tuple[int, int]:
        """``(items, unavailable items)`` summed over the files (an item in two files counts twice)."""
        items = gone = 0
        for conn in self._connections().values():
            items += int(conn.execute("SELECT count(*) FROM items").fetchone()[0])
            gone += int(conn.execute("SELECT count(*) FROM items WHERE available = 0").fetchone()[0])
        return items, gone

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def __enter__(self) -> CatalogueReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
