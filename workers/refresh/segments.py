"""Segments (region, language, ...) of items, and their Milvus partition names.

An item belongs to the segment of its most recent click that named one; items never clicked with
a segment live in the default segment. Each segment is one Milvus partition of the collection, so
a search can be pruned to the segments a caller asks for. Every version is still built whole (see
docs/freshness.md for why per-segment rebuilds do not pay).

Milvus caps the partitions of a collection (1,024 in 2.3): past it every insert into a new
partition fails, so every publish and fast-path step would fail for good. Only the first
``refresh.max_segments`` segments seen get a partition (*admitted*); the items of any later segment
live in the default partition. Which segments are admitted is recorded in ``segments.sqlite``
(beside the item -> segment map, written in the same transaction as it), so it never changes across
restarts and rounds, and never depends on the segments' names, their items or their number of
clicks: once a segment is admitted it stays, and a refused one stays refused while the cap is full.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from model.data.types import IntArray
from workers.infra.vector_store import DEFAULT_SEGMENT

log = logging.getLogger(__name__)

_SAFE = re.compile(r"^[A-Za-z0-9_]{1,32}$")
OVERFLOW_WARNING_EVERY_S: Final = 60.0  # the warning about refused segments, at most this often
OVERFLOW_EXAMPLES: Final = 5  # refused segments named in a warning
_LOCK_TIMEOUT_S: Final = 30.0  # a round writes up to max_events_per_round rows in one transaction


def partition_name(segment: str | None) -> str:
    """A valid, collision-free Milvus partition name for a click's segment."""
    if segment is None or segment == DEFAULT_SEGMENT:
        return DEFAULT_SEGMENT
    if _SAFE.match(segment):
        return f"s_{segment}"
    return "x_" + segment.encode().hex()


@dataclass(frozen=True)
class Overflow:
    """Clicks of one update whose segment has no partition of its own (their items go to the default)."""

    clicks: int = 0
    segments: int = 0  # distinct refused segments among them
    examples: tuple[str, ...] = ()  # the first few of those, in order of appearance


class SegmentMap:
    """item id -> segment, and the admitted segments, persisted in SQLite next to the refresh state.

    ``max_segments``: how many segments may be admitted (``refresh.max_segments``); None = this map
    admits none itself and only reads which are (the gateway's ``insert_data`` publishes this way).
    Several processes and threads may open the same file: admission takes SQLite's write lock, so
    the cap holds across them."""

    def __init__(self, path: Path, max_segments: int | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.max_segments = max_segments
        # autocommit; every write is an explicit BEGIN IMMEDIATE (see _write). One thread at a time uses
        # a connection (the refresh loop, or the fast path: each opens its own).
        self._conn = sqlite3.connect(path, timeout=_LOCK_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        with self._write():
            self._conn.execute("CREATE TABLE IF NOT EXISTS item_segment (item_id INTEGER PRIMARY KEY, segment TEXT)")
            self._conn.execute("CREATE TABLE IF NOT EXISTS segment (name TEXT PRIMARY KEY, seq INTEGER NOT NULL)")
            self._seed()

    @staticmethod
    def file(refresh_dir: Path) -> Path:
        """Where the refresh worker keeps its segments."""
        return refresh_dir / "segments.sqlite"

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction, holding SQLite's write lock from its start (a read-then-write in it sees
        what every other connection committed)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _seed(self) -> None:
        """A file written before segments were capped: admit its segments in name order, up to the cap."""
        if self.max_segments is None or self._conn.execute("SELECT 1 FROM segment LIMIT 1").fetchone():
            return
        self._conn.execute(
            "INSERT INTO segment (name, seq) SELECT segment, row_number() OVER (ORDER BY segment) FROM "
            "(SELECT DISTINCT segment FROM item_segment WHERE segment IS NOT NULL AND segment != ? "
            "ORDER BY segment LIMIT ?)",
            (DEFAULT_SEGMENT, self.max_segments),
        )

    # -- admission -------------------------------------------------------------------------------

    def admitted(self) -> frozenset[str]:
        """The segments with a partition of their own (as committed by any process)."""
        return frozenset(name for (name,) in self._conn.execute("SELECT name FROM segment"))

    def admit(self, segments: Iterable[str | None]) -> frozenset[str]:
        """Admit the segments not admitted yet, in order of first appearance, while fewer than
        ``max_segments`` are; returns the admitted set after."""
        admitted = self.admitted()
        if self.max_segments is None or len(admitted) >= self.max_segments:
            return admitted
        fresh = [s for s in dict.fromkeys(segments) if s is not None and s != DEFAULT_SEGMENT and s not in admitted]
        if not fresh:
            return admitted
        with self._write():
            for name in fresh[: self.max_segments - len(admitted)]:
                self._conn.execute(
                    "INSERT OR IGNORE INTO segment (name, seq) "
                    "SELECT ?, coalesce(max(seq), 0) + 1 FROM segment HAVING count(*) < ?",
                    (name, self.max_segments),
                )
        admitted = self.admitted()
        log.info("segments with a partition of their own: %d of at most %d", len(admitted), self.max_segments)
        return admitted

    def partitions(self, segments: Sequence[str | None]) -> list[str]:
        """The partition of each segment: its own if admitted, else the default."""
        admitted = self.admitted()
        return [partition_name(s) if s in admitted else DEFAULT_SEGMENT for s in segments]

    # -- items -------------------------------------------------------------------------------------

    def update(self, pairs: Iterable[tuple[int, str | None]]) -> Overflow:
        """Record each item's segment (its latest click's), admitting new segments first (:meth:`admit`);
        returns the clicks whose segment has no partition of its own."""
        rows = [(item, seg) for item, seg in pairs if seg is not None]
        admitted = self.admit(seg for _, seg in rows)
        with self._write():
            self._conn.executemany("INSERT OR REPLACE INTO item_segment VALUES (?, ?)", rows)
        refused = [seg for _, seg in rows if seg not in admitted and seg != DEFAULT_SEGMENT]
        distinct = list(dict.fromkeys(refused))
        return Overflow(len(refused), len(distinct), tuple(distinct[:OVERFLOW_EXAMPLES]))

    def group(self, ids: IntArray) -> dict[str, IntArray]:
        """Partition name -> the given item ids that belong to it (admitted segments only; the rest in
        the default partition)."""
        if not len(ids):
            return {}
        known = dict(
            self._conn.execute(
                "SELECT item_id, segment FROM item_segment WHERE segment IN (SELECT name FROM segment)"
            ).fetchall()
        )
        parts = np.array([partition_name(known.get(int(i))) for i in ids.tolist()], dtype=object)
        return {str(p): ids[parts == p] for p in np.unique(parts)}

    def close(self) -> None:
        self._conn.close()


class OverflowWarning:
    """A warning about refused segments at most once per ``every_s`` (a hostile producer can name a new
    segment in every click), with what was refused since the last one."""

    def __init__(self, every_s: float = OVERFLOW_WARNING_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self._last: float | None = None
        self._clicks = 0
        self._examples: dict[str, None] = {}

    def note(self, overflow: Overflow, max_segments: int) -> bool:
        """Count ``overflow``; log when the last warning is ``every_s`` old (or there was none). True if logged."""
        if not overflow.clicks:
            return False
        self._clicks += overflow.clicks
        for name in overflow.examples:
            if len(self._examples) < OVERFLOW_EXAMPLES:
                self._examples[name] = None
        now = self.clock()
        if self._last is not None and now - self._last < self.every_s:
            return False
        log.warning(
            "%d click(s) named a segment past refresh.max_segments (%d) since the last warning, e.g. %s: their items "
            "are in the default partition (mindstream_refresh_segments_overflow_total)",
            self._clicks,
            max_segments,
            list(self._examples),
        )
        self._last = now
        self._clicks = 0
        self._examples = {}
        return True
