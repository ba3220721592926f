"""Topic generations: how request/reply traffic stays within the embedded broker's cost model.

Tansu's in-memory engine lists every stored batch of a partition on each fetch, keeps every batch
until the topic is deleted (retention is ignored, DeleteRecords is unimplemented) and frees the
memory on DeleteTopics. Request/reply traffic is one single-record batch per message, so a fixed
``recall.requests`` topic makes every fetch slower, forever. With ``kafka.topic_generation_s`` set
(``mindstream up`` and the benchmarks set it for the embedded broker; production Kafka leaves it
unset), a logical topic ``T`` becomes ``T.g<N>`` with ``N = epoch seconds // topic_generation_s``:
producers write to the generation of their clock, the single consumer reads the current and any
older generation, and once a generation is over, drained and past every deadline it can serve, its
consumer is closed and the topic deleted. Stored batches per fetched partition then stay below
``rate x topic_generation_s``.

The clicks topic rotates the same way (``ClickTopic`` on the producer side, the ingest worker's own
``GenerationSource`` on the consumer side): the ingest worker applies every generation to the state
file of the logical topic's partition and keeps each generation's offset there, so a generation is
deleted only once everything in it is durable. One ingest worker reads the generations (the dev
stack runs one); production Kafka keeps one fixed, partitioned topic and its consumer group.

Two measured constraints shape this (librdkafka 2.16 against Tansu 0.6.0):

* a *consumer* that knows a topic crashes (SIGSEGV in ``rd_kafka_metadata_cache_find``) soon after
  the topic is deleted, even after ``incremental_unassign``: each generation therefore has its own
  consumer, closed before its topic is deleted; producers survive deletions;
* a producer writing to a deleted topic re-creates it (the broker auto-creates on produce): replies
  that can no longer be awaited are not produced (see ``workers.recall.worker``).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from confluent_kafka import OFFSET_STORED, Consumer, KafkaError, KafkaException, Message, TopicPartition

from workers.infra.kafka import Conf, ConfValue, ensure_topics, make_admin, make_consumer

__all__ = [
    "ClickTopic",
    "GenerationSource",
    "delete_topics",
    "generation_of",
    "generation_topic",
    "parse_generation",
]

log = logging.getLogger(__name__)

_LEAD_S: Final = 2.0  # the next generation's topic exists this long before producers switch to it
_DRAIN_IDLE_S: Final = 1.0  # a retiring generation must have been quiet this long


def generation_of(now: float, period_s: float) -> int:
    """The generation that epoch time ``now`` belongs to."""
    return int(now // period_s)


def generation_topic(base: str, gen: int) -> str:
    return f"{base}.g{gen}"


def parse_generation(base: str, topic: str) -> int | None:
    """``N`` of ``<base>.g<N>``; None for any other topic."""
    match = re.fullmatch(re.escape(base) + r"\.g(\d+)", topic)
    return int(match.group(1)) if match else None


def delete_topics(conf: Conf, topics: Iterable[str], timeout: float = 10.0) -> list[str]:
    """Delete ``topics``; returns those deleted (a missing one is not an error)."""
    wanted = list(topics)
    if not wanted:
        return []
    admin = make_admin(conf)  # keep a reference: a collected admin aborts its futures
    deleted = []
    for topic, future in admin.delete_topics(wanted, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            deleted.append(topic)
        except KafkaException as exc:
            error = exc.args[0]
            if not (isinstance(error, KafkaError) and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
                log.warning("could not delete topic %s: %s", topic, exc)
    return deleted


class ClickTopic:
    """The topic a producer writes to now: ``base`` itself, or (``period_s`` set) its current generation.

    The generation's topic is created the first time it is used (producers in generation mode must not
    auto-create: pass :func:`producer_overrides` to the producer), so producing never waits for a
    consumer to have created it.
    """

    def __init__(self, conf: Conf, base: str, period_s: float | None, *, partitions: int = 1) -> None:
        self.conf = conf
        self.base = base
        self.period_s = period_s
        self.partitions = partitions
        self._gen: int | None = None
        self._topic = base

    def producer_overrides(self) -> dict[str, ConfValue]:
        """A producer's metadata refresh must not re-create a deleted generation (the broker would)."""
        return {"allow.auto.create.topics": False} if self.period_s is not None else {}

    def __call__(self, now: float | None = None) -> str:
        if self.period_s is None:
            return self.base
        gen = generation_of(time.time() if now is None else now, self.period_s)
        if gen != self._gen:
            topic = generation_topic(self.base, gen)
            ensure_topics(self.conf, [topic], self.partitions)
            self._gen, self._topic = gen, topic
        return self._topic


# Where a generation consumer starts in (topic, partition): an offset, or None for the committed one.
StartOffset = Callable[[str, int], int | None]


@dataclass
class _Generation:
    gen: int
    topic: str
    consumer: Consumer
    partitions: list[int]
    starts: dict[int, int]  # partition -> the offset assigned (or OFFSET_STORED)
    quiet_since: float = field(default_factory=time.monotonic)


class GenerationSource:
    """The consumer side of a generational topic: one consumer per live generation, retired when drained.

    ``poll`` returns messages of any live generation (oldest first, so a retiring generation drains);
    ``maintain`` (call it often; it acts every ``tick_s``) creates the next generation's topic ahead of
    time, starts consumers for new generations and retires drained ones: commit, close, delete.
    ``serve_s`` is how long after a generation's end a message in it can still be worth answering
    (the callers' timeout): the topic lives at least that long plus ``grace_s``. Generation topics
    have ``partitions`` partitions, all read; ``start_offset`` (default: the committed offset, else
    the earliest) says where to resume a partition.
    """

    def __init__(
        self,
        conf: Conf,
        base: str,
        *,
        period_s: float,
        grace_s: float,
        serve_s: float,
        group_id: str,
        session_timeout_ms: int,
        overrides: dict[str, ConfValue] | None = None,
        tick_s: float = 0.5,
        partitions: int = 1,
        start_offset: StartOffset | None = None,
    ) -> None:
        self.conf = conf
        self.base = base
        self.period_s = period_s
        self.retire_after_s = serve_s + grace_s
        self.group_id = group_id
        self.session_timeout_ms = session_timeout_ms
        self.overrides = overrides or {}
        self.tick_s = tick_s
        self.partitions = partitions
        self.start_offset = start_offset
        self.live: dict[int, _Generation] = {}
        self._highest: int | None = None  # the newest generation ever started
        self.retired = 0
        self._next_tick = 0.0
        self._discover()
        self.maintain(force=True)

    def _discover(self) -> None:
        """Older generations left by an earlier run: read what is left, then retire them."""
        admin = make_admin(self.conf)
        topics = admin.list_topics(timeout=10).topics
        for topic, meta in topics.items():
            gen = parse_generation(self.base, topic)
            if gen is not None:
                self._start(gen, sorted(meta.partitions) or list(range(self.partitions)))

    def _start(self, gen: int, partitions: list[int] | None = None) -> None:
        if gen in self.live:
            return
        topic = generation_topic(self.base, gen)
        parts = partitions if partitions is not None else list(range(self.partitions))
        consumer = make_consumer(
            self.conf, self.group_id, session_timeout_ms=self.session_timeout_ms, overrides=self.overrides
        )
        assignment = []
        for p in parts:
            start = self.start_offset(topic, p) if self.start_offset is not None else None
            assignment.append(TopicPartition(topic, p, OFFSET_STORED if start is None else start))
        consumer.assign(assignment)  # committed (else earliest) unless start_offset names one
        self.live[gen] = _Generation(gen, topic, consumer, parts, {tp.partition: tp.offset for tp in assignment})
        self._highest = gen if self._highest is None else max(self._highest, gen)

    def maintain(self, force: bool = False) -> None:
        mono = time.monotonic()
        if not force and mono < self._next_tick:
            return
        self._next_tick = mono + self.tick_s
        now = time.time()
        current = generation_of(now, self.period_s)
        if self._highest is not None and self._highest + 1 < current:
            self._catch_up(self._highest + 1, current)
        ahead = generation_of(now + _LEAD_S, self.period_s)
        wanted = [g for g in range(current, ahead + 1) if g not in self.live]
        if wanted:
            ensure_topics(self.conf, [generation_topic(self.base, g) for g in wanted], self.partitions)
            for gen in wanted:
                self._start(gen)
        for gen in [g for g in self.live if g < current]:
            ended = (gen + 1) * self.period_s
            if now >= ended + self.retire_after_s and self._drained(self.live[gen], mono):
                self._retire(self.live.pop(gen))
        took = time.monotonic() - mono
        if took > 0.2:
            log.warning("%s generations: maintenance took %.2f s (serving waited)", self.base, took)

    def _catch_up(self, first: int, current: int) -> None:
        """Generations that began and ended while nobody maintained (a long batch, a stall): producers
        may have created and filled them; start those that exist."""
        topics = make_admin(self.conf).list_topics(timeout=10).topics
        for gen in range(first, current):
            topic = generation_topic(self.base, gen)
            if topic in topics and gen not in self.live:
                log.warning("%s: generation started while unmaintained; reading it now", topic)
                self._start(gen, sorted(topics[topic].partitions) or None)

    def _drained(self, generation: _Generation, mono: float) -> bool:
        if mono - generation.quiet_since < _DRAIN_IDLE_S:
            return False
        tps = [TopicPartition(generation.topic, p) for p in generation.partitions]
        try:  # cached: the high watermark of the last fetch, no broker round trip in the serving loop
            highs = [generation.consumer.get_watermark_offsets(tp, cached=True)[1] for tp in tps]
            positions = [tp.offset for tp in generation.consumer.position(tps)]
            if any(pos < 0 < high for pos, high in zip(positions, highs, strict=True)):
                # nothing consumed here yet (a restart resuming at the end): where it was told to start
                positions = self._starts(generation, positions)
        except KafkaException as exc:
            log.warning("%s: watermarks unavailable: %s", generation.topic, exc)
            return False
        return all(high == 0 or (high > 0 and pos >= high) for high, pos in zip(highs, positions, strict=True))

    @staticmethod
    def _starts(generation: _Generation, positions: list[int]) -> list[int]:
        """Unknown positions replaced by the assigned start (or the committed offset: a broker round trip)."""
        out = list(positions)
        stored = []
        for i, p in enumerate(generation.partitions):
            if out[i] < 0:
                start = generation.starts.get(p, OFFSET_STORED)
                if start >= 0:
                    out[i] = start
                else:
                    stored.append(i)
        if stored:
            committed = generation.consumer.committed(
                [TopicPartition(generation.topic, generation.partitions[i]) for i in stored], timeout=5
            )
            for i, tp in zip(stored, committed, strict=True):
                out[i] = tp.offset
        return out

    def _retire(self, generation: _Generation) -> None:
        try:
            generation.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("%s: final commit failed: %s", generation.topic, exc)
        generation.consumer.close()  # before the delete: a consumer that knows a deleted topic crashes
        delete_topics(self.conf, [generation.topic])
        self.retired += 1
        log.info("retired topic generation %s", generation.topic)

    def poll(self, timeout: float) -> tuple[Consumer, Message] | None:
        """The next message of any live generation; waits up to ``timeout`` on the newest one."""
        consumer, messages = self.consume(1, timeout)
        return (consumer, messages[0]) if consumer is not None and messages else None

    def consume(self, n: int, timeout: float) -> tuple[Consumer | None, list[Message]]:
        """Up to ``n`` messages of one live generation (an older one first, without waiting; else the
        newest, waiting up to ``timeout``) and the consumer they came from (to store their offsets)."""
        gens = sorted(self.live)
        for gen in gens[:-1]:
            got = self.live[gen].consumer.consume(n, 0)
            if got:
                self.live[gen].quiet_since = time.monotonic()
                return self.live[gen].consumer, got
        if not gens:
            time.sleep(timeout)
            return None, []
        newest = self.live[gens[-1]]
        got = newest.consumer.consume(n, timeout)
        if got:
            newest.quiet_since = time.monotonic()
        return newest.consumer, got

    def close(self, commit: bool = True) -> None:
        for generation in self.live.values():
            try:
                if commit:
                    generation.consumer.commit(asynchronous=False)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError._NO_OFFSET:
                    log.warning("%s: commit failed: %s", generation.topic, exc)
            finally:
                generation.consumer.close()
        self.live.clear()
