"""Ingest state: SQLite (WAL), one file per Kafka partition: ``<state_dir>/ingest/<topic>-p<N>.sqlite``.

Why this store (the full argument is in ``docs/state-store.md``):

* **Atomic with the position.** One transaction per batch writes the events *and* the partition's
  last applied offset; Kafka offsets are stored only after ``COMMIT`` returned, so a crash can only
  redeliver, never lose. On (re)assignment the worker resumes from the offset kept here.
* **Idempotent.** Every row carries the 128-bit digest of its ``event_id``; the writer keeps the
  digests of its file in memory (``workers.ingest.digest_set``, rebuilt when the file is opened) and skips
  events already there: a redelivered or re-sent event never counts twice (the Kafka key is the user
  id, so copies share a partition file). With ``ingest.dedupe_window`` only the most recent events'
  digests are kept (between the window and twice it): memory stays bounded on an endless stream,
  and a copy re-sent after that many newer events of its partition is applied again. The file
  itself has no unique index: a random-key index costs a random page write per event at every
  commit (schema 1 had one: ~2x the apply time at 1M events).
* **Durable.** ``synchronous=FULL``: the WAL is fsynced at every commit, so a committed batch
  survives ``kill -9`` *and* power loss (NORMAL would survive ``kill -9`` only). One fsync per batch
  of thousands of events is cheap.
* **Scales by partition.** Exactly one consumer owns a partition, so each file has one writer and
  no lock contention; readers (refresh, recall) open every file read-only and never block it (WAL).
* **Bounded by retention.** :meth:`PartitionStore.retain` deletes, in small transactions between
  batches, the rows outside the kept set: each user's last ``history`` clicks and the training
  buffer (events the refresh has not consumed, and the newest ``window`` of the file). The digests
  of deleted rows still inside the dedupe window move to the ``digests`` table in the same
  transaction, so a restart rebuilds exactly the window it would have had; ``auto_vacuum=INCREMENTAL``
  gives the freed pages back to the file system a few at a time (``docs/retention.md``).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from schemas.messages import ClickEvent
from workers.ingest.digest_set import DigestSet, DigestWindow, digest

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 4
_EVENTS: Final = """CREATE TABLE IF NOT EXISTS {name} (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL,
        digest BLOB NOT NULL,
        user_id INTEGER NOT NULL,
        item_id INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        segment TEXT
    )"""
_SCHEMA: Final = (
    _EVENTS.format(name="events"),
    # A user's history in its order, covering the item: a history read is one index range, no table
    # lookups (schema 3's (user_id, ts) index needed one random table page per click read).
    "CREATE INDEX IF NOT EXISTS events_by_user_history ON events (user_id, ts, seq, item_id)",
    "DROP INDEX IF EXISTS events_by_user",
    """CREATE TABLE IF NOT EXISTS positions (
        topic TEXT NOT NULL,
        partition INTEGER NOT NULL,
        last_offset INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (topic, partition)
    )""",
    # Schema 3: retention. The digests of deleted rows that a restart still reads into the dedupe
    # window, and the retention pass's progress (both scans' last seq, rows deleted so far).
    "CREATE TABLE IF NOT EXISTS digests (seq INTEGER PRIMARY KEY, digest BLOB NOT NULL)",
    """CREATE TABLE IF NOT EXISTS retention (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        deleted INTEGER NOT NULL,
        crossed_seq INTEGER NOT NULL,
        appended_seq INTEGER NOT NULL
    )""",
    "INSERT OR IGNORE INTO retention (id, deleted, crossed_seq, appended_seq) VALUES (0, 0, 0, 0)",
)
_INSERT: Final = "INSERT INTO events (event_id, digest, user_id, item_id, ts, segment) VALUES (?, ?, ?, ?, ?, ?)"
# Schema 1 -> 2: drop the UNIQUE index on event_id, add the digest column (seq, hence append order, kept).
_MIGRATE_1_TO_2: Final = (
    _EVENTS.format(name="events_v2"),
    "INSERT INTO events_v2 (seq, event_id, digest, user_id, item_id, ts, segment) "
    "SELECT seq, event_id, mindstream_digest(event_id), user_id, item_id, ts, segment FROM events ORDER BY seq",
    "DROP TABLE events",
    "ALTER TABLE events_v2 RENAME TO events",
)
_POSITION: Final = (
    "INSERT INTO positions (topic, partition, last_offset, updated_ms) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (topic, partition) DO UPDATE SET last_offset = excluded.last_offset, "
    "updated_ms = excluded.updated_ms"
)
_HISTORY: Final = "SELECT ts, seq, item_id FROM events WHERE user_id = ? ORDER BY ts DESC, seq DESC LIMIT ?"
_HISTORY_ITEMS: Final = "SELECT item_id FROM events WHERE user_id = ? ORDER BY ts DESC, seq DESC LIMIT ?"
_SINCE: Final = "SELECT seq, event_id, user_id, item_id, ts, segment FROM events WHERE seq > ? ORDER BY seq"
_CACHE_KIB: Final = 65_536  # page cache per connection; random event_id inserts need it
# A user's rows past their newest ``history`` (the index gives the order; seq is its last column)
# and at or below the buffer's boundary.
_BEYOND_HISTORY: Final = (
    "SELECT seq FROM (SELECT seq FROM events WHERE user_id = ? ORDER BY ts DESC, seq DESC LIMIT -1 OFFSET ?) "
    "WHERE seq <= ?"
)
_USERS_IN: Final = "SELECT seq, user_id FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
_KEEP_DIGEST: Final = "INSERT OR IGNORE INTO digests (seq, digest) SELECT seq, digest FROM events WHERE seq = ?"
_TOTAL: Final = "SELECT (SELECT count(*) FROM events) + coalesce((SELECT deleted FROM retention WHERE id = 0), 0)"
# A file older than schema 3 has auto_vacuum off: switching needs one VACUUM (rewrites the file,
# blocks the writer meanwhile). Done on open up to this size; a bigger file keeps its free pages for
# new rows (it stops growing but does not shrink) until it is vacuumed offline (docs/retention.md).
VACUUM_ON_OPEN_MAX_BYTES: Final = 512 * 1024 * 1024
_AUTO_VACUUM_INCREMENTAL: Final = 2


class StoredClick(NamedTuple):
    """A click as the training buffer returns it."""

    event_id: str
    user_id: int
    item_id: int
    ts: int
    segment: str | None


class HistoryRow(NamedTuple):
    ts: int
    seq: int
    item_id: int


def ingest_dir(state_dir: Path) -> Path:
    return state_dir / "ingest"


def partition_path(state_dir: Path, topic: str, partition: int) -> Path:
    """The file that partition ``partition`` of ``topic`` is applied to (Kafka topic names are path-safe)."""
    return ingest_dir(state_dir) / f"{topic}-p{partition}.sqlite"


def history_rows(conn: sqlite3.Connection, user_id: int, maxlen: int) -> list[HistoryRow]:
    """The user's ``maxlen`` newest clicks in one file, newest first."""
    return [HistoryRow(*row) for row in conn.execute(_HISTORY, (user_id, maxlen))]


def history_items(conn: sqlite3.Connection, user_id: int, maxlen: int) -> list[int]:
    """The user's ``maxlen`` newest item ids in one file, oldest first (no row objects: the refresh
    reads tens of thousands of histories per round)."""
    items = [item for (item,) in conn.execute(_HISTORY_ITEMS, (user_id, maxlen))]
    items.reverse()
    return items


def events_after(conn: sqlite3.Connection, seq: int, limit: int | None) -> tuple[list[StoredClick], int]:
    """Events appended after ``seq`` (in append order) and the seq of the last one returned."""
    sql = _SINCE if limit is None else f"{_SINCE} LIMIT {int(limit)}"
    rows = conn.execute(sql, (seq,)).fetchall()
    if not rows:
        return [], seq
    return [StoredClick(*row[1:]) for row in rows], int(rows[-1][0])


_SINCE_COLUMNS: Final = "SELECT seq, user_id, item_id, ts, segment FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
_FETCH_ROWS: Final = 65_536


@dataclass(frozen=True)
class ClickColumns:
    """Stored clicks as columns, in append order (a refresh round takes up to a million at once: as
    :class:`StoredClick` tuples with their event ids they were ~250 bytes of Python objects each)."""

    user_ids: npt.NDArray[np.int64]
    item_ids: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    segments: tuple[tuple[int, str], ...] = ()  # (item id, segment) of the clicks that named one, in order

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    @staticmethod
    def concat(parts: Sequence[ClickColumns]) -> ClickColumns:
        if not parts:
            empty = np.empty(0, dtype=np.int64)
            return ClickColumns(empty, empty.copy(), empty.copy())
        return ClickColumns(
            np.concatenate([p.user_ids for p in parts]),
            np.concatenate([p.item_ids for p in parts]),
            np.concatenate([p.ts for p in parts]),
            tuple(pair for p in parts for pair in p.segments),
        )


def columns_after(conn: sqlite3.Connection, seq: int, limit: int | None) -> tuple[ClickColumns, int]:
    """:func:`events_after` as columns (read a slice of rows at a time: no list of every row)."""
    cursor = conn.execute(_SINCE_COLUMNS, (seq, -1 if limit is None else int(limit)))
    users: list[npt.NDArray[np.int64]] = []
    items: list[npt.NDArray[np.int64]] = []
    times: list[npt.NDArray[np.int64]] = []
    segments: list[tuple[int, str]] = []
    last = seq
    while rows := cursor.fetchmany(_FETCH_ROWS):
        n = len(rows)
        users.append(np.fromiter((r[1] for r in rows), dtype=np.int64, count=n))
        items.append(np.fromiter((r[2] for r in rows), dtype=np.int64, count=n))
        times.append(np.fromiter((r[3] for r in rows), dtype=np.int64, count=n))
        segments.extend((r[2], r[4]) for r in rows if r[4] is not None)
        last = int(rows[-1][0])
    if not users:
        return ClickColumns.concat([]), seq
    return ClickColumns(np.concatenate(users), np.concatenate(items), np.concatenate(times), tuple(segments)), last


def event_total(conn: sqlite3.Connection) -> int:
    """Events ever applied to the file: the rows there plus those retention deleted."""
    try:
        return int(conn.execute(_TOTAL).fetchone()[0])
    except sqlite3.OperationalError:  # a schema-2 file whose writer has not migrated it yet
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


@dataclass(frozen=True)
class RetentionPolicy:
    """What :meth:`PartitionStore.retain` keeps: each user's newest ``history`` clicks (by event
    time, ties by arrival, as ``history`` reads them), and the training buffer: every event after
    ``consumed`` (the refresh's cursor in this file) and the newest ``window`` events whatever the
    cursor. ``max_unconsumed``: keep at most this many unconsumed events (a refresh that stopped
    must not fill the disk); None = until consumed. ``batch``: rows scanned per step."""

    history: int
    window: int
    max_unconsumed: int | None = None
    batch: int = 1000
    vacuum_pages: int = 1024

    def __post_init__(self) -> None:
        if self.history < 1 or self.window < 1 or self.batch < 1 or self.vacuum_pages < 0:
            raise ValueError(f"invalid retention policy {self}")
        if self.max_unconsumed is not None and self.max_unconsumed < 1:
            raise ValueError(f"invalid retention policy {self}")

    def boundary(self, last_seq: int, consumed: int) -> int:
        """Rows with ``seq`` at or below this are outside the training buffer."""
        cut = min(consumed, last_seq - self.window)
        if self.max_unconsumed is not None:
            cut = max(cut, last_seq - self.max_unconsumed)
        return max(0, min(cut, last_seq - self.window))  # the window is kept whatever the cap


@dataclass(frozen=True)
class RetentionStep:
    """One :meth:`PartitionStore.retain` call: rows deleted, users looked at, and whether scanned
    rows are left (call again soon) or the pass is complete for now."""

    deleted: int
    users: int
    pending: bool
    boundary: int
    freed_pages: int = 0


class PartitionStore:
    """The single writer of one partition's file."""

    def __init__(self, path: Path, dedupe_window: int | None = None) -> None:
        """``dedupe_window``: remember the event ids of the last ``dedupe_window`` to twice that many
        events only (bounded memory for a stream that never ends); None = every event of the file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.dedupe_window = dedupe_window
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Takes effect only on a new file, and only before the journal mode writes its header.
        self._conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version not in (0, 1, 2, 3, SCHEMA_VERSION):
            self._conn.close()
            raise RuntimeError(f"{path}: state schema {version}, this code reads {SCHEMA_VERSION}")
        with self._transaction():
            if version == 1:
                self._conn.create_function("mindstream_digest", 1, digest, deterministic=True)
                for statement in _MIGRATE_1_TO_2:
                    self._conn.execute(statement)
            began = time.perf_counter()
            for statement in _SCHEMA:
                self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        if 0 < version < SCHEMA_VERSION:
            log.info("%s: state schema %d -> %d in %.1f s", path, version, SCHEMA_VERSION, time.perf_counter() - began)
        self._switch_auto_vacuum()
        self._seen: DigestSet | DigestWindow = DigestSet() if dedupe_window is None else DigestWindow(dedupe_window)
        # the digests of every row up to this seq are in ``_seen`` (with a window: the last rows only)
        self._known_seq = 0 if dedupe_window is None else max(0, self._last_seq() - dedupe_window)
        self._catch_up()

    def _switch_auto_vacuum(self) -> None:
        """A file created before schema 3 without incremental auto-vacuum: switch it (one VACUUM) when small."""
        if int(self._conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == _AUTO_VACUUM_INCREMENTAL:
            return
        size = self.path.stat().st_size
        if size > VACUUM_ON_OPEN_MAX_BYTES:
            log.warning(
                "%s (%d MB) has auto_vacuum off: retention frees pages for new rows but the file will not "
                "shrink until it is vacuumed offline (docs/retention.md)",
                self.path,
                size >> 20,
            )
            return
        began = time.perf_counter()
        self._conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._conn.execute("VACUUM")
        log.info("%s: switched to incremental auto-vacuum in %.1f s", self.path, time.perf_counter() - began)

    def _catch_up(self) -> None:
        """Add the digests of rows appended since ``_known_seq`` (all rows on open; a zombie's later),
        including those retention deleted since (their digests moved to ``digests``)."""
        rows = self._conn.execute(
            "SELECT seq, digest FROM events WHERE seq > ? UNION ALL SELECT seq, digest FROM digests WHERE seq > ? "
            "ORDER BY seq",
            (self._known_seq, self._known_seq),
        )
        last, digests = self._known_seq, []
        for seq, row_digest in rows:
            digests.append(row_digest)
            last = seq
        self._seen.add(digests)
        self._known_seq = last

    def _last_seq(self) -> int:
        return int(self._conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])

    @property
    def name(self) -> str:
        """The file's name: a :class:`~workers.ingest.state_reader.Cursor` names this partition's stream so."""
        return self.path.name

    @classmethod
    def open(cls, state_dir: Path, topic: str, partition: int, dedupe_window: int | None = None) -> PartitionStore:
        return cls(partition_path(state_dir, topic, partition), dedupe_window)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)

    def apply(self, events: Sequence[ClickEvent], topic: str, partition: int, last_offset: int) -> int:
        """Append new events and record ``last_offset`` in one durable transaction; returns rows inserted.

        An event whose ``event_id`` is already in the file (or earlier in ``events``) is skipped. The
        file normally has one writer, but a consumer the group gave up on (a "zombie" that was paused
        past its session timeout) may still commit a batch after the partition moved: ``BEGIN
        IMMEDIATE`` serialises writers, and inside it any rows appended by someone else are read
        into the set before this batch is filtered, so de-duplication stays exact.
        """
        firsts: dict[str, ClickEvent] = {}
        for event in events:
            firsts.setdefault(event.event_id, event)
        digests = [digest(event_id) for event_id in firsts]
        with self._transaction():
            if self._last_seq() != self._known_seq:
                self._catch_up()
            seen = self._seen.contains(digests)
            rows = [
                (e.event_id, d, e.user_id, e.item_id, e.ts, e.segment)
                for e, d, dup in zip(firsts.values(), digests, seen, strict=True)
                if not dup
            ]
            if rows:
                self._conn.executemany(_INSERT, rows)
            new_seq = self._last_seq()
            self._conn.execute(_POSITION, (topic, partition, last_offset, int(time.time() * 1000)))
        self._seen.add([row[1] for row in rows])  # only after COMMIT: a failed batch leaves the set as the file is
        self._known_seq = new_seq
        return len(rows)

    def last_offset(self, topic: str, partition: int) -> int | None:
        """The offset of the last message applied (valid or dead-lettered), None before the first batch."""
        row = self._conn.execute(
            "SELECT last_offset FROM positions WHERE topic = ? AND partition = ?", (topic, partition)
        ).fetchone()
        return None if row is None else int(row[0])

    def history(self, user_id: int, maxlen: int) -> list[int]:
        """The user's last ``maxlen`` item ids, newest last."""
        return [r.item_id for r in reversed(history_rows(self._conn, user_id, maxlen))]

    def events_since(self, cursor: int, limit: int | None = None) -> tuple[list[StoredClick], int]:
        return events_after(self._conn, cursor, limit)

    def event_count(self) -> int:
        return event_total(self._conn)

    def retain(self, policy: RetentionPolicy, consumed: int) -> RetentionStep:
        """One bounded retention step (one short transaction, then a few pages given back).

        Kept: each user's newest ``policy.history`` clicks and every row after
        ``policy.boundary(last, consumed)``. Two scans find the users whose rows may have left the
        kept set: rows that crossed the boundary since the last step, and rows appended since (a
        newer click pushes an older one out of its user's history); each scan reads at most
        ``policy.batch`` rows by seq. For those users, rows past their history and at or below the
        boundary are deleted. The scans' positions are stored in the same transaction, so a crash
        rolls the step back whole and the next step redoes it: idempotent, nothing kept is ever
        deleted, and the digests of deleted rows still in the dedupe window are kept in ``digests``
        (a restart reads them back: re-sent copies stay duplicates).
        """
        with self._transaction():
            last = self._last_seq()
            boundary = policy.boundary(last, consumed)
            deleted, crossed, appended = self._conn.execute(
                "SELECT deleted, crossed_seq, appended_seq FROM retention WHERE id = 0"
            ).fetchone()
            users: set[int] = set()
            pending = False
            if boundary > crossed:
                crossed, more = self._scan(crossed, boundary, policy.batch, users)
                pending |= more
            if last > appended:
                appended, more = self._scan(appended, last, policy.batch, users)
                pending |= more
            victims = [
                seq
                for user in sorted(users)
                for (seq,) in self._conn.execute(_BEYOND_HISTORY, (user, policy.history, boundary))
            ]
            if victims:
                dedupe_floor = 0 if self.dedupe_window is None else last - self.dedupe_window
                self._conn.executemany(_KEEP_DIGEST, [(seq,) for seq in victims if seq > dedupe_floor])
                self._conn.executemany("DELETE FROM events WHERE seq = ?", [(seq,) for seq in victims])
            if self.dedupe_window is not None:  # digests a restart no longer reads (bounded per step)
                self._conn.execute(
                    "DELETE FROM digests WHERE seq IN (SELECT seq FROM digests WHERE seq <= ? ORDER BY seq LIMIT ?)",
                    (last - self.dedupe_window, policy.batch),
                )
            self._conn.execute(
                "UPDATE retention SET deleted = ?, crossed_seq = ?, appended_seq = ? WHERE id = 0",
                (deleted + len(victims), crossed, appended),
            )
        freed = self.give_back(policy.vacuum_pages)
        return RetentionStep(len(victims), len(users), pending, boundary, freed)

    def _scan(self, after: int, upto: int, limit: int, users: set[int]) -> tuple[int, bool]:
        """Add the users of rows ``after < seq <= upto`` (at most ``limit`` rows) to ``users``; returns
        the new position and whether rows are left."""
        rows = self._conn.execute(_USERS_IN, (after, upto, limit)).fetchall()
        users.update(user for _, user in rows)
        if len(rows) < limit:
            return upto, False
        return int(rows[-1][0]), int(rows[-1][0]) < upto

    def give_back(self, pages: int) -> int:
        """Return up to ``pages`` free pages to the file system (incremental vacuum); the pages freed.

        In WAL mode the file itself shrinks at the next checkpoint."""
        if pages <= 0:
            return 0
        free = int(self._conn.execute("PRAGMA freelist_count").fetchone()[0])
        if not free:
            return 0
        self._conn.execute(f"PRAGMA incremental_vacuum({int(pages)})").fetchall()
        return free - int(self._conn.execute("PRAGMA freelist_count").fetchone()[0])

    def retention_progress(self) -> tuple[int, int, int]:
        """``(deleted, crossed_seq, appended_seq)``: rows deleted so far and both scans' positions."""
        row = self._conn.execute("SELECT deleted, crossed_seq, appended_seq FROM retention WHERE id = 0").fetchone()
        return int(row[0]), int(row[1]), int(row[2])

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
