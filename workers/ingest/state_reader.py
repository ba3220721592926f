"""Read-only view over every partition file of the ingest state (for the refresh and recall workers).

Opening files read-only never blocks the ingest writer (WAL). New partition files are picked up on
each call. A cursor is the last ``seq`` read per file; persist it with ``Cursor.to_json``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from workers.ingest.state_store import (
    ClickColumns,
    StoredClick,
    columns_after,
    event_total,
    events_after,
    history_items,
    history_rows,
    ingest_dir,
)

_Part = TypeVar("_Part", bound=Sized)


@dataclass(frozen=True)
class Cursor:
    """Position in the training buffer: file name -> last seq read (absent = nothing read yet)."""

    positions: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def to_json(self) -> str:
        return json.dumps(dict(sorted(self.positions.items())))

    @classmethod
    def from_json(cls, text: str) -> Cursor:
        raw = json.loads(text)
        if not isinstance(raw, dict) or not all(isinstance(v, int) for v in raw.values()):
            raise ValueError("a cursor is a JSON object of file name -> integer")
        return cls(MappingProxyType({str(k): v for k, v in raw.items()}))


class StateReader:
    """``history(user_id, maxlen)``, ``events_since(cursor)``, ``event_count()`` across partition files."""

    def __init__(self, state_dir: Path, topic: str) -> None:
        self.directory = ingest_dir(state_dir)
        self.topic = topic
        self._conns: dict[str, sqlite3.Connection] = {}

    def _connections(self) -> dict[str, sqlite3.Connection]:
        for path in sorted(self.directory.glob(f"{self.topic}-p*.sqlite")):
            if path.name not in self._conns:
                uri = f"{path.resolve().as_uri()}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
                if conn.execute("PRAGMA user_version").fetchone()[0] == 0:  # writer still creating it
                    conn.close()
                    continue
                self._conns[path.name] = conn
        return self._conns

    def history(self, user_id: int, maxlen: int) -> list[int]:
        """The user's last ``maxlen`` item ids by event time, newest last (looks in every file)."""
        return self.histories([user_id], maxlen)[0]

    def histories(self, users: Sequence[int], maxlen: int) -> list[list[int]]:
        """``history(u, maxlen)`` for each of ``users``, in their order (the files are listed once)."""
        return list(self._each_history(users, maxlen))

    def history_arrays(self, users: Sequence[int], maxlen: int) -> list[npt.NDArray[np.int64]]:
        """:meth:`histories` as one int64 array per user (what the refresh's rounds keep: no Python int
        per click held beyond one user's read)."""
        return [np.asarray(items, dtype=np.int64) for items in self._each_history(users, maxlen)]

    def _each_history(self, users: Sequence[int], maxlen: int) -> Iterator[list[int]]:
        """Each user's history in turn, read when asked for (a caller keeps what it wants of each)."""
        if maxlen <= 0:
            yield from ([] for _ in users)
            return
        conns = list(self._connections().values())
        if len(conns) == 1:  # one partition: the index gives each user's order, no merge to do
            yield from (history_items(conns[0], user, maxlen) for user in users)
            return
        for user in users:
            rows = [row for conn in conns for row in history_rows(conn, user, maxlen)]
            rows.sort(key=lambda r: (r.ts, r.seq))
            yield [r.item_id for r in rows[-maxlen:]]

    def _since(
        self,
        cursor: Cursor,
        limit: int | None,
        read: Callable[[sqlite3.Connection, int, int | None], tuple[_Part, int]],
    ) -> tuple[list[_Part], Cursor]:
        """What ``read`` returns of each file after ``cursor`` (file by file, at most ``limit`` rows in all)."""
        parts: list[_Part] = []
        taken = 0
        positions = dict(cursor.positions)
        for name, conn in self._connections().items():
            left = None if limit is None else limit - taken
            if left is not None and left <= 0:
                break
            got, last = read(conn, positions.get(name, 0), left)
            if len(got):
                parts.append(got)
                taken += len(got)
                positions[name] = last
        return parts, Cursor(MappingProxyType(positions))

    def events_since(self, cursor: Cursor, limit: int | None = None) -> tuple[list[StoredClick], Cursor]:
        """Events appended after ``cursor`` (file by file, append order within a file) and the new cursor.

        ``limit`` caps the events returned in total; call again with the new cursor for the rest.
        """
        parts, after = self._since(cursor, limit, events_after)
        return [event for part in parts for event in part], after

    def columns_since(self, cursor: Cursor, limit: int | None = None) -> tuple[ClickColumns, Cursor]:
        """:meth:`events_since` as columns (user, item, time, the segments named): what a refresh round
        reads, without a Python object per click."""
        parts, after = self._since(cursor, limit, columns_after)
        return ClickColumns.concat(parts), after

    def event_count(self) -> int:
        return sum(event_total(conn) for conn in self._connections().values())

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def __enter__(self) -> StateReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
