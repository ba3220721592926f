"""Catalogue worker (``mindstream catalogue``): items topic -> (dead-letter topic | per-partition SQLite
state), at-least-once, idempotent.

Per batch (closed on ``catalogue.batch_size`` messages or ``catalogue.batch_timeout_s``): decode
every message (:mod:`workers.catalogue.batch`); send the invalid ones to the items DLQ with the reason
and their original bytes (:class:`workers.ingest.dead_letters.DeadLetterSink`, the ingest worker's)
and wait for the broker's acknowledgement; apply the valid ones and each partition's last offset in
one SQLite transaction per partition; only then store the Kafka offsets. On assignment the consumer
resumes from the offset kept in the state file. Re-reading is harmless: the newest ``ts`` wins.

Its own process rather than a thread of the ingest worker: the two share nothing but the state
directory, a slow or failing catalogue never holds clicks back (nor the reverse), and each scales
and restarts on its own; the cost is one more small process (one consumer, one SQLite file per
partition).

No message stops the worker: a bad one is dead-lettered and passed. A dead letter the broker does not
acknowledge holds the batch (nothing applied, the consumer seeks back) and it is read again after
``catalogue.retry_backoff_s``.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaException, Message, TopicPartition

from schemas.codec import DecodeError
from workers.catalogue.batch import split_items
from workers.catalogue.metrics import CatalogueMetrics
from workers.catalogue.store import ItemStore, Tombstone
from workers.infra.kafka import Conf, close_producer, commit_stored, make_consumer, make_producer, stats_conf
from workers.infra.topics import ensure_stack_topics, items_topics
from workers.ingest.batch import reason_category
from workers.ingest.dead_letters import DeadLetterSink, deliver_or_hold
from workers.runtime import StopFlag, configure_logging, metrics_registry, run_until_stopped, stop_on_signals
from workers.settings import CatalogueSettings, KafkaSettings, Settings

__all__ = ["BatchOutcome", "CatalogueWorker", "main"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchOutcome:
    """One ``run_once``: ``consumed == valid + dead_lettered``; ``valid == changed + stale``."""

    consumed: int = 0
    valid: int = 0
    dead_lettered: int = 0
    changed: int = 0
    stale: int = 0


class CatalogueWorker:
    """``run(stop)`` until stopped, or ``run_once()`` batch by batch (tests); ``close()`` when done."""

    def __init__(
        self,
        conf: Conf,
        *,
        topic: str,
        dlq_topic: str,
        group_id: str,
        session_timeout_ms: int,
        state_dir: Path,
        metrics: CatalogueMetrics,
        settings: CatalogueSettings | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        """``settings`` and ``max_message_bytes`` default to the settings' defaults."""
        self.settings = settings or CatalogueSettings()
        max_message_bytes = max_message_bytes or KafkaSettings().max_message_bytes
        self.topic = topic
        self.state_dir = state_dir
        self.metrics = metrics
        self._stores: dict[tuple[str, int], ItemStore] = {}
        self._dlq = DeadLetterSink(
            make_producer(conf, {"message.max.bytes": max_message_bytes}),
            dlq_topic,
            self.settings.dlq_flush_timeout_s,
            max_message_bytes,
        )
        self._consumer = make_consumer(
            conf,
            group_id,
            session_timeout_ms=session_timeout_ms,
            overrides=stats_conf(self.settings.stats_interval_ms, metrics.on_stats),
        )
        self._consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self._closed = False

    def _store(self, topic: str, partition: int) -> ItemStore:
        store = self._stores.get((topic, partition))
        if store is None:
            store = self._stores[(topic, partition)] = ItemStore.open(self.state_dir, topic, partition)
        return store

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            last = self._store(tp.topic, tp.partition).last_offset(tp.topic, tp.partition)
            if last is None:
                continue
            try:
                high = int(consumer.get_watermark_offsets(tp, timeout=5.0, cached=False)[1])
            except KafkaException as exc:  # no broker answers: trust the state file's position
                log.warning("%s[%d]: log end unknown: %s", tp.topic, tp.partition, exc)
                high = None
            if high is not None and last >= high:
                # The topic was deleted and re-created: start from the group's offset (or the earliest);
                # the newest-ts rule makes any re-read harmless.
                log.warning(
                    "%s[%d]: stored offset %d beyond the log end %d; ignoring it", tp.topic, tp.partition, last, high
                )
                continue
            tp.offset = last + 1  # the state file is the source of truth for the position
        consumer.assign(partitions)
        self._observe_counts()
        log.info("assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        commit_stored(consumer)
        for tp in partitions:
            store = self._stores.pop((tp.topic, tp.partition), None)
            if store is not None:
                store.close()
        log.info("revoked %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))

    def run_once(self) -> BatchOutcome:
        """Consume one batch (size or time, whichever first) and make it durable."""
        messages = self._consumer.consume(self.settings.batch_size, self.settings.batch_timeout_s)
        if not messages:
            return BatchOutcome()
        started = time.perf_counter()
        batch = split_items(messages, self.settings.max_clock_skew_ms)
        self.metrics.consumed.inc(batch.consumed)
        self.metrics.batch_size.observe(batch.consumed)
        if not self._dead_letter(batch.rejected, messages):
            return BatchOutcome()
        changed = stale = tombstones = 0
        offsets = []
        for part in batch.partitions.values():
            result = self._store(part.topic, part.partition).apply(
                part.changes, part.topic, part.partition, part.last_offset
            )
            changed += result.changed
            stale += result.stale
            tombstones += sum(1 for c in part.changes if isinstance(c, Tombstone))
            offsets.append(TopicPartition(part.topic, part.partition, part.last_offset + 1))
        if offsets:
            try:
                self._consumer.store_offsets(offsets=offsets)
            except KafkaException as exc:  # partition lost meanwhile: its next owner resumes from the state
                log.warning("could not store offsets: %s", exc)
        self._observe(messages, {id(msg) for msg, _ in batch.rejected})
        outcome = BatchOutcome(batch.consumed, batch.valid, len(batch.rejected), changed, stale)
        self.metrics.changed.inc(changed)
        self.metrics.stale.inc(stale)
        self.metrics.tombstones.inc(tombstones)
        for _, error in batch.rejected:
            self.metrics.dead_lettered.labels(reason=reason_category(error)).inc()
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return outcome

    def _dead_letter(self, rejected: list[tuple[Message, DecodeError]], messages: list[Message]) -> bool:
        """Dead-letter the rejected messages; False (the batch rewound for a retry) when a letter was not
        acknowledged: nothing of the batch may be applied or its offsets stored then."""
        truncated = self._dlq.truncated
        reasons = [(msg, error.reason) for msg, error in rejected]
        delivered = deliver_or_hold(self._dlq, reasons, self._consumer, messages, self.settings.retry_backoff_s)
        if not delivered:
            self.metrics.batch_retries.inc()
        self.metrics.dead_letters_truncated.inc(self._dlq.truncated - truncated)
        return delivered

    def _observe(self, messages: list[Message], rejected: set[int]) -> None:
        now_ms = time.time() * 1000
        for msg in messages:
            if msg.error() is not None or id(msg) in rejected:
                continue
            kind, ts_ms = msg.timestamp()
            if kind != TIMESTAMP_NOT_AVAILABLE and ts_ms > 0:
                self.metrics.freshness.observe(max(now_ms - ts_ms, 0.0) / 1000)
        self._observe_counts()

    def _observe_counts(self) -> None:
        counts = [store.counts() for store in self._stores.values()]
        self.metrics.items.set(sum(c[0] for c in counts))
        self.metrics.unavailable.set(sum(c[1] for c in counts))

    def run(self, stop: StopFlag) -> None:
        """Batches until ``stop`` is set; then commit and close. A failure closes without a final commit."""
        failed = True
        try:
            run_until_stopped(self.run_once, stop)
            failed = False
        finally:
            self.close(commit=not failed)

    def close(self, commit: bool = True) -> None:
        """Idempotent. Only finished batches have stored offsets: closing never commits unfinished work."""
        if self._closed:
            return
        self._closed = True
        try:
            if commit:
                commit_stored(self._consumer)
            self._consumer.close()
        finally:
            close_producer(self._dlq.producer, self._dlq.flush_timeout_s)
            for store in self._stores.values():
                store.close()
            self._stores.clear()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mindstream catalogue", description="Apply item events to the catalogue state.")
    p.add_argument("--bootstrap", help="bootstrap servers (default: settings.kafka.bootstrap_servers)")
    p.add_argument("--state-dir", type=Path, help="default: settings.state_dir")
    p.add_argument("--topic", help="default: settings.kafka.items_topic")
    p.add_argument("--dlq-topic", help="default: settings.kafka.items_dlq_topic")
    p.add_argument("--group", help="default: settings.kafka.catalogue_group")
    p.add_argument("--metrics-port", type=int, help="default: settings.catalogue.metrics_port")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``mindstream catalogue``: run until SIGTERM/SIGINT; exit 0 after a clean stop."""
    args = _parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    kafka = settings.kafka
    conf = kafka.client_config(args.bootstrap)
    topic, dlq_topic = args.topic or kafka.items_topic, args.dlq_topic or kafka.items_dlq_topic
    ensure_stack_topics(conf, kafka, items_topics(kafka, topic, dlq_topic))
    port = args.metrics_port if args.metrics_port is not None else settings.catalogue.metrics_port
    worker = CatalogueWorker(
        conf,
        topic=topic,
        dlq_topic=dlq_topic,
        group_id=args.group or kafka.catalogue_group,
        session_timeout_ms=kafka.session_timeout_ms,
        state_dir=args.state_dir or settings.state_dir,
        metrics=CatalogueMetrics(metrics_registry(port, settings.metrics_host)),
        settings=settings.catalogue,
        max_message_bytes=kafka.max_message_bytes,
    )
    with stop_on_signals(StopFlag()) as stop:
        worker.run(stop)
    log.info("catalogue stopped (%s)", stop.reason)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
