"""Kafka client factories with the project's defaults, and idempotent topic creation.

Consumers use at-least-once with background commits: ``enable.auto.offset.store=false``; a worker
calls ``consumer.store_offsets(msg)`` only once the message's effect is durable, and librdkafka
commits stored offsets in the background and on ``close()``. An explicit ``commit()`` is still
available (it commits the stored offsets, or the given message / offsets).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, TopicMetadata

from schemas.headers import HeaderValue

ConfValue = str | int | float | bool
Conf = Mapping[str, ConfValue]

PRODUCER_DEFAULTS: Final[Mapping[str, ConfValue]] = {
    "enable.idempotence": True,  # implies acks=all and ordered retries
    "linger.ms": 5,
    "compression.type": "lz4",
}
CONSUMER_DEFAULTS: Final[Mapping[str, ConfValue]] = {
    "auto.offset.reset": "earliest",
    "enable.auto.commit": True,
    "enable.auto.offset.store": False,
    "auto.commit.interval.ms": 1000,
}
log = logging.getLogger(__name__)

# What a record costs beyond its key, value and header bytes (Kafka's record and batch framing), kept
# free below the producer's message.max.bytes so that a record judged to fit does fit.
RECORD_OVERHEAD_BYTES: Final = 512


def record_bytes(value: bytes | None, key: bytes | None = None, headers: Sequence[tuple[str, HeaderValue]] = ()) -> int:
    """Bytes a record of this key, value and headers takes, framing included (an upper bound)."""
    size = RECORD_OVERHEAD_BYTES + len(value or b"") + len(key or b"")
    for name, header in headers:
        raw = header.encode("utf-8") if isinstance(header, str) else header or b""
        size += len(name.encode("utf-8")) + len(raw) + 8  # 8: the header's length varints
    return size


def _merged(conf: Conf, defaults: Conf, overrides: Conf | None) -> dict[str, ConfValue]:
    return {**defaults, **conf, **(overrides or {})}


def make_admin(conf: Conf) -> AdminClient:
    """An admin client (accepts ``KafkaSettings.client_config()`` as it is)."""
    return AdminClient(dict(conf))


def make_producer(conf: Conf, overrides: Conf | None = None) -> Producer:
    """An idempotent producer; ``overrides`` win over ``conf``, which wins over the defaults."""
    return Producer(_merged(conf, PRODUCER_DEFAULTS, overrides))


def close_producer(producer: Producer, timeout: float) -> int:
    """Flush for up to ``timeout`` s, drop what is left, and close the producer's connections now (a
    producer left to the garbage collector keeps reconnecting to a broker that is stopping).
    Returns the number of messages that were not delivered."""
    left = producer.flush(timeout)
    if left:
        producer.purge()
        producer.flush(0)
    producer.close()
    return int(left)


def make_consumer(conf: Conf, group_id: str, *, session_timeout_ms: int, overrides: Conf | None = None) -> Consumer:
    """A consumer in ``group_id`` (pass ``settings.kafka.session_timeout_ms``; joins take ~half of it)."""
    group: dict[str, ConfValue] = {
        "group.id": group_id,
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(100, session_timeout_ms // 3),
    }
    return Consumer(_merged({**conf, **group}, CONSUMER_DEFAULTS, overrides))


@dataclass(frozen=True)
class TopicSpec:
    """A topic as the stack creates it: partitions, replication (-1 = the broker's default), configs."""

    name: str
    partitions: int = 1
    replication_factor: int = -1
    config: Mapping[str, str] = field(default_factory=dict)


def ensure_topics(
    conf: Conf, topics: Iterable[str | TopicSpec], partitions: int = 1, timeout: float = 10.0
) -> list[str]:
    """Create the missing topics (existing ones are left as they are) and wait until metadata lists them.

    A plain name gets ``partitions`` partitions and the broker's default replication and configs.
    Returns the topics this call created.
    """
    specs: dict[str, TopicSpec] = {}
    for t in topics:
        spec = t if isinstance(t, TopicSpec) else TopicSpec(t, partitions)
        specs.setdefault(spec.name, spec)
    wanted = list(specs)
    if not wanted:
        return []
    admin = make_admin(conf)
    futures = admin.create_topics(
        [
            NewTopic(
                s.name, num_partitions=s.partitions, replication_factor=s.replication_factor, config=dict(s.config)
            )
            for s in specs.values()
        ],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result(timeout)
            created.append(topic)
        except KafkaException as exc:
            error = exc.args[0]
            if not (isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise
    expected = {t: (specs[t].partitions if t in created else 1) for t in wanted}
    _wait_led(admin, expected, time.monotonic() + timeout)
    return created


def _wait_led(admin: AdminClient, expected: Mapping[str, int], deadline: float) -> None:
    """Until metadata lists each topic with at least its expected partitions, every one with a leader.

    A topic listed without error can still show no partitions, or partitions without a leader, for a moment
    after its creation on a cluster (the answering broker has not applied the controller's record yet).
    """
    while True:
        listed = admin.list_topics(timeout=max(0.1, deadline - time.monotonic())).topics
        missing = [t for t, count in expected.items() if not _led(listed.get(t), count)]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without a leader for every partition: {', '.join(missing)}")
        time.sleep(0.05)


def _led(meta: TopicMetadata | None, partitions: int) -> bool:
    if meta is None or meta.error is not None or len(meta.partitions) < partitions:
        return False
    return all(p.error is None and p.leader >= 0 for p in meta.partitions.values())


def stats_conf(interval_ms: int, callback: Callable[[str], None]) -> Conf:
    """librdkafka statistics every ``interval_ms`` into ``callback`` (none when 0), as consumer overrides."""
    if interval_ms <= 0:
        return {}
    # librdkafka takes the callback in the config dict; the Conf type only names scalars.
    return cast(Conf, {"statistics.interval.ms": interval_ms, "stats_cb": callback})


def commit_stored(consumer: Consumer) -> None:
    """Commit the stored offsets (only ever those of finished batches); nothing stored is not an error."""
    try:
        consumer.commit(asynchronous=False)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError._NO_OFFSET:
            log.warning("offset commit failed: %s", exc)


def rewind(consumer: Consumer, messages: Sequence[Message]) -> None:
    """Seek every partition of a batch back to its first message (the batch is read again)."""
    first: dict[tuple[str, int], int] = {}
    for msg in messages:
        key = (msg.topic() or "", msg.partition() or 0)
        first[key] = min(first.get(key, msg.offset() or 0), msg.offset() or 0)
    for (topic, partition), offset in first.items():
        try:
            consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:  # revoked meanwhile: its next owner resumes from its own position
            log.warning("could not rewind %s[%d]: %s", topic, partition, exc)
