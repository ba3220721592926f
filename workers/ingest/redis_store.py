"""Ingest state on a Redis server (``state.backend = "redis"``): the writer of one partition.

Workers on many hosts share the server; the layout is :mod:`workers.ingest.redis_layout`, the readers
:mod:`workers.ingest.redis_reader`, the contract the SQLite files' (:mod:`workers.ingest.history_store`).

**Atomic with the position.** One batch is one ``MULTI``/``EXEC``: its stream entry, history members,
digests and the partition's offset commit together. A command refused when queued (an out-of-memory
write under ``noeviction``) aborts the whole ``EXEC``; Redis does not roll back a command that fails at
run time, and none can while the streams are not ahead of ``pos`` (checked when the partition is
opened). Redis writes a transaction to its append-only file as one block and drops a torn last block
on load, so a ``kill -9`` of the server or of the writer keeps whole batches only; the worker stores
Kafka offsets after ``EXEC`` returned and resumes from ``offset``: a crash can redeliver, never lose,
and dedupe drops the redelivered copies. The ``pos`` key is ``WATCH``ed: a zombie writer's batch
makes ours retry after reading its digests (dedupe stays exact, as SQLite's ``BEGIN IMMEDIATE`` does).

**Durability is the server's**: run it with ``appendonly yes`` and ``appendfsync always`` (each
acknowledged ``EXEC`` is fsynced before the reply: SQLite's ``synchronous=FULL``; ``everysec`` may
lose the last second of a power loss) and ``maxmemory-policy noeviction`` (an evicted key is lost
state); the writer logs a warning when it can read other settings. A writer that finds the
partition's ``seq`` behind what it committed itself (the server lost acknowledged writes: persistence
off, a failover to a lagging replica) stops with :class:`StateLostError`; restarted, it resumes from
the server's older position and Kafka redelivers the rest.

**Bounded memory.** With a retention policy, every batch caps the touched users' histories at
``history`` clicks and trims the training stream to about :func:`stream_cap` events (whole batches:
at most one batch more); :meth:`RedisPartitionStore.retain` trims it below the policy's boundary
(what the refresh consumed, past the window). The digests stream keeps about ``dedupe_window``
digests (16 bytes each). A Redis Cluster is not supported (a batch touches keys of many slots): one
primary, with replicas for reads and failover, serves every partition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Final

import redis
from redis.client import Pipeline
from redis.typing import EncodableT

from schemas.messages import ClickEvent
from workers.ingest.digest_set import DIGEST_BYTES, DigestSet, DigestWindow, digest
from workers.ingest.history_store import StoreUnavailableError
from workers.ingest.redis_layout import (
    RedisKeys,
    batch_fields,
    connect,
    entries_after,
    first_entry,
    last_seq,
    member,
    seq_of,
)
from workers.ingest.state_store import RetentionPolicy, RetentionStep

log = logging.getLogger(__name__)

_READ_CHUNK: Final = 1000  # digest entries (batches) per round trip
# One call adds a batch's clicks to every touched user's history and caps each (one ZADD and one
# ZREMRANGEBYRANK per user from the client cost ~5x more than the rest of the batch together).
# KEYS: the users' history keys; ARGV: the cap (0 = none), then per key its member count and members.
_ADD_TO_HISTORIES: Final = """
local cap = tonumber(ARGV[1])
local at = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[at])
  at = at + 1
  for first = at, at + n - 1, 2000 do
    local args = {}
    for m = first, math.min(first + 1999, at + n - 1) do
      args[#args + 1] = 0
      args[#args + 1] = ARGV[m]
    end
    redis.call('ZADD', KEYS[k], unpack(args))
  end
  at = at + n
  if cap > 0 then
    redis.call('ZREMRANGEBYRANK', KEYS[k], 0, -(cap + 1))
  end
end
return #KEYS
"""


class StateLostError(RuntimeError):
    """The server holds less than this writer committed: it lost acknowledged writes."""


def stream_cap(policy: RetentionPolicy) -> int:
    """Events a partition's training stream keeps at most (give or take a batch): the window, or
    ``max_unconsumed`` when larger. SQLite keeps unconsumed events uncapped when ``max_unconsumed`` is
    unset; memory cannot, so on Redis an unset ``max_unconsumed`` means the window."""
    return max(policy.window, policy.max_unconsumed or policy.window)


@contextmanager
def _unavailable_on_failure(what: str) -> Iterator[None]:
    """The client's connection errors and timeouts as :class:`StoreUnavailableError` (the worker retries)."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailableError(f"{what}: {exc}") from exc


def _warn_unsafe_config(client: redis.Redis) -> None:
    """Log when the server's settings break the guarantees (a managed server may forbid CONFIG: say so)."""
    try:
        config = client.config_get("appendonly") | client.config_get("appendfsync")
        config |= client.config_get("maxmemory-policy")
    except redis.ResponseError as exc:
        log.warning("cannot read the Redis server's config (%s): check appendonly/appendfsync/maxmemory-policy", exc)
        return
    if config.get("appendonly") != "yes" or config.get("appendfsync") != "always":
        log.warning(
            "Redis runs with appendonly=%s appendfsync=%s: a crash of the server may rewind the ingest state "
            "(appendonly yes + appendfsync always make every batch durable)",
            config.get("appendonly"),
            config.get("appendfsync"),
        )
    if config.get("maxmemory-policy") != "noeviction":
        log.warning("Redis maxmemory-policy is %s: ingest state may be evicted", config.get("maxmemory-policy"))


class RedisPartitionStore:
    """The single writer of one partition's state on a Redis server."""

    def __init__(
        self,
        url: str,
        topic: str,
        partition: int,
        *,
        dedupe_window: int | None = None,
        retention: RetentionPolicy | None = None,
        timeout_s: float,
    ) -> None:
        """``dedupe_window`` as :class:`~workers.ingest.state_store.PartitionStore`'s; ``retention``: cap
        histories and the training stream at every batch (None: keep everything)."""
        self.topic, self.partition = topic, partition
        self.dedupe_window = dedupe_window
        self.retention = retention
        self.keys = RedisKeys(topic)
        self._pos = self.keys.position(partition)
        self._events = self.keys.events(partition)
        self._digests = self.keys.digests(partition)
        self._redis = connect(url, timeout_s)
        self._seen: DigestSet | DigestWindow = DigestSet() if dedupe_window is None else DigestWindow(dedupe_window)
        self._known_seq = 0  # the digests of every batch up to this seq are in ``_seen``
        with _unavailable_on_failure(f"opening {self._pos}"):
            _warn_unsafe_config(self._redis)
            self._catch_up(self._redis)
            self._check_consistent()

    @property
    def name(self) -> str:
        return self.keys.stream_name(self.partition)

    def _check_consistent(self) -> None:
        """Neither stream ahead of ``pos``: else a batch's ``XADD`` would fail inside ``EXEC`` while the
        offset still moved (Redis does not roll a transaction back on a command's run-time error)."""
        seq = int(self._redis.hget(self._pos, "seq") or 0)
        for key in (self._events, self._digests):
            top = last_seq(self._redis, key)
            if top > seq:
                raise StateLostError(f"{key} ends at seq {top}, past {self._pos}'s {seq}")

    def _catch_up(self, client: redis.Redis) -> None:
        """Add the digests of batches committed after ``_known_seq`` (all on open; a zombie's later)."""
        while entries := entries_after(client, self._digests, self._known_seq, _READ_CHUNK):
            blobs = [fields[b"d"] for _, fields in entries]
            self._seen.add([b[i : i + DIGEST_BYTES] for b in blobs for i in range(0, len(b), DIGEST_BYTES)])
            self._known_seq = seq_of(entries[-1][0])

    def apply(self, events: Sequence[ClickEvent], topic: str, partition: int, last_offset: int) -> int:
        """Append new events and record ``last_offset`` in one ``MULTI``/``EXEC``; returns rows inserted.

        Raises :class:`StoreUnavailableError` when the server does not answer: the ``EXEC`` may or may not
        have committed; the next call reads what did (``seq`` moved on) before it filters its batch."""
        with _unavailable_on_failure(f"applying to {self._pos}"):
            return self._apply(events, topic, partition, last_offset)

    def _apply(self, events: Sequence[ClickEvent], topic: str, partition: int, last_offset: int) -> int:
        if (topic, partition) != (self.topic, self.partition):
            raise ValueError(f"this store writes {self.topic}[{self.partition}], not {topic}[{partition}]")
        firsts: dict[str, ClickEvent] = {}
        for event in events:
            firsts.setdefault(event.event_id, event)
        digests = [digest(event_id) for event_id in firsts]
        while True:
            with self._redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self._pos)
                    seq = int(pipe.hget(self._pos, "seq") or 0)
                    if seq < self._known_seq:
                        raise StateLostError(
                            f"{self._pos}: the server is at seq {seq}, this writer committed up to {self._known_seq}"
                        )
                    if seq > self._known_seq:
                        self._catch_up(pipe)
                    seen = self._seen.contains(digests)
                    rows = [(e, d) for e, d, dup in zip(firsts.values(), digests, seen, strict=True) if not dup]
                    pipe.multi()
                    new_seq = self._queue(pipe, rows, seq, last_offset)
                    pipe.execute()
                except redis.WatchError:
                    continue  # another writer committed meanwhile: read its digests and filter again
            break
        self._seen.add([d for _, d in rows])  # only after EXEC: a failed batch leaves the set as the server is
        self._known_seq = new_seq
        return len(rows)

    def _queue(self, pipe: Pipeline, rows: list[tuple[ClickEvent, bytes]], seq: int, last_offset: int) -> int:
        """Queue the batch's commands in ``pipe`` (inside MULTI); returns the partition's new seq."""
        if rows:
            new = [event for event, _ in rows]
            last = seq + len(new)
            pipe.xadd(self._events, batch_fields(new, seq + 1), id=f"0-{last}")
            members: dict[int, list[bytes]] = {}
            for n, event in enumerate(new, start=seq + 1):
                members.setdefault(event.user_id, []).append(member(event.ts, n, event.item_id))
            args: list[EncodableT] = [0 if self.retention is None else self.retention.history]
            for user_members in members.values():
                args.append(len(user_members))
                args.extend(user_members)
            keys = [self.keys.history(user) for user in members]
            pipe.eval(_ADD_TO_HISTORIES, len(keys), *keys, *args)  # EVAL, not EVALSHA: no NOSCRIPT inside EXEC
            pipe.xadd(self._digests, {"d": b"".join(d for _, d in rows)}, id=f"0-{last}")
            if self.dedupe_window is not None and last - self.dedupe_window + 1 > 1:
                pipe.xtrim(self._digests, minid=f"0-{last - self.dedupe_window + 1}", approximate=False)
            if self.retention is not None and last - stream_cap(self.retention) + 1 > 1:
                pipe.xtrim(self._events, minid=f"0-{last - stream_cap(self.retention) + 1}", approximate=False)
            pipe.sadd(self.keys.partitions, self.partition)
            pipe.hincrby(self._pos, "total", len(rows))
            seq = last
        pipe.hset(self._pos, mapping={"seq": seq, "offset": last_offset, "updated_ms": int(time.time() * 1000)})
        return seq

    def last_offset(self, topic: str, partition: int) -> int | None:
        with _unavailable_on_failure(f"reading {topic}[{partition}]'s offset"):
            raw = self._redis.hget(RedisKeys(topic).position(partition), "offset")
        return None if raw is None else int(raw)

    def retain(self, policy: RetentionPolicy, consumed: int) -> RetentionStep:
        """Trim the training stream's batches at or below the policy's boundary (histories are capped by
        every batch); ``deleted``: the events trimmed."""
        last = int(self._redis.hget(self._pos, "seq") or 0)
        boundary = policy.boundary(last, consumed)
        if boundary <= 0:
            return RetentionStep(0, 0, False, boundary)
        before = self._first_seq()
        self._redis.xtrim(self._events, minid=f"0-{boundary + 1}", approximate=False)
        return RetentionStep(self._first_seq() - before, 0, False, boundary)

    def _first_seq(self) -> int:
        """The seq of the oldest event the training stream holds (last + 1 when it is empty)."""
        entry = first_entry(self._redis, self._events)
        return int(entry[0][1][b"f"]) if entry else int(self._redis.hget(self._pos, "seq") or 0) + 1

    def close(self) -> None:
        self._redis.close()
