"""Recall worker: ``recall.requests`` -> micro-batch -> one Milvus search -> replies on ``reply_to``.

Per micro-batch (opened by the first request, closed at ``max_batch`` requests or ``max_wait_ms``
later): decode every request (a bad one gets an ``ErrorReply`` with its code and reason), answer the
good ones with :class:`RecallEngine` (one live model per batch), produce every reply to the request's
``reply_to`` header (default: the replies topic) echoing its ``correlation_id`` header, wait until the
broker acknowledged or definitively refused each reply, and only then store the request offsets.

Several recall workers in one group share the requests topic's partitions.

Stage times (``mindstream_recall_stage_seconds``): a request's ``wait`` runs from the moment the
consumer handed it over (``poll`` returned the batch's first message, ``consume`` the rest) until its
batch starts; the engine's stages as :class:`StageTimes`; ``reply`` from the engine's answers until
every reply of the batch was produced *and acknowledged by the broker* (``flush``), once per batch.

``reply_to`` names a topic that may not exist yet: the producer asks for it the way any Kafka producer
does, so a broker with ``auto.create.topics.enable=true`` (Kafka's default, and the embedded broker's)
creates it and the reply is delivered. On a cluster with auto-creation off, the reply to an unknown
topic fails after the producer's ``message.timeout.ms`` (the client timeout): a reply the broker
refuses (unknown ``reply_to`` topic, ...) is logged and counted as undeliverable, and its request's
offset still advances: replies are only useful within the client's timeout, which is also the
producer's ``message.timeout.ms`` here, so redelivering the request later could only produce a reply
nobody waits for. A crash before the acknowledgements redelivers the batch (at-least-once; clients
ignore replies to correlation ids they no longer wait for).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from schemas.codec import DecodeError, decode_request, encode
from schemas.headers import CORRELATION_ID, DEADLINE_MS, REPLY_TO, get_header
from schemas.messages import ErrorCode, ErrorReply, RecallRequest
from workers.infra.kafka import Conf, close_producer, make_consumer, make_producer
from workers.infra.milvus_server import open_milvus
from workers.infra.topics import ensure_stack_topics, request_topics
from workers.infra.vector_store import VectorStore
from workers.ingest.state_reader import StateReader
from workers.metrics import GcPauses
from workers.recall.engine import HistorySource, RecallEngine, Reply, StageTimes
from workers.recall.live_model import LiveModel
from workers.recall.metrics import RecallMetrics
from workers.refresh.registry import ModelRegistry
from workers.runtime import StopFlag, configure_logging, metrics_registry, run_until_stopped, stop_on_signals
from workers.settings import Settings

__all__ = ["RecallWorker", "ReplyDeliveryError", "build_worker", "main"]

log = logging.getLogger(__name__)

IDLE_POLL_S: Final = 0.1  # longest wait for the first request of a batch (bounds the stop latency)
_TOPIC_RE: Final = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class ReplyDeliveryError(RuntimeError):
    """Replies still unacknowledged after the flush timeout: the batch's offsets must not advance."""


@dataclass
class _Pending:
    """One request of the batch: where its reply goes and what it is."""

    topic: str
    correlation_id: str | None
    reply: Reply | None = None
    request: RecallRequest | None = None


class RecallWorker:
    """``run(stop)`` until stopped, or ``run_once()`` batch by batch (tests); ``close()`` when done."""

    def __init__(
        self,
        conf: Conf,
        engine: RecallEngine,
        *,
        requests_topic: str,
        replies_topic: str,
        group_id: str,
        session_timeout_ms: int,
        max_batch: int,
        max_wait_ms: float,
        reply_timeout_s: float,
        metrics: RecallMetrics,
        fetch_wait_max_ms: int = 500,
        producer: Producer | None = None,
        consumer: Consumer | None = None,
    ) -> None:
        """``producer`` and ``consumer`` default to new clients on ``conf`` (tests pass their own)."""
        self.engine = engine
        self.replies_topic = replies_topic
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.reply_timeout_s = reply_timeout_s
        self.metrics = metrics
        timeout_ms = max(1, int(reply_timeout_s * 1000))
        if producer is None:  # not `producer or ...`: a Producer's truth value is its queue length
            producer = make_producer(conf, {"linger.ms": 0, "message.timeout.ms": timeout_ms})
        if consumer is None:
            overrides: Conf = {"fetch.wait.max.ms": fetch_wait_max_ms}
            consumer = make_consumer(conf, group_id, session_timeout_ms=session_timeout_ms, overrides=overrides)
        self._producer, self._consumer = producer, consumer
        self._consumer.subscribe([requests_topic])
        self._undelivered: list[str] = []
        self._closed = False

    def _take(self) -> tuple[list[Message], list[float]]:
        """A micro-batch: opened by the first message (waits up to IDLE_POLL_S), closed on size or time;
        with the ``perf_counter()`` at which the consumer handed each message over."""
        first = self._consumer.poll(IDLE_POLL_S)
        if first is None:
            return [], []
        polled = time.perf_counter()
        rest = self._consumer.consume(self.max_batch - 1, self.max_wait_s) if self.max_batch > 1 else []
        consumed = time.perf_counter()
        messages, arrived = [], []
        for msg, at in [(first, polled), *((m, consumed) for m in rest)]:
            error = msg.error()
            if error is None:
                messages.append(msg)
                arrived.append(at)
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error)
        return messages, arrived

    def run_once(self) -> int:
        """Answer one micro-batch; returns the number of requests answered (0 when idle)."""
        messages, arrived = self._take()
        if not messages:
            return 0
        started = time.perf_counter()
        self.metrics.observe_waits(started - at for at in arrived)
        pending = [_parse(msg, self.replies_topic) for msg in messages]
        good = [p for p in pending if p.request is not None]
        stages = StageTimes()
        answers = self.engine.answer([p.request for p in good if p.request is not None], started, stages=stages)
        for p, answer in zip(good, answers, strict=True):
            p.reply = answer
        users = sum(p.request.n_users for p in good if p.request is not None)
        answered = time.perf_counter()
        self.metrics.observe_batch(len(messages), users, answered - started)
        self.metrics.observe_engine(stages)
        producing = time.perf_counter()
        replies = [self._produce(p) for p in pending]
        self._flush()
        self.metrics.observe_stage("reply", time.perf_counter() - producing)
        self._store_offsets(messages)
        elapsed = time.perf_counter() - started
        for _ in messages:
            self.metrics.latency.observe(elapsed)
        self.metrics.record(replies)
        return len(messages)

    def _produce(self, pending: _Pending) -> Reply:
        reply = pending.reply or ErrorReply(code=ErrorCode.INTERNAL, message="no answer computed")
        cid = pending.correlation_id
        headers: list[tuple[str, str | bytes | None]] | None = [(CORRELATION_ID, cid)] if cid else None
        while True:
            try:
                self._producer.produce(pending.topic, value=encode(reply), headers=headers, on_delivery=self._delivered)
                return reply
            except BufferError:  # local queue full: let deliveries drain
                self._producer.poll(0.05)

    def _delivered(self, error: KafkaError | None, msg: Message) -> None:
        if error is not None:
            self._undelivered.append(f"{msg.topic()}: {error}")

    def _flush(self) -> None:
        left = self._producer.flush(self.reply_timeout_s + 1.0)
        if left:
            raise ReplyDeliveryError(f"{left} replies unacknowledged after {self.reply_timeout_s + 1.0} s")
        failed, self._undelivered = self._undelivered, []
        if failed:
            self.metrics.undeliverable.inc(len(failed))
            log.error("%d replies undeliverable: %s", len(failed), "; ".join(failed[:3]))

    def _store_offsets(self, messages: Sequence[Message]) -> None:
        last: dict[tuple[str, int], int] = {}
        for msg in messages:
            key = (msg.topic() or "", msg.partition() or 0)
            last[key] = max(last.get(key, -1), msg.offset() or 0)
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
        try:
            self._consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:  # partition revoked meanwhile: its next owner redelivers, clients dedupe
            log.warning("could not store offsets: %s", exc)

    def run(self, stop: StopFlag) -> None:
        """Batches until ``stop`` is set; then commit and close. A failure closes without a final commit."""
        self.engine.warm_up()
        failed = True
        try:
            run_until_stopped(self.run_once, stop)
            failed = False
        finally:
            self.close(commit=not failed)

    def _commit(self) -> None:
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("offset commit failed: %s", exc)

    def close(self, commit: bool = True) -> None:
        """Idempotent. Only answered batches have stored offsets."""
        if self._closed:
            return
        self._closed = True
        try:
            if commit:
                self._commit()
            self._consumer.close()
        finally:
            close_producer(self._producer, self.reply_timeout_s)
            stop_watching = getattr(self.engine.live, "close", None)  # LiveModel's alias watcher
            if callable(stop_watching):
                stop_watching()


def _parse(msg: Message, default_topic: str, now_ms: int | None = None) -> _Pending:
    """Headers and body of one request; a bad or expired one already carries its ``ErrorReply``."""
    headers = msg.headers()
    correlation_id = get_header(headers, CORRELATION_ID) or None
    reply_to = get_header(headers, REPLY_TO) or default_topic
    if not _TOPIC_RE.match(reply_to):
        message = "invalid reply_to header: not a Kafka topic name"
        return _Pending(default_topic, correlation_id, ErrorReply(code=ErrorCode.BAD_REQUEST, message=message))
    deadline = get_header(headers, DEADLINE_MS)
    if deadline is not None:
        if not deadline.isascii() or not deadline.isdigit() or len(deadline) > 16:
            message = "invalid deadline_ms header: epoch milliseconds as a decimal integer"
            return _Pending(reply_to, correlation_id, ErrorReply(code=ErrorCode.BAD_REQUEST, message=message))
        late = (int(time.time() * 1000) if now_ms is None else now_ms) - int(deadline)
        if late > 0:
            message = f"deadline passed {late} ms before the request was served; not searched"
            timeout = ErrorReply(code=ErrorCode.TIMEOUT, message=message)
            return _Pending(reply_to, correlation_id, timeout)
    try:
        return _Pending(reply_to, correlation_id, request=decode_request(msg.value()))
    except DecodeError as exc:
        return _Pending(reply_to, correlation_id, ErrorReply(code=exc.code, message=exc.reason))


def build_worker(
    settings: Settings, conf: Conf, store: VectorStore, history: HistorySource | None, metrics: RecallMetrics
) -> RecallWorker:
    """The worker as settings describe it: live alias from ``settings.milvus``, models from ``models_dir``."""
    live = LiveModel(
        store,
        ModelRegistry(settings.models_dir, settings.milvus.alias),
        check_every_s=settings.recall.alias_check_s,
    )
    live.watch()
    engine = RecallEngine(
        live,
        store,
        history,
        higher_is_better=settings.milvus.metric_type != "L2",
        categories=settings.data.item_catalogue(),  # for requests' `diversity`
    )
    kafka, recall = settings.kafka, settings.recall
    return RecallWorker(
        conf,
        engine,
        requests_topic=kafka.requests_topic,
        replies_topic=kafka.replies_topic,
        group_id=kafka.recall_group,
        session_timeout_ms=kafka.session_timeout_ms,
        max_batch=recall.max_batch,
        max_wait_ms=recall.max_wait_ms,
        reply_timeout_s=recall.client_timeout_s,
        metrics=metrics,
        fetch_wait_max_ms=recall.fetch_wait_max_ms,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mindstream recall", description="Answer recall requests from Kafka.")
    p.add_argument("--bootstrap", help="bootstrap servers (default: settings.kafka.bootstrap_servers)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``mindstream recall``: serve until SIGTERM/SIGINT; exit 0 after a clean stop."""
    args = _parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    conf = settings.kafka.client_config(args.bootstrap)
    ensure_stack_topics(conf, settings.kafka, request_topics(settings.kafka))
    registry = metrics_registry(args.metrics_port if args.metrics_port is not None else settings.recall.metrics_port)
    with contextlib.ExitStack() as stack:
        uri = stack.enter_context(open_milvus(settings.milvus, settings.milvus_dir))
        store = stack.enter_context(VectorStore(uri, settings.milvus))
        history = stack.enter_context(StateReader(settings.state_dir, settings.kafka.clicks_topic))
        worker = build_worker(settings, conf, store, history, RecallMetrics(registry))
        gc_pauses = GcPauses(registry)
        gc_pauses.install()
        stack.callback(gc_pauses.uninstall)
        with stop_on_signals(StopFlag()) as stop:
            worker.run(stop)
    log.info("recall stopped (%s)", stop.reason)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
