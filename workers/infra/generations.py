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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from confluent_kafka import OFFSET_STORED, Consumer, KafkaError, KafkaException, Message, TopicPartition

from workers.infra.kafka import Conf, ConfValue, ensure_topics, make_admin, make_consumer

__all__ = [
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


@dataclass
class _Generation:
    gen: int
    topic: str
    consumer: Consumer
    quiet_since: float = field(default_factory=time.monotonic)


class GenerationSource:
    """The consumer side of a generational topic: one consumer per live generation, retired when drained.

    ``poll`` returns messages of any live generation (oldest first, so a retiring generation drains);
    ``maintain`` (call it often; it acts every ``tick_s``) creates the next generation's topic ahead of
    time, starts consumers for new generations and retires drained ones: commit, close, delete.
    ``serve_s`` is how long after a generation's end a message in it can still be worth answering
    (the callers' timeout): the topic lives at least that long plus ``grace_s``.
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
    ) -> None:
        self.conf = conf
        self.base = base
        self.period_s = period_s
        self.retire_after_s = serve_s + grace_s
        self.group_id = group_id
        self.session_timeout_ms = session_timeout_ms
        self.overrides = overrides or {}
        self.tick_s = tick_s
        self.live: dict[int, _Generation] = {}
        self.retired = 0
        self._next_tick = 0.0
        self._discover()
        self.maintain(force=True)

    def _discover(self) -> None:
        """Older generations left by an earlier run: read what is left, then retire them."""
        admin = make_admin(self.conf)
        topics = admin.list_topics(timeout=10).topics
        for topic in topics:
            gen = parse_generation(self.base, topic)
            if gen is not None:
                self._start(gen)

    def _start(self, gen: int) -> None:
        if gen in self.live:
            return
        topic = generation_topic(self.base, gen)
        consumer = make_consumer(
            self.conf, self.group_id, session_timeout_ms=self.session_timeout_ms, overrides=self.overrides
        )
        consumer.assign([TopicPartition(topic, 0, OFFSET_STORED)])  # committed, else earliest
        self.live[gen] = _Generation(gen, topic, consumer)

    def maintain(self, force: bool = False) -> None:
        mono = time.monotonic()
        if not force and mono < self._next_tick:
            return
        self._next_tick = mono + self.tick_s
        now = time.time()
        current = generation_of(now, self.period_s)
        wanted = [g for g in (current, generation_of(now + _LEAD_S, self.period_s)) if g not in self.live]
        if wanted:
            ensure_topics(self.conf, [generation_topic(self.base, g) for g in wanted])
            for gen in wanted:
                self._start(gen)
        for gen in [g for g in self.live if g < current]:
            ended = (gen + 1) * self.period_s
            if now >= ended + self.retire_after_s and self._drained(self.live[gen], mono):
                self._retire(self.live.pop(gen))
        took = time.monotonic() - mono
        if took > 0.2:
            log.warning("%s generations: maintenance took %.2f s (serving waited)", self.base, took)

    def _drained(self, generation: _Generation, mono: float) -> bool:
        if mono - generation.quiet_since < _DRAIN_IDLE_S:
            return False
        tp = TopicPartition(generation.topic, 0)
        try:  # cached: the high watermark of the last fetch, no broker round trip in the serving loop
            _, high = generation.consumer.get_watermark_offsets(tp, cached=True)
            position = generation.consumer.position([tp])[0].offset
        except KafkaException as exc:
            log.warning("%s: watermarks unavailable: %s", generation.topic, exc)
            return False
        return high == 0 or (high > 0 and position >= high)

    def _retire(self, generation: _Generation) -> None:
        try:
            generation.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("%s: final commit failed: %s", generation.topic, exc)
        generation.consumer.close()  # before the delete: a consumer that knows a deleted topic crashes
        delete_topics(self.conf, [generation.topic])
        self.retired += 1
        log.info("retired request topic %s", generation.topic)

    def poll(self, timeout: float) -> tuple[Consumer, Message] | None:
        """The next message of any live generation; waits up to ``timeout`` on the newest one."""
        gens = sorted(self.live)
        for gen in gens[:-1]:
            msg = self.live[gen].consumer.poll(0)
            if msg is not None:
                self.live[gen].quiet_since = time.monotonic()
                return self.live[gen].consumer, msg
        if not gens:
            return None
        newest = self.live[gens[-1]]
        msg = newest.consumer.poll(timeout)
        if msg is None:
            return None
        newest.quiet_since = time.monotonic()
        return newest.consumer, msg

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
