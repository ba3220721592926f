"""Ingest worker: clicks topic -> (dead-letter topic | per-partition state), at-least-once, idempotent.

The state is SQLite files under ``state_dir`` or a Redis server (``state.backend``, see
``workers.ingest.history_store``); "state file" below means either.

Per batch (closed on ``batch_size`` messages or ``batch_timeout_s``): decode every message; send the
invalid ones to the DLQ with their original bytes (cut to fit the topic's record size, see
``workers.ingest.dead_letters``) and wait for the broker's acknowledgement; apply
the valid ones and the partition's last offset in one SQLite transaction per partition; only then
store the Kafka offsets (librdkafka commits stored offsets in the background and on close). On
assignment the consumer resumes from the offset kept in the state file, which is always at or past
Kafka's committed offset; redeliveries are skipped by ``event_id`` (see ``workers.ingest.state_store``).
Several ingest workers in one group share the partitions; a partition that moves resumes from its
state file on the new owner.

No message stops the worker: a bad one is dead-lettered and passed. A dead letter the broker does not
acknowledge (it is down, the DLQ topic is missing) is a transient failure: nothing of the batch is
applied, the consumer seeks back to the batch's first offsets and reads it again after
``ingest.retry_backoff_s``, the worker keeps running. So is a state store that does not answer (a Redis
server restarting): the batch's offsets are not stored, it is read again after the same pause, and
what it applied before the failure is skipped as duplicates (its dead letters, if any, are sent again,
as after a crash).
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
from workers.infra.kafka import Conf, close_producer, commit_stored, make_consumer, make_producer, rewind, stats_conf
from workers.infra.topics import clicks_topics, ensure_stack_topics
from workers.ingest.batch import reason_category, split_batch
from workers.ingest.dead_letters import DeadLetterSink, deliver_or_hold
from workers.ingest.history_store import PartitionWriter, StoreUnavailableError, open_writer
from workers.ingest.metrics import IngestMetrics
from workers.ingest.retention import Retention
from workers.runtime import StopFlag, configure_logging, metrics_registry, run_until_stopped, stop_on_signals
from workers.settings import IngestSettings, KafkaSettings, Settings, StateSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchOutcome:
    """One ``run_once``: ``consumed == valid + dead_lettered``, ``valid == applied + duplicates``."""

    consumed: int = 0
    valid: int = 0
    dead_lettered: int = 0
    applied: int = 0
    duplicates: int = 0


def _log_end(consumer: Consumer, tp: TopicPartition, attempts: int = 3) -> int | None:
    """The partition's high watermark, or None when no broker answers (a leader moving, a broker down):
    the state file's position is then trusted as it is."""
    for attempt in range(attempts):
        try:
            return int(consumer.get_watermark_offsets(tp, timeout=5.0, cached=False)[1])
        except KafkaException as exc:
            log.warning("%s[%d]: log end unknown (attempt %d): %s", tp.topic, tp.partition, attempt + 1, exc)
    return None


class IngestWorker:
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
        batch_size: int,
        batch_timeout_s: float,
        dlq_flush_timeout_s: float,
        stats_interval_ms: int,
        metrics: IngestMetrics,
        dedupe_window: int | None = None,
        retention: Retention | None = None,
        max_message_bytes: int | None = None,
        retry_backoff_s: float | None = None,
        state: StateSettings | None = None,
    ) -> None:
        """``max_message_bytes``, ``retry_backoff_s`` and ``state`` (the backend) default to the settings' defaults."""
        self.state = state or StateSettings()
        max_message_bytes = max_message_bytes or KafkaSettings().max_message_bytes
        self.retry_backoff_s = IngestSettings().retry_backoff_s if retry_backoff_s is None else retry_backoff_s
        self.topic = topic
        self.state_dir = state_dir
        self.batch_size = batch_size
        self.batch_timeout_s = batch_timeout_s
        self.metrics = metrics
        self.dedupe_window = dedupe_window
        self.retention = retention  # a bounded step between batches (workers.ingest.retention)
        self._stores: dict[tuple[str, int], PartitionWriter] = {}
        self._dlq = DeadLetterSink(
            make_producer(conf, {"message.max.bytes": max_message_bytes}),
            dlq_topic,
            dlq_flush_timeout_s,
            max_message_bytes,
        )
        self._consumer = make_consumer(
            conf,
            group_id,
            session_timeout_ms=session_timeout_ms,
            overrides=stats_conf(stats_interval_ms, metrics.on_stats),
        )
        self._consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self._closed = False

    def _store(self, topic: str, partition: int) -> PartitionWriter:
        store = self._stores.get((topic, partition))
        if store is None:
            store = self._stores[(topic, partition)] = open_writer(
                self.state,
                self.state_dir,
                topic,
                partition,
                dedupe_window=self.dedupe_window,
                retention=None if self.retention is None else self.retention.policy,
            )
        return store

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            last = self._store(tp.topic, tp.partition).last_offset(tp.topic, tp.partition)
            if last is None:
                continue
            high = _log_end(consumer, tp)
            if high is not None and last >= high:
                # The log is shorter than what we applied: the topic was deleted and re-created. Our
                # position means nothing there: start from the group's committed offset (or the
                # earliest); event_id dedupe makes any re-read harmless.
                log.warning(
                    "%s[%d]: stored offset %d beyond the log end %d; ignoring it", tp.topic, tp.partition, last, high
                )
                continue
            tp.offset = last + 1  # the state file is the source of truth for the position
        consumer.assign(partitions)
        log.info("assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        commit_stored(consumer)
        for tp in partitions:
            store = self._stores.pop((tp.topic, tp.partition), None)
            if store is not None:
                store.close()
        log.info("revoked %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))

    def run_once(self) -> BatchOutcome:
        """Consume one batch (size or time, whichever comes first) and make it durable."""
        consumer = self._consumer
        messages = consumer.consume(self.batch_size, self.batch_timeout_s)
        if self.retention is not None:
            self.retention.step(self._stores.values())
        if not messages:
            return BatchOutcome()
        started = time.perf_counter()
        batch = split_batch(messages)
        self.metrics.consumed.inc(batch.consumed)
        self.metrics.batch_size.observe(batch.consumed)
        if not self._dead_letter(batch.rejected, messages):
            return BatchOutcome()
        applied = 0
        offsets = []
        try:
            for part in batch.partitions.values():
                applied += self._store(part.topic, part.partition).apply(
                    part.events, part.topic, part.partition, part.last_offset
                )
                offsets.append(TopicPartition(part.topic, part.partition, part.last_offset + 1))
        except StoreUnavailableError as exc:  # held: no offset stored, read again (dedupe skips what was applied)
            log.error("state store unavailable; batch held, retry in %.1f s: %s", self.retry_backoff_s, exc)
            self.metrics.batch_retries.inc()
            rewind(consumer, messages)
            time.sleep(self.retry_backoff_s)
            return BatchOutcome()
        if offsets:
            try:
                consumer.store_offsets(offsets=offsets)
            except KafkaException as exc:  # partition lost meanwhile: its next owner resumes from the state
                log.warning("could not store offsets: %s", exc)
        self._observe_freshness(messages, {id(msg) for msg, _ in batch.rejected})
        valid, rejected = batch.valid, len(batch.rejected)
        outcome = BatchOutcome(batch.consumed, valid, rejected, applied, valid - applied)
        self._record(outcome, [reason_category(e) for _, e in batch.rejected], time.perf_counter() - started)
        return outcome

    def _dead_letter(self, rejected: list[tuple[Message, DecodeError]], messages: list[Message]) -> bool:
        """Dead-letter the rejected messages; False (the batch rewound for a retry) when a letter was not
        acknowledged: nothing of the batch may be applied or its offsets stored then."""
        truncated = self._dlq.truncated
        reasons = [(msg, error.reason) for msg, error in rejected]
        delivered = deliver_or_hold(self._dlq, reasons, self._consumer, messages, self.retry_backoff_s)
        if not delivered:
            self.metrics.batch_retries.inc()
        self.metrics.dead_letters_truncated.inc(self._dlq.truncated - truncated)
        return delivered

    def _observe_freshness(self, messages: list[Message], rejected: set[int]) -> None:
        """User-side freshness: each applied click's Kafka timestamp -> durable in the state store,
        where recall by ``user_ids`` reads it."""
        now_ms = time.time() * 1000
        for msg in messages:
            kind, ts_ms = msg.timestamp()
            if id(msg) not in rejected and kind != TIMESTAMP_NOT_AVAILABLE and ts_ms > 0:
                self.metrics.user_freshness.observe(max(now_ms - ts_ms, 0.0) / 1000)

    def _record(self, outcome: BatchOutcome, categories: list[str], seconds: float) -> None:
        self.metrics.valid.inc(outcome.valid)
        self.metrics.invalid.inc(outcome.dead_lettered)
        for category in categories:
            self.metrics.dead_lettered.labels(reason=category).inc()
        self.metrics.applied.inc(outcome.applied)
        self.metrics.duplicates.inc(outcome.duplicates)
        self.metrics.batch_seconds.observe(seconds)

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
    return argparse.ArgumentParser(
        prog="mindstream ingest",
        description="Apply clicks to the ingest state. Configured by the settings (MINDSTREAM_* variables: "
        "MINDSTREAM_KAFKA__*, MINDSTREAM_INGEST__*, MINDSTREAM_STATE_DIR).",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``mindstream ingest``: run until SIGTERM/SIGINT; exit 0 after a clean stop."""
    _parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    kafka, ingest = settings.kafka, settings.ingest
    conf = kafka.client_config()
    ensure_stack_topics(conf, kafka, clicks_topics(kafka))
    worker = IngestWorker(
        conf,
        topic=kafka.clicks_topic,
        dlq_topic=kafka.clicks_dlq_topic,
        group_id=kafka.ingest_group,
        session_timeout_ms=kafka.session_timeout_ms,
        state_dir=settings.state_dir,
        batch_size=ingest.batch_size,
        batch_timeout_s=ingest.batch_timeout_s,
        dlq_flush_timeout_s=ingest.dlq_flush_timeout_s,
        stats_interval_ms=ingest.stats_interval_ms,
        metrics=IngestMetrics(metrics_registry(ingest.metrics_port)),
        dedupe_window=ingest.dedupe_window,
        retention=Retention.for_state_dir(ingest.retention, settings.state_dir) if ingest.retention.enabled else None,
        max_message_bytes=kafka.max_message_bytes,
        retry_backoff_s=ingest.retry_backoff_s,
        state=settings.state,
    )
    with stop_on_signals(StopFlag()) as stop:
        worker.run(stop)
    log.info("ingest stopped (%s)", stop.reason)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
