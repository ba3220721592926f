"""The ingest state as the workers use it, whatever stores it: one writer per partition, readers anywhere.

Two backends (``state.backend``), one contract (``tests/workers/ingest/test_history_store_contract.py``):

* ``sqlite`` (default, one host): a file per partition under ``<state_dir>/ingest``
  (:mod:`workers.ingest.state_store`, :mod:`workers.ingest.state_reader`);
* ``redis`` (many hosts): a Redis server that every worker reaches at ``state.redis_url``
  (:mod:`workers.ingest.redis_store`, :mod:`workers.ingest.redis_reader`), as Feast keeps SQLite for
  its local online store and Redis for production.

The contract: :meth:`PartitionWriter.apply` makes a batch's new clicks (users' histories and the
training stream), their event ids (dedupe) and the partition's last offset durable together or not
at all, so the ingest worker stores Kafka offsets only after it returned and resumes from
:meth:`PartitionWriter.last_offset`; a redelivered or re-sent event (same ``event_id``, within the
dedupe window) is skipped. Readers see a user's newest clicks by event time (ties by arrival) and
the training stream after a :class:`~workers.ingest.state_reader.Cursor` (one position per
partition stream, named by :attr:`PartitionWriter.name`). Retention keeps each user's newest
``history`` clicks and the training stream after the policy's boundary; what lies outside may be
gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from schemas.messages import ClickEvent
from workers.ingest.state_reader import Cursor, StateReader
from workers.ingest.state_store import ClickColumns, PartitionStore, RetentionPolicy, RetentionStep, StoredClick
from workers.settings import StateSettings


class StoreUnavailableError(RuntimeError):
    """The store did not answer (connection refused or lost, a timeout): a transient failure. What a
    batch wrote before it is durable or not; reading the batch again is safe (dedupe)."""


@runtime_checkable
class PartitionWriter(Protocol):
    """The single writer of one partition's state (the ingest worker that owns the partition)."""

    @property
    def name(self) -> str:
        """The partition's training stream as a :class:`Cursor` names it."""
        ...

    def apply(self, events: Sequence[ClickEvent], topic: str, partition: int, last_offset: int) -> int:
        """The batch's new events and ``last_offset``, durable together (or not at all); rows inserted."""
        ...

    def last_offset(self, topic: str, partition: int) -> int | None:
        """The offset of the last message applied, None before the first batch."""
        ...

    def retain(self, policy: RetentionPolicy, consumed: int) -> RetentionStep:
        """One bounded retention step; ``consumed``: the refresh's cursor position in this stream."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class HistoryReader(Protocol):
    """What the refresh, the fast path, recall by ``user_ids`` and the gateway read (any host)."""

    def history(self, user_id: int, maxlen: int) -> list[int]:
        """The user's newest ``maxlen`` item ids by event time, newest last."""
        ...

    def histories(self, users: Sequence[int], maxlen: int) -> list[list[int]]: ...

    def history_arrays(self, users: Sequence[int], maxlen: int) -> list[npt.NDArray[np.int64]]: ...

    def events_since(self, cursor: Cursor, limit: int | None = None) -> tuple[list[StoredClick], Cursor]:
        """Events appended after ``cursor`` (append order within a partition), at most ``limit``; the new cursor."""
        ...

    def columns_since(self, cursor: Cursor, limit: int | None = None) -> tuple[ClickColumns, Cursor]: ...

    def event_count(self) -> int:
        """Events ever applied (retention does not lower it)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> HistoryReader: ...

    def __exit__(self, *exc: object) -> None: ...


def open_writer(
    settings: StateSettings,
    state_dir: Path,
    topic: str,
    partition: int,
    *,
    dedupe_window: int | None = None,
    retention: RetentionPolicy | None = None,
) -> PartitionWriter:
    """The writer of ``topic``'s ``partition`` on the configured backend. ``retention``: the Redis backend
    caps histories and the training stream at every batch (memory); SQLite deletes in retention steps."""
    if settings.backend == "redis":
        from workers.ingest.redis_store import RedisPartitionStore

        return RedisPartitionStore(
            settings.redis_url.get_secret_value(),
            topic,
            partition,
            dedupe_window=dedupe_window,
            retention=retention,
            timeout_s=settings.redis_timeout_s,
        )
    return PartitionStore.open(state_dir, topic, partition, dedupe_window)


def open_reader(settings: StateSettings, state_dir: Path, topic: str) -> HistoryReader:
    """A reader of every partition of ``topic`` on the configured backend."""
    if settings.backend == "redis":
        from workers.ingest.redis_reader import RedisStateReader

        return RedisStateReader(settings.redis_url.get_secret_value(), topic, settings.redis_timeout_s)
    return StateReader(state_dir, topic)
