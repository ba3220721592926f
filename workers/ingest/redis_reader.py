"""Readers of the ingest state on a Redis server (``state.backend = "redis"``), from any host.

:class:`~workers.ingest.state_reader.StateReader`'s reads over :mod:`workers.ingest.redis_layout`:
histories are one ``ZRANGE`` per user (pipelined), the training stream ``XRANGE`` over batch entries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import MappingProxyType
from typing import Final

import numpy as np
import numpy.typing as npt

from workers.ingest.redis_layout import BatchSlice, RedisKeys, connect, entries_after, items_of, slice_after
from workers.ingest.state_reader import Cursor
from workers.ingest.state_store import ClickColumns, StoredClick

_USERS_PER_TRIP: Final = 10_000  # histories per pipelined round trip
_BATCHES_PER_TRIP: Final = 64  # stream entries (whole batches) per XRANGE


class RedisStateReader:
    """``history``, ``events_since``, ``columns_since``, ``event_count`` of one topic's state on Redis."""

    def __init__(self, url: str, topic: str, timeout_s: float) -> None:
        self.keys = RedisKeys(topic)
        self.topic = topic
        self._redis = connect(url, timeout_s)

    def _partitions(self) -> list[int]:
        return sorted(int(p) for p in self._redis.smembers(self.keys.partitions))

    def history(self, user_id: int, maxlen: int) -> list[int]:
        return self.histories([user_id], maxlen)[0]

    def histories(self, users: Sequence[int], maxlen: int) -> list[list[int]]:
        return list(self._each_history(users, maxlen))

    def history_arrays(self, users: Sequence[int], maxlen: int) -> list[npt.NDArray[np.int64]]:
        return [np.asarray(items, dtype=np.int64) for items in self._each_history(users, maxlen)]

    def _each_history(self, users: Sequence[int], maxlen: int) -> Iterator[list[int]]:
        if maxlen <= 0:
            yield from ([] for _ in users)
            return
        if len(users) == 1:  # recall by user id: one call, no pipeline
            yield items_of(self._redis.zrange(self.keys.history(users[0]), -maxlen, -1))
            return
        for start in range(0, len(users), _USERS_PER_TRIP):
            pipe = self._redis.pipeline(transaction=False)
            for user in users[start : start + _USERS_PER_TRIP]:
                pipe.zrange(self.keys.history(user), -maxlen, -1)
            yield from (items_of(members) for members in pipe.execute())

    def _slices(self, cursor: Cursor, limit: int | None) -> tuple[list[BatchSlice], Cursor]:
        """The batches' events after ``cursor``, partition by partition, at most ``limit`` in all."""
        positions = dict(cursor.positions)
        slices: list[BatchSlice] = []
        left = limit
        for partition in self._partitions():
            name = self.keys.stream_name(partition)
            start = last = positions.get(name, 0)
            while left is None or left > 0:
                entries = entries_after(self._redis, self.keys.events(partition), last, _BATCHES_PER_TRIP)
                if not entries:
                    break
                for entry in entries:
                    part = slice_after(entry, last, left)
                    if not len(part):
                        continue
                    slices.append(part)
                    last = part.last_seq
                    if left is not None:
                        left -= len(part)
                        if left <= 0:
                            break
            if last > start:
                positions[name] = last
            if left is not None and left <= 0:
                break
        return slices, Cursor(MappingProxyType(positions))

    def events_since(self, cursor: Cursor, limit: int | None = None) -> tuple[list[StoredClick], Cursor]:
        slices, after = self._slices(cursor, limit)
        return [click for part in slices for click in part.clicks()], after

    def columns_since(self, cursor: Cursor, limit: int | None = None) -> tuple[ClickColumns, Cursor]:
        slices, after = self._slices(cursor, limit)
        parts = []
        for part in slices:
            items = part.column(b"i")
            segments = tuple(
                (int(item), segment) for item, segment in zip(items.tolist(), part.segments(), strict=True) if segment
            )
            parts.append(ClickColumns(part.column(b"u"), items, part.column(b"t"), segments))
        return ClickColumns.concat(parts), after

    def event_count(self) -> int:
        pipe = self._redis.pipeline(transaction=False)
        for partition in self._partitions():
            pipe.hget(self.keys.position(partition), "total")
        return sum(int(raw or 0) for raw in pipe.execute())

    def close(self) -> None:
        self._redis.close()

    def __enter__(self) -> RedisStateReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
