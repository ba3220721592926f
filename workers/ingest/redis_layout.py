"""How the ingest state is laid out on a Redis server (the writer: ``redis_store``; readers: ``redis_reader``).

Per topic (``mindstream:<topic>``) and partition ``N``:

* ``…:p<N>:pos`` (hash): ``seq`` (the partition's last event sequence number, 1, 2, … in append
  order), ``offset`` (the last Kafka offset applied), ``total`` (events ever applied), ``updated_ms``;
* ``…:p<N>:events`` (stream): the training stream, **one entry per batch**, id ``0-<seq of its last
  event>``, fields ``f`` (seq of its first event), ``u``/``i``/``t`` (user, item, ts as little-endian
  int64 arrays), ``e`` (event ids, space-separated: they are printable ASCII without spaces) and
  ``s`` (segments, space-separated, empty for none). A :class:`~workers.ingest.state_reader.Cursor`
  keeps one event seq per partition, named ``<topic>-p<N>``; a read may start inside an entry.
  One entry per batch, not per event: a batch is one ``XADD`` and a refresh round reads a few hundred
  entries for a million events (an entry per event cost ~15 s per million to read back in Python);
* ``…:p<N>:digests`` (stream): the 16-byte digests of each batch's event ids, one entry per batch
  (id ``0-<seq of its last event>``), trimmed to the dedupe window;
* ``…:h:<user>`` (sorted set, every score 0): one member per click, ``<ts:016x><seq:016x><item>``:
  members sort by (event time, arrival) exactly for any int64 ``ts``;
* ``…:partitions`` (set): the partitions written so far (what readers list).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, cast

import numpy as np
import numpy.typing as npt
import redis
from redis.typing import EncodableT, FieldT

from schemas.messages import ClickEvent
from workers.ingest.state_store import StoredClick

KEY_PREFIX: Final = "mindstream"
MEMBER_HEAD: Final = 32  # hex ts + hex seq before a history member's item id
_I64: Final = np.dtype("<i8")

RawEntries = list[tuple[bytes, dict[bytes, bytes]]]


class RedisKeys:
    """The key names of one topic's state."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.base = f"{KEY_PREFIX}:{topic}"
        self.partitions = f"{self.base}:partitions"

    def position(self, partition: int) -> str:
        return f"{self.base}:p{partition}:pos"

    def events(self, partition: int) -> str:
        return f"{self.base}:p{partition}:events"

    def digests(self, partition: int) -> str:
        return f"{self.base}:p{partition}:digests"

    def history(self, user_id: int) -> str:
        return f"{self.base}:h:{user_id}"

    def stream_name(self, partition: int) -> str:
        """The partition's name in a :class:`~workers.ingest.state_reader.Cursor`."""
        return f"{self.topic}-p{partition}"


def connect(url: str, timeout_s: float) -> redis.Redis:
    """A client whose every call (connect, read) fails after ``timeout_s`` instead of blocking."""
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


def member(ts: int, seq: int, item_id: int) -> bytes:
    return f"{ts:016x}{seq:016x}{item_id}".encode("ascii")


def items_of(members: object) -> list[int]:
    """Item ids of history members (a ZRANGE answer), in their order."""
    return [int(m[MEMBER_HEAD:]) for m in cast(list[bytes], members)]


def seq_of(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[1])


def entries_after(client: redis.Redis, key: str, seq: int, count: int) -> RawEntries:
    """At most ``count`` entries of stream ``key`` whose id is after ``0-<seq>``."""
    return cast(RawEntries, client.xrange(key, min=f"(0-{seq}", max="+", count=count))


def first_entry(client: redis.Redis, key: str) -> RawEntries:
    return cast(RawEntries, client.xrange(key, count=1))


def last_seq(client: redis.Redis, key: str) -> int:
    """The id seq of the stream's newest entry, 0 when empty."""
    raw = cast(RawEntries, client.xrevrange(key, count=1))
    return seq_of(raw[0][0]) if raw else 0


def batch_fields(events: list[ClickEvent], first_seq: int) -> dict[FieldT, EncodableT]:
    """One batch's events (seq ``first_seq``, ``first_seq + 1``, …) as the fields of one stream entry."""
    return {
        "f": str(first_seq).encode("ascii"),
        "u": np.fromiter((e.user_id for e in events), dtype=_I64, count=len(events)).tobytes(),
        "i": np.fromiter((e.item_id for e in events), dtype=_I64, count=len(events)).tobytes(),
        "t": np.fromiter((e.ts for e in events), dtype=_I64, count=len(events)).tobytes(),
        "e": " ".join(e.event_id for e in events).encode("ascii"),
        "s": " ".join(e.segment or "" for e in events).encode("ascii"),
    }


@dataclass(frozen=True)
class BatchSlice:
    """Events ``start:stop`` of one stream entry (a batch); ``first`` is the seq of its event 0."""

    fields: dict[bytes, bytes]
    first: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def last_seq(self) -> int:
        return self.first + self.stop - 1

    def column(self, name: bytes) -> npt.NDArray[np.int64]:
        return np.frombuffer(self.fields[name], dtype=_I64)[self.start : self.stop].astype(np.int64)

    def segments(self) -> list[str]:
        return self.fields[b"s"].decode("ascii").split(" ")[self.start : self.stop]

    def clicks(self) -> list[StoredClick]:
        ids = self.fields[b"e"].decode("ascii").split(" ")[self.start : self.stop]
        users, items, times = (self.column(n).tolist() for n in (b"u", b"i", b"t"))
        return [
            StoredClick(event_id, user, item, ts, segment or None)
            for event_id, user, item, ts, segment in zip(ids, users, items, times, self.segments(), strict=True)
        ]


def slice_after(entry: tuple[bytes, dict[bytes, bytes]], seq: int, limit: int | None) -> BatchSlice:
    """The events of ``entry`` after ``seq``, at most ``limit`` of them."""
    _, fields = entry
    first = int(fields[b"f"])
    size = len(fields[b"u"]) // _I64.itemsize
    start = max(0, seq + 1 - first)
    stop = size if limit is None else min(size, start + limit)
    return BatchSlice(fields, first, start, stop)
