"""One contract for both ingest state backends (``state.backend``): SQLite files and a real redis-server.

The Redis cases run against ``redis-server`` started here on a free loopback port over a temporary
directory (``appendonly yes``, ``appendfsync always``); without the binary they skip on a developer
machine and fail in CI (``CI`` set, or ``MINDSTREAM_REQUIRE_TOOLS`` naming ``redis-server``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import redis

from schemas.messages import ClickEvent
from tests.required_tools import missing_tool
from tests.workers.ingest.history_writer import TOPIC, USERS, event_at, state_settings, write_until
from workers.infra.redis_server import RedisServer, redis_server_binary
from workers.ingest.history_store import (
    HistoryReader,
    PartitionWriter,
    StoreUnavailableError,
    open_reader,
    open_writer,
)
from workers.ingest.redis_layout import RedisKeys
from workers.ingest.redis_store import RedisPartitionStore, StateLostError, stream_cap
from workers.ingest.state_reader import Cursor
from workers.ingest.state_store import RetentionPolicy

REPO = Path(__file__).resolve().parents[3]


def require_redis_server() -> None:
    if redis_server_binary() is not None:
        return
    reason = "redis-server is not installed (Debian: apt-get install redis-server)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set: it must be there", pytrace=False)
    missing_tool("redis-server", reason)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_redis_server()
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@dataclass
class Backend:
    name: str
    state_dir: Path
    url: str
    opened: list[PartitionWriter | HistoryReader] = field(default_factory=list)

    def writer(
        self, partition: int = 0, dedupe_window: int | None = None, retention: RetentionPolicy | None = None
    ) -> PartitionWriter:
        settings = state_settings(self.name, self.url)
        writer = open_writer(
            settings, self.state_dir, TOPIC, partition, dedupe_window=dedupe_window, retention=retention
        )
        self.opened.append(writer)
        return writer

    def reader(self) -> HistoryReader:
        reader = open_reader(state_settings(self.name, self.url), self.state_dir, TOPIC)
        self.opened.append(reader)
        return reader


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    url = "redis://127.0.0.1:1/0"  # never reached by the sqlite backend
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        url = server.url
        redis.Redis.from_url(url).flushall()
    made = Backend(request.param, tmp_path, url)
    yield made
    for opened in made.opened:
        opened.close()


def _click(n: int, user: int = 1, ts: int | None = None, segment: str | None = None) -> ClickEvent:
    return ClickEvent(event_id=f"e,{n}", user_id=user, item_id=100 + n, ts=n if ts is None else ts, segment=segment)


def _ids(reader: HistoryReader) -> Counter[str]:
    events, _ = reader.events_since(Cursor())
    return Counter(e.event_id for e in events)


def _expected_tail(user: int, upto: int, n: int) -> list[int]:
    """User ``user``'s newest ``n`` items among the events at offsets 0..upto-1 (``event_at``)."""
    return [1000 + o for o in range(upto) if o % USERS + 1 == user][-n:]


def test_both_writers_and_readers_meet_the_protocols(backend: Backend) -> None:
    assert isinstance(backend.writer(), PartitionWriter)
    assert isinstance(backend.reader(), HistoryReader)


def test_apply_is_idempotent_and_records_the_offset(backend: Backend) -> None:
    writer = backend.writer()
    assert writer.last_offset(TOPIC, 0) is None
    assert writer.apply([_click(1), _click(2), _click(2)], TOPIC, 0, last_offset=2) == 2
    assert writer.apply([_click(2), _click(1), _click(3)], TOPIC, 0, last_offset=5) == 1
    assert writer.apply([], TOPIC, 0, last_offset=7) == 0  # a batch of dead letters only moves the offset
    assert writer.last_offset(TOPIC, 0) == 7
    assert writer.last_offset(TOPIC, 1) is None
    reader = backend.reader()
    assert reader.event_count() == 3
    assert reader.history(1, 10) == [101, 102, 103]
    assert _ids(reader) == Counter({"e,1": 1, "e,2": 1, "e,3": 1})


def test_history_by_event_time_then_arrival(backend: Backend) -> None:
    writer = backend.writer()
    late = ClickEvent(event_id="late", user_id=7, item_id=999, ts=15)
    tie = ClickEvent(event_id="tie", user_id=7, item_id=998, ts=30)  # same ts as e,3: arrived after it
    big_ts = ClickEvent(event_id="big", user_id=9, item_id=5, ts=2**63 - 1)
    writer.apply([_click(n, user=7, ts=10 * n) for n in range(1, 6)] + [late, tie, _click(9, user=8)], TOPIC, 0, 7)
    writer.apply([big_ts, _click(10, user=9, ts=2**62)], TOPIC, 0, 9)
    reader = backend.reader()
    assert reader.history(7, 10) == [101, 999, 102, 103, 998, 104, 105]
    assert reader.history(7, 3) == [998, 104, 105]
    assert reader.histories([8, 42, 9], 3) == [[109], [], [110, 5]]
    arrays = reader.history_arrays([7, 42], 2)
    assert [a.dtype for a in arrays] == [np.int64, np.int64]
    assert [a.tolist() for a in arrays] == [[104, 105], []]
    assert reader.history(7, 0) == []


def test_one_user_with_thousands_of_clicks_in_one_batch(backend: Backend) -> None:
    writer = backend.writer()
    assert writer.apply([_click(n, user=3) for n in range(4500)], TOPIC, 0, 4499) == 4500
    assert backend.reader().history(3, 5000) == [100 + n for n in range(4500)]


def test_training_stream_after_a_cursor_across_partitions(backend: Backend) -> None:
    p0, p1 = backend.writer(0), backend.writer(1)
    p0.apply([_click(1, segment="eu"), _click(2)], TOPIC, 0, 1)
    p1.apply([_click(3, user=2), _click(4, user=2, segment="us")], TOPIC, 1, 1)
    reader = backend.reader()
    first, cursor = reader.events_since(Cursor(), limit=3)
    assert len(first) == 3
    rest, cursor = reader.events_since(cursor)
    assert sorted(e.event_id for e in first + rest) == ["e,1", "e,2", "e,3", "e,4"]
    assert {e.event_id: e.segment for e in first + rest} == {"e,1": "eu", "e,2": None, "e,3": None, "e,4": "us"}
    assert reader.events_since(cursor) == ([], cursor)
    p0.apply([_click(5)], TOPIC, 0, 2)
    newer, cursor2 = reader.events_since(Cursor.from_json(cursor.to_json()))
    assert [e.event_id for e in newer] == ["e,5"]
    assert set(cursor2.positions) == {p0.name, p1.name}
    columns, _ = reader.columns_since(Cursor())
    assert len(columns) == 5
    assert sorted(columns.item_ids.tolist()) == [101, 102, 103, 104, 105]
    assert sorted(columns.segments) == [(101, "eu"), (104, "us")]
    assert reader.event_count() == 5


def test_dedupe_window_survives_a_reopen(backend: Backend) -> None:
    writer = backend.writer(dedupe_window=4)
    writer.apply([_click(n) for n in range(1, 5)], TOPIC, 0, 3)
    writer.close()
    again = backend.writer(dedupe_window=4)  # the digests are rebuilt from the store
    assert again.apply([_click(n) for n in range(1, 7)], TOPIC, 0, 9) == 2
    assert _ids(backend.reader()) == Counter({f"e,{n}": 1 for n in range(1, 7)})


def test_a_zombie_writer_does_not_break_dedupe(backend: Backend) -> None:
    """Two writers of one partition (a consumer the group gave up on still committing): no event twice."""
    owner, zombie = backend.writer(), backend.writer()
    owner.apply([_click(1), _click(2)], TOPIC, 0, 1)
    assert zombie.apply([_click(2), _click(3)], TOPIC, 0, 2) == 1
    assert owner.apply([_click(3), _click(4)], TOPIC, 0, 3) == 1
    assert _ids(backend.reader()) == Counter({f"e,{n}": 1 for n in range(1, 5)})
    assert owner.last_offset(TOPIC, 0) == 3


def test_retention_keeps_histories_and_the_stream_after_the_boundary(backend: Backend) -> None:
    policy = RetentionPolicy(history=3, window=4, max_unconsumed=12, batch=7)
    writer = backend.writer(retention=policy)
    for first in range(0, 30, 5):
        writer.apply([event_at(o) for o in range(first, first + 5)], TOPIC, 0, first + 4)
    consumed = 20  # the refresh read the first 20 events (seq 1..20 = offsets 0..19)
    step = writer.retain(policy, consumed)
    for _ in range(100):
        if not step.pending:
            break
        step = writer.retain(policy, consumed)
    assert not step.pending
    assert step.boundary == 20
    reader = backend.reader()
    for user in range(1, USERS + 1):
        assert reader.history(user, policy.history) == _expected_tail(user, 30, policy.history)
    kept = reader.events_since(Cursor())[0]
    assert {e.event_id for e in kept} >= {f"ev-{o}" for o in range(20, 30)}  # unconsumed: all kept
    for e in kept:  # anything older is only there as one of its user's newest clicks
        offset = int(e.event_id.removeprefix("ev-"))
        assert offset >= 20 or 1000 + offset in _expected_tail(e.user_id, 30, policy.history)
    assert reader.event_count() == 30  # retention does not lower the count of events applied


def test_writer_killed_mid_stream_loses_and_duplicates_nothing(backend: Backend) -> None:
    """kill -9 of a writer process between or inside batches; its successor resumes from the stored offset."""
    total, batch = 3000, 50
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.workers.ingest.history_writer", backend.name, str(backend.state_dir),
         backend.url, str(total), str(batch)],
        cwd=REPO, stdout=subprocess.PIPE,
    )  # fmt: skip
    acknowledged = _acknowledged_until(proc, batches=8)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    acknowledged = max([acknowledged, *(int(line) for line in out.split())])
    assert proc.returncode == -signal.SIGKILL
    assert acknowledged < total - 1, "the writer finished before it was killed: nothing tested"
    writer = backend.writer()
    last = writer.last_offset(TOPIC, 0)
    assert last is not None and last >= acknowledged  # every acknowledged batch is durable
    assert _ids(backend.reader()) == Counter({f"ev-{o}": 1 for o in range(last + 1)})  # whole batches only
    write_until(writer, total, batch)
    _assert_exactly_once(backend.reader(), total)


def _acknowledged_until(proc: subprocess.Popen[bytes], batches: int) -> int:
    """Read the writer's reports until ``batches`` were acknowledged; the last offset reported."""
    assert proc.stdout is not None
    last = -1
    for _ in range(batches):
        line = proc.stdout.readline()
        assert line, f"the writer exited early ({proc.wait(timeout=30)})"
        last = int(line)
    return last


def _assert_exactly_once(reader: HistoryReader, total: int) -> None:
    ids = _ids(reader)
    assert set(ids) == {f"ev-{o}" for o in range(total)}, "lost events"
    assert max(ids.values()) == 1, "duplicated events"
    assert reader.event_count() == total
    for user in range(1, USERS + 1):
        assert reader.history(user, 20) == _expected_tail(user, total, 20)


# --- Redis only: the server itself killed, memory bounds, lost writes detected ---


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis_server()
    server = RedisServer(tmp_path / "redis", appendfsync="always").start()
    try:
        yield server
    finally:
        server.stop()


def _redis_writer(url: str, **kwargs: object) -> RedisPartitionStore:
    return RedisPartitionStore(url, TOPIC, 0, timeout_s=5.0, **kwargs)  # type: ignore[arg-type]


def test_redis_killed_between_batches_keeps_every_batch(own_redis: RedisServer, tmp_path: Path) -> None:
    writer = _redis_writer(own_redis.url)
    for first in range(0, 500, 50):
        writer.apply([event_at(o) for o in range(first, first + 50)], TOPIC, 0, first + 49)
    own_redis.kill()
    with pytest.raises(StoreUnavailableError):  # what the ingest worker holds its batch on
        writer.apply([event_at(o) for o in range(500, 550)], TOPIC, 0, 549)
    own_redis.start()  # replays its append-only file
    assert writer.last_offset(TOPIC, 0) == 499  # the same writer reconnects and goes on
    assert writer.apply([event_at(o) for o in range(450, 550)], TOPIC, 0, 549) == 50  # redelivery skipped
    writer.close()
    reader = open_reader(state_settings("redis", own_redis.url), tmp_path, TOPIC)
    try:
        _assert_exactly_once(reader, 550)
    finally:
        reader.close()


def test_redis_killed_under_a_writing_process_loses_and_duplicates_nothing(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    total, batch = 20_000, 50
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.workers.ingest.history_writer", "redis", str(tmp_path), own_redis.url,
         str(total), str(batch)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        acknowledged = _acknowledged_until(proc, batches=20)
        own_redis.kill()  # kill -9 while the writer is sending batches
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    acknowledged = max([acknowledged, *(int(line) for line in out.split())])
    assert proc.returncode not in (0, None), "the writer finished before the server was killed: nothing tested"
    own_redis.start()
    writer = _redis_writer(own_redis.url)
    last = writer.last_offset(TOPIC, 0)
    assert last is not None and last >= acknowledged  # appendfsync always: every acknowledged EXEC survived
    reader = open_reader(state_settings("redis", own_redis.url), tmp_path, TOPIC)
    try:
        assert _ids(reader) == Counter({f"ev-{o}": 1 for o in range(last + 1)})  # no torn transaction
        write_until(writer, total, batch)
        _assert_exactly_once(reader, total)
    finally:
        reader.close()
        writer.close()


def test_redis_memory_is_bounded_by_the_retention_settings(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    policy = RetentionPolicy(history=5, window=40)
    writer = _redis_writer(redis_server.url, dedupe_window=60, retention=policy)
    for first in range(0, 1000, 25):
        writer.apply([event_at(o) for o in range(first, first + 25)], TOPIC, 0, first + 24)
    keys = RedisKeys(TOPIC)
    with open_reader(state_settings("redis", redis_server.url), Path("unused"), TOPIC) as reader:
        kept, _ = reader.events_since(Cursor())
        for user in range(1, USERS + 1):
            assert client.zcard(keys.history(user)) == policy.history
            assert reader.history(user, 100) == _expected_tail(user, 1000, policy.history)
    assert stream_cap(policy) == 40
    assert 40 <= len(kept) < 40 + 25  # whole batches: at most one batch more than the cap
    assert [e.event_id for e in kept] == [f"ev-{o}" for o in range(1000 - len(kept), 1000)]
    digests = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(keys.digests(0)))
    assert 60 <= sum(len(fields[b"d"]) // 16 for _, fields in digests) <= 60 + 25
    assert writer.apply([event_at(990)], TOPIC, 0, 1000) == 0  # still inside the dedupe window
    writer.close()


def test_redis_writer_stops_when_the_server_lost_its_writes(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    writer = _redis_writer(redis_server.url)
    writer.apply([event_at(0), event_at(1)], TOPIC, 0, 1)
    client.flushall()  # as a restart without persistence would
    with pytest.raises(StateLostError):
        writer.apply([event_at(2)], TOPIC, 0, 2)
    writer.close()
