"""Pure part of the catalogue worker: a consumed batch -> item changes per partition and rejected messages.

A message is an :class:`~schemas.messages.ItemEvent` (JSON) whose Kafka key is its ``item_id`` in
decimal (the topic is compacted by key: a record under another key would never replace the item's),
or a tombstone (null value) whose key is an item id: the item is deleted. Anything else is rejected
with the reason (``schemas.codec.DecodeError``), for the dead-letter topic.

Time: the newest ``ts`` wins, so an event stamped far in the future would freeze its item (every real
event after it would be older). An event more than ``max_skew_ms`` ahead of the worker's clock is
rejected (``catalogue.max_clock_skew_ms``); a tombstone's time (its Kafka timestamp) is taken no later
than the worker's clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, KafkaException, Message

from schemas.codec import DecodeError, decode_item
from schemas.messages import MAX_ID
from workers.catalogue.store import ItemRecord, Tombstone, record_of

__all__ = ["ItemBatch", "PartitionChanges", "decode_message", "item_id_of_key", "split_items"]

log = logging.getLogger(__name__)

_MAX_ID_DIGITS: Final = len(str(MAX_ID))
KEY_MISMATCH: Final = "key: not the item_id in decimal (the items topic is compacted by it)"
BAD_TOMBSTONE: Final = "empty message (no value) whose key is not an item id"


def item_id_of_key(key: bytes | None) -> int | None:
    """The item id a Kafka key names (canonical decimal ASCII, 1..2^63-1), or None."""
    if key is None or not 0 < len(key) <= _MAX_ID_DIGITS or not key.isdigit() or key[:1] == b"0":
        return None
    value = int(key)
    return value if value <= MAX_ID else None


def decode_message(msg: Message, now_ms: int, max_skew_ms: int) -> ItemRecord | Tombstone | DecodeError:
    """One message's change, or why it is invalid (``now_ms``: the worker's clock, epoch milliseconds)."""
    value, key = msg.value(), msg.key()
    if value is None:
        item_id = item_id_of_key(key)
        if item_id is None:
            return DecodeError(BAD_TOMBSTONE)
        kind, ts = msg.timestamp()
        return Tombstone(item_id, min(ts, now_ms) if kind != TIMESTAMP_NOT_AVAILABLE and ts > 0 else 0)
    try:
        event = decode_item(value)
    except DecodeError as exc:
        return exc
    if key != event.kafka_key():
        return DecodeError(KEY_MISMATCH)
    if event.ts > now_ms + max_skew_ms:
        return DecodeError(f"ts: more than {max_skew_ms} ms ahead of the catalogue's clock")
    return record_of(event)


@dataclass
class PartitionChanges:
    """Valid changes of one partition in offset order, and the last offset consumed there (valid or not)."""

    topic: str
    partition: int
    last_offset: int
    changes: list[ItemRecord | Tombstone] = field(default_factory=list)


@dataclass
class ItemBatch:
    consumed: int = 0
    partitions: dict[tuple[str, int], PartitionChanges] = field(default_factory=dict)
    rejected: list[tuple[Message, DecodeError]] = field(default_factory=list)

    @property
    def valid(self) -> int:
        return sum(len(p.changes) for p in self.partitions.values())


def split_items(messages: Sequence[Message], max_skew_ms: int, now_ms: int | None = None) -> ItemBatch:
    """Decode ``messages``; raises ``KafkaException`` on a fatal client error (nothing is applied)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    batch = ItemBatch()
    for msg in messages:
        error = msg.error()
        if error is not None:
            if error.fatal():
                raise KafkaException(error)
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error)
            continue
        batch.consumed += 1
        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        part = batch.partitions.get((topic, partition))
        if part is None:
            part = batch.partitions[(topic, partition)] = PartitionChanges(topic, partition, offset)
        part.last_offset = max(part.last_offset, offset)
        result = decode_message(msg, now, max_skew_ms)
        if isinstance(result, DecodeError):
            batch.rejected.append((msg, result))
        else:
            part.changes.append(result)
    return batch
