"""The per-partition SQLite state and the read-only reader across partition files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from schemas.messages import ClickEvent
from workers.ingest.state_reader import Cursor, StateReader
from workers.ingest.state_store import (
    _HISTORY,
    _HISTORY_ITEMS,
    SCHEMA_VERSION,
    PartitionStore,
    StoredClick,
    partition_path,
)

TOPIC = "clicks"


def _click(n: int, user: int = 1, ts: int | None = None) -> ClickEvent:
    return ClickEvent(event_id=f"e{n}", user_id=user, item_id=100 + n, ts=n if ts is None else ts)


def test_file_layout(tmp_path: Path) -> None:
    store = PartitionStore.open(tmp_path, TOPIC, 3)
    store.close()
    assert partition_path(tmp_path, TOPIC, 3) == tmp_path / "ingest" / "clicks-p3.sqlite"
    assert (tmp_path / "ingest" / "clicks-p3.sqlite").is_file()


def test_apply_is_idempotent_on_event_id(tmp_path: Path) -> None:
    store = PartitionStore.open(tmp_path, TOPIC, 0)
    assert store.apply([_click(1), _click(2), _click(2)], TOPIC, 0, last_offset=2) == 2
    assert store.apply([_click(2), _click(1), _click(3)], TOPIC, 0, last_offset=5) == 1
    assert store.event_count() == 3
    assert store.history(1, 10) == [101, 102, 103]
    assert store.last_offset(TOPIC, 0) == 5
    assert store.last_offset(TOPIC, 1) is None
    store.close()


def test_history_newest_last_by_event_time_and_maxlen(tmp_path: Path) -> None:
    store = PartitionStore.open(tmp_path, TOPIC, 0)
    late_arrival = ClickEvent(event_id="late", user_id=7, item_id=999, ts=15)
    events = [_click(n, user=7, ts=10 * n) for n in range(1, 6)] + [late_arrival, _click(9, user=8)]
    store.apply(events, TOPIC, 0, last_offset=6)
    assert store.history(7, 10) == [101, 999, 102, 103, 104, 105]
    assert store.history(7, 3) == [103, 104, 105]
    assert store.history(8, 3) == [109]
    assert store.history(42, 3) == []
    store.close()


def test_events_since_cursor(tmp_path: Path) -> None:
    store = PartitionStore.open(tmp_path, TOPIC, 0)
    store.apply([_click(1), _click(2)], TOPIC, 0, last_offset=1)
    first, cursor = store.events_since(0)
    assert [e.event_id for e in first] == ["e1", "e2"]
    assert first[0] == StoredClick("e1", 1, 101, 1, None)
    assert store.events_since(cursor) == ([], cursor)
    store.apply([_click(2), _click(3)], TOPIC, 0, last_offset=3)
    later, _ = store.events_since(cursor)
    assert [e.event_id for e in later] == ["e3"]
    limited, _ = store.events_since(0, limit=1)
    assert [e.event_id for e in limited] == ["e1"]
    store.close()


def test_reopen_after_close_persists(tmp_path: Path) -> None:
    store = PartitionStore.open(tmp_path, TOPIC, 0)
    store.apply([_click(1), _click(2)], TOPIC, 0, last_offset=41)
    store.close()
    again = PartitionStore.open(tmp_path, TOPIC, 0)
    assert again.event_count() == 2
    assert again.last_offset(TOPIC, 0) == 41
    assert again.apply([_click(1)], TOPIC, 0, last_offset=42) == 0
    again.close()


def test_reader_across_partition_files(tmp_path: Path) -> None:
    p0, p1 = PartitionStore.open(tmp_path, TOPIC, 0), PartitionStore.open(tmp_path, TOPIC, 1)
    PartitionStore.open(tmp_path, "other", 0).close()
    p0.apply([_click(1, user=1), _click(2, user=2)], TOPIC, 0, last_offset=1)
    p1.apply([_click(3, user=3), _click(4, user=1, ts=0)], TOPIC, 1, last_offset=1)
    with StateReader(tmp_path, TOPIC) as reader:  # writers still open: WAL readers do not block them
        assert reader.event_count() == 4
        assert reader.history(1, 5) == [104, 101]
        events, cursor = reader.events_since(Cursor())
        assert sorted(e.event_id for e in events) == ["e1", "e2", "e3", "e4"]
        p1.apply([_click(5, user=3)], TOPIC, 1, last_offset=2)
        more, cursor = reader.events_since(cursor)
        assert [e.event_id for e in more] == ["e5"]
        assert Cursor.from_json(cursor.to_json()) == cursor
        capped, _ = reader.events_since(Cursor(), limit=3)
        assert len(capped) == 3
    p0.close()
    p1.close()
    with StateReader(tmp_path, TOPIC) as reader:  # closed writers: read-only open still works
        assert reader.event_count() == 5
        assert reader.history(3, 1) == [105]


def test_schema_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    path = partition_path(tmp_path, TOPIC, 0)
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, "
        "user_id INTEGER NOT NULL, item_id INTEGER NOT NULL, ts INTEGER NOT NULL, segment TEXT)"
    )
    conn.execute("CREATE INDEX events_by_user ON events (user_id, ts)")
    conn.execute(
        "CREATE TABLE positions (topic TEXT NOT NULL, partition INTEGER NOT NULL, last_offset INTEGER NOT NULL, "
        "updated_ms INTEGER NOT NULL, PRIMARY KEY (topic, partition))"
    )
    conn.executemany(
        "INSERT INTO events (seq, event_id, user_id, item_id, ts, segment) VALUES (?, ?, ?, ?, ?, ?)",
        [(5, "old-a", 1, 11, 1, None), (9, "old-b", 1, 12, 2, "eu")],
    )
    conn.execute("INSERT INTO positions VALUES (?, 0, 17, 0)", (TOPIC,))
    conn.execute("PRAGMA user_version=1")
    conn.close()

    store = PartitionStore.open(tmp_path, TOPIC, 0)
    assert store.last_offset(TOPIC, 0) == 17
    assert store.events_since(0)[0] == [StoredClick("old-a", 1, 11, 1, None), StoredClick("old-b", 1, 12, 2, "eu")]
    assert store.apply([ClickEvent(event_id="old-b", user_id=1, item_id=12, ts=2), _click(1)], TOPIC, 0, 18) == 1
    events, cursor = store.events_since(9)
    assert [e.event_id for e in events] == ["e1"] and cursor == 10, "append order continues after the old seq"
    store.close()
    version = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION


def _indexes(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        conn.close()


def test_a_schema_3_file_gets_the_covering_history_index_and_keeps_its_histories(tmp_path: Path) -> None:
    store = PartitionStore.open(tmp_path, TOPIC, 0)
    store.apply([_click(n, user=n % 3 + 1, ts=100 - n) for n in range(30)], TOPIC, 0, 29)
    store.close()
    path = partition_path(tmp_path, TOPIC, 0)
    conn = sqlite3.connect(path, isolation_level=None)  # back to schema 3's index, as an older writer left it
    conn.execute("DROP INDEX events_by_user_history")
    conn.execute("CREATE INDEX events_by_user ON events (user_id, ts)")
    conn.execute("PRAGMA user_version=3")
    conn.close()
    with StateReader(tmp_path, TOPIC) as reader:  # an older file reads as before
        before = reader.histories([1, 2, 3], 7)

    PartitionStore.open(tmp_path, TOPIC, 0).close()
    assert "events_by_user_history" in _indexes(path) and "events_by_user" not in _indexes(path)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    with StateReader(tmp_path, TOPIC) as reader:
        assert reader.histories([1, 2, 3], 7) == before
        assert before[1] == [100 + n for n in (19, 16, 13, 10, 7, 4, 1)]  # oldest first by event time


def test_a_history_read_touches_the_index_only(tmp_path: Path) -> None:
    PartitionStore.open(tmp_path, TOPIC, 0).close()
    conn = sqlite3.connect(partition_path(tmp_path, TOPIC, 0))
    for sql in (_HISTORY, _HISTORY_ITEMS):
        plan = " ".join(str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", (1, 20)))
        assert "COVERING INDEX events_by_user_history" in plan and "TEMP B-TREE" not in plan, plan
    conn.close()


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = partition_path(tmp_path, TOPIC, 0)
    path.parent.mkdir(parents=True)
    sqlite3.connect(path).execute("PRAGMA user_version=99")
    with pytest.raises(RuntimeError, match="state schema 99"):
        PartitionStore.open(tmp_path, TOPIC, 0)


def test_dedupe_survives_reopen_of_a_bigger_file(tmp_path: Path) -> None:
    store = PartitionStore.open(tmp_path, TOPIC, 0)
    for batch in range(10):
        store.apply([_click(batch * 100 + n, user=n % 7 + 1) for n in range(100)], TOPIC, 0, batch)
    store.close()
    again = PartitionStore.open(tmp_path, TOPIC, 0)
    redelivered = [_click(n) for n in range(0, 1000, 37)]
    assert again.apply([*redelivered, _click(5000)], TOPIC, 0, 11) == 1
    assert again.event_count() == 1001
    again.close()


def test_two_writers_on_one_file_never_duplicate(tmp_path: Path) -> None:
    """A zombie consumer (paused past its session timeout) may commit after the partition moved."""
    owner = PartitionStore.open(tmp_path, TOPIC, 0)
    zombie = PartitionStore.open(tmp_path, TOPIC, 0)
    assert owner.apply([_click(1), _click(2)], TOPIC, 0, 1) == 2
    assert zombie.apply([_click(2), _click(3)], TOPIC, 0, 2) == 1, "the zombie saw the owner's rows"
    assert owner.apply([_click(3), _click(4)], TOPIC, 0, 3) == 1, "the owner saw the zombie's rows"
    assert owner.event_count() == 4
    owner.close()
    zombie.close()


def test_a_dedupe_window_drops_recent_copies_and_reopens_from_the_tail(tmp_path: Path) -> None:
    store = PartitionStore.open(tmp_path, TOPIC, 0, dedupe_window=10)
    for n in range(50):
        assert store.apply([_click(n)], TOPIC, 0, last_offset=n) == 1
    assert store.apply([_click(45), _click(49)], TOPIC, 0, last_offset=50) == 0  # recent copies: dropped
    assert len(store._seen) <= 20
    store.close()
    again = PartitionStore.open(tmp_path, TOPIC, 0, dedupe_window=10)
    assert len(again._seen) == 10  # only the tail of the file is read back
    assert again.apply([_click(42)], TOPIC, 0, last_offset=51) == 0
    assert again.apply([_click(1)], TOPIC, 0, last_offset=52) == 1  # re-sent after 49 newer events: applied
    assert again.event_count() == 51
    again.close()


@pytest.mark.parametrize("partitions", [1, 2])
def test_histories_equal_one_history_per_user(tmp_path: Path, partitions: int) -> None:
    rng = np.random.default_rng(3)
    stores = [PartitionStore.open(tmp_path, TOPIC, p) for p in range(partitions)]
    n = 0
    for batch in range(30):
        events = []
        for _ in range(40):
            n += 1
            # few distinct timestamps: ties are broken by append order, as in ``history``
            events.append(_click(n, user=int(rng.integers(1, 1200)), ts=int(rng.integers(0, 50))))
        stores[batch % partitions].apply(events, TOPIC, batch % partitions, last_offset=batch)
    for store in stores:
        store.close()
    users = [int(u) for u in rng.permutation(np.arange(1, 1300))]  # more than one query's worth; some unknown
    with StateReader(tmp_path, TOPIC) as reader:
        for maxlen in (0, 1, 3, 200):
            assert reader.histories(users, maxlen) == [reader.history(u, maxlen) for u in users]
            arrays = reader.history_arrays(users, maxlen)
            assert all(a.dtype == np.int64 for a in arrays)
            assert [a.tolist() for a in arrays] == [reader.history(u, maxlen) for u in users]


@pytest.mark.parametrize("partitions", [1, 2])
def test_columns_since_hold_what_events_since_returns(tmp_path: Path, partitions: int) -> None:
    stores = [PartitionStore.open(tmp_path, TOPIC, p) for p in range(partitions)]
    for batch in range(6):
        events = [
            ClickEvent(
                event_id=f"b{batch}e{n}",
                user_id=n % 7 + 1,
                item_id=1000 + batch * 10 + n,
                ts=batch * 100 + n,
                segment=("eu" if n % 3 == 0 else None),
            )
            for n in range(9)
        ]
        stores[batch % partitions].apply(events, TOPIC, batch % partitions, last_offset=batch)
    for store in stores:
        store.close()
    with StateReader(tmp_path, TOPIC) as reader:
        cursor = Cursor()
        for limit in (5, 13, None, 4):  # slices that end inside a file and across files, then nothing left
            want, want_cursor = reader.events_since(cursor, limit)
            got, got_cursor = reader.columns_since(cursor, limit)
            assert got_cursor == want_cursor
            assert len(got) == len(want)
            assert got.user_ids.tolist() == [e.user_id for e in want]
            assert got.item_ids.tolist() == [e.item_id for e in want]
            assert got.ts.tolist() == [e.ts for e in want]
            assert got.segments == tuple((e.item_id, e.segment) for e in want if e.segment is not None)
            cursor = got_cursor
        assert len(got) == 0
