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

Poison-message policy: a request never stops the worker. Whatever fails permanently for one request
(an undecodable body, a refused or missing ``reply_to`` topic, an over-long ``correlation_id``, a reply
that does not fit in ``kafka.max_message_bytes``, a reply the broker refuses) ends in an error reply or
in the ``undeliverable`` counter, and its offset advances: replies are only useful within the client's
timeout, which is also the producer's ``message.timeout.ms`` here, so redelivering the request later
could only produce a reply nobody waits for. No exception from producing a reply leaves ``run_once``.
Where replies may go and how large they may be: :mod:`workers.recall.replies`. A crash before the
acknowledgements redelivers the batch (at-least-once; clients ignore replies to correlation ids they
no longer wait for).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from schemas.codec import DecodeError, decode_request, encode
from schemas.headers import CORRELATION_ID, DEADLINE_MS, REPLY_TO, get_header
from schemas.messages import ErrorCode, ErrorReply, RecallRequest
from workers.catalogue.view import CatalogueView
from workers.infra.kafka import Conf, close_producer, commit_stored, make_consumer, make_producer, record_bytes
from workers.infra.milvus_server import open_milvus
from workers.infra.topics import ensure_stack_topics, request_topics, stack_topics
from workers.infra.vector_store import VectorStore
from workers.ingest.history_store import open_reader
from workers.metrics import GcPauses
from workers.recall.breaker import CircuitBreaker, register_breaker_metrics
from workers.recall.budget import Budget
from workers.recall.engine import HistorySource, RecallEngine, Reply, StageTimes
from workers.recall.item_filters import Filtering
from workers.recall.live_model import LiveModel
from workers.recall.metrics import RecallMetrics
from workers.recall.popular import PopularItems
from workers.recall.replies import KnownTopics, ReplyPolicy
from workers.recall.serving_state import follow_serving_state
from workers.refresh.registry import ModelRegistry
from workers.runtime import StopFlag, configure_logging, metrics_registry, run_until_stopped, stop_on_signals
from workers.settings import KafkaSettings, RecallSettings, Settings

__all__ = ["RecallWorker", "build_worker", "main"]

log = logging.getLogger(__name__)

IDLE_POLL_S: Final = 0.1  # longest wait for the first request of a batch (bounds the stop latency)
_LIST_TOPICS_TIMEOUT_S: Final = 5.0


@dataclass
class _Pending:
    """One request of the batch: where its reply goes and what it is."""

    topic: str
    correlation_id: str | None
    reply: Reply | None = None
    request: RecallRequest | None = None
    deadline_ms: int | None = None

    def refuse(self, topic: str, code: ErrorCode, message: str) -> None:
        """Answer with an error on ``topic`` instead of searching."""
        self.topic, self.request, self.reply = topic, None, ErrorReply(code=code, message=message)


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
        policy: ReplyPolicy | None = None,
        max_message_bytes: int | None = None,
        fetch_wait_max_ms: int | None = None,
        producer: Producer | None = None,
        consumer: Consumer | None = None,
    ) -> None:
        """``producer`` and ``consumer`` default to new clients on ``conf`` (tests pass their own); ``policy``
        and ``max_message_bytes`` to the settings' defaults for these topics, ``fetch_wait_max_ms`` to the
        settings' default."""
        if policy is None:
            policy = ReplyPolicy.for_stack(
                replies_topic, [requests_topic], None, RecallSettings().max_correlation_id_bytes
            )
        if max_message_bytes is None:
            max_message_bytes = KafkaSettings().max_message_bytes
        if fetch_wait_max_ms is None:
            fetch_wait_max_ms = RecallSettings().fetch_wait_max_ms
        self.engine = engine
        self.replies_topic = replies_topic
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.reply_timeout_s = reply_timeout_s
        self.metrics = metrics
        self.policy = policy
        self.max_message_bytes = max_message_bytes
        timeout_ms = max(1, int(reply_timeout_s * 1000))
        if producer is None:  # not `producer or ...`: a Producer's truth value is its queue length
            producer = make_producer(
                conf, {"linger.ms": 0, "message.timeout.ms": timeout_ms, "message.max.bytes": max_message_bytes}
            )
        self._topics = KnownTopics(self._list_topics, clock=time.perf_counter)
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
        pending = [_parse(msg, self.replies_topic, self.policy) for msg in messages]
        self._refuse_missing_topics(pending, max(arrived))
        good = [p for p in pending if p.request is not None]
        stages = StageTimes()
        answers = self.engine.answer(
            [p.request for p in good if p.request is not None],
            started,
            stages=stages,
            deadlines=[p.deadline_ms for p in good],
        )
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

    def _list_topics(self) -> list[str]:
        return list(self._producer.list_topics(timeout=_LIST_TOPICS_TIMEOUT_S).topics)

    def _refuse_missing_topics(self, pending: Sequence[_Pending], received_at: float) -> None:
        """Requests whose ``reply_to`` topic does not exist are answered on the default replies topic."""
        named = {p.topic for p in pending if p.topic != self.replies_topic}
        missing = self._topics.missing(named, received_at) if named else set()
        for p in pending:
            if p.topic in missing:
                message = f"reply_to topic {p.topic!r} does not exist (create it before sending requests)"
                p.refuse(self.replies_topic, ErrorCode.BAD_REQUEST, message)

    def _produce(self, pending: _Pending) -> Reply:
        """Produce the reply; one that cannot be produced where it should go becomes an error reply on the
        default replies topic, and one that cannot be produced at all is counted undeliverable. Never raises."""
        reply = pending.reply or ErrorReply(code=ErrorCode.INTERNAL, message="no answer computed")
        cid = pending.correlation_id
        headers: list[tuple[str, str | bytes | None]] = [(CORRELATION_ID, cid)] if cid else []
        value = encode(reply)
        size = record_bytes(value, headers=headers)
        if size > self.max_message_bytes:
            message = (
                f"reply of {size} bytes exceeds kafka.max_message_bytes {self.max_message_bytes}: "
                "ask for fewer users or a smaller top_k"
            )
            reply = ErrorReply(code=ErrorCode.TOO_LARGE, message=message)
            value = encode(reply)
        failure = self._send(pending.topic, value, headers)
        if failure is None:
            return reply
        if pending.topic != self.replies_topic:
            message = f"reply to {pending.topic!r} failed: {failure}"
            fallback = ErrorReply(code=ErrorCode.BAD_REQUEST, message=message)
            if self._send(self.replies_topic, encode(fallback), headers) is None:
                return fallback
        self.metrics.undeliverable.inc()
        log.error("reply to %s not produced: %s", pending.topic, failure)
        return reply

    def _send(self, topic: str, value: bytes, headers: list[tuple[str, str | bytes | None]]) -> str | None:
        """Queue one reply; the reason when the producer refused it at once, else None."""
        while True:
            try:
                self._producer.produce(topic, value=value, headers=headers or None, on_delivery=self._delivered)
                return None
            except BufferError:  # local queue full: let deliveries drain
                self._producer.poll(0.05)
            except KafkaException as exc:  # too large, unknown topic, ...: permanent for this reply
                return str(exc.args[0])
            except Exception as exc:  # e.g. a header the client cannot encode: still never fatal
                return f"{type(exc).__name__}: {exc}"

    def _delivered(self, error: KafkaError | None, msg: Message) -> None:
        if error is not None:
            self._undelivered.append(f"{msg.topic()}: {error}")

    def _flush(self) -> None:
        """Wait for the broker's acknowledgements; what it refused or never acknowledged is counted, and the
        batch's offsets advance all the same (a reply is useless past the client's timeout)."""
        left = self._producer.flush(self.reply_timeout_s + 1.0)
        failed, self._undelivered = self._undelivered, []
        if left:
            failed.append(f"{left} replies unacknowledged after {self.reply_timeout_s + 1.0} s")
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

    def close(self, commit: bool = True) -> None:
        """Idempotent. Only answered batches have stored offsets."""
        if self._closed:
            return
        self._closed = True
        try:
            if commit:
                commit_stored(self._consumer)
            self._consumer.close()
        finally:
            close_producer(self._producer, self.reply_timeout_s)
            stop_watching = getattr(self.engine.live, "close", None)  # LiveModel's alias watcher
            if callable(stop_watching):
                stop_watching()


def _parse(msg: Message, default_topic: str, policy: ReplyPolicy, now_ms: int | None = None) -> _Pending:
    """Headers and body of one request; a refused, bad or expired one already carries its ``ErrorReply``."""
    headers = msg.headers()
    correlation_id = get_header(headers, CORRELATION_ID) or None
    if correlation_id is not None and (why := policy.correlation_refusal(correlation_id)) is not None:
        return _Pending(default_topic, None, ErrorReply(code=ErrorCode.BAD_REQUEST, message=why))
    reply_to = get_header(headers, REPLY_TO) or default_topic
    if (why := policy.refusal(reply_to)) is not None:
        return _Pending(default_topic, correlation_id, ErrorReply(code=ErrorCode.BAD_REQUEST, message=why))
    header = get_header(headers, DEADLINE_MS)
    deadline_ms = None
    if header is not None:
        if not header.isascii() or not header.isdigit() or len(header) > 16:
            message = "invalid deadline_ms header: epoch milliseconds as a decimal integer"
            return _Pending(reply_to, correlation_id, ErrorReply(code=ErrorCode.BAD_REQUEST, message=message))
        deadline_ms = int(header)
        late = (int(time.time() * 1000) if now_ms is None else now_ms) - deadline_ms
        if late > 0:
            message = f"deadline passed {late} ms before the request was served; not searched"
            timeout = ErrorReply(code=ErrorCode.TIMEOUT, message=message)
            return _Pending(reply_to, correlation_id, timeout)
    try:
        request = decode_request(msg.value())
        return _Pending(reply_to, correlation_id, request=request, deadline_ms=deadline_ms)
    except DecodeError as exc:
        return _Pending(reply_to, correlation_id, ErrorReply(code=exc.code, message=exc.reason))


def reply_policy(settings: Settings) -> ReplyPolicy:
    """The ``reply_to`` policy the settings describe: the stack's own topics are never reply targets."""
    kafka = settings.kafka
    return ReplyPolicy.for_stack(
        kafka.replies_topic,
        (spec.name for spec in stack_topics(kafka)),
        settings.recall.reply_to_allowed,
        settings.recall.max_correlation_id_bytes,
    )


def build_worker(
    settings: Settings,
    conf: Conf,
    store: VectorStore,
    history: HistorySource | None,
    metrics: RecallMetrics,
    *,
    view: CatalogueView | None = None,
    popular: PopularItems | None = None,
) -> RecallWorker:
    """The worker as settings describe it: live alias from ``settings.milvus``, models from ``models_dir``;
    ``view`` and ``popular`` (:func:`~workers.recall.serving_state.follow_serving_state`): availability,
    filters and the fallback (None: every item available, no fallback)."""
    live = LiveModel(
        store,
        ModelRegistry.from_settings(settings),
        check_every_s=settings.recall.alias_check_s,
    )
    live.watch()
    engine = RecallEngine(
        live,
        store,
        history,
        higher_is_better=settings.milvus.metric_type != "L2",
        categories=settings.data.item_catalogue(),  # for requests' `diversity`
        budget=Budget.from_settings(settings.recall),
        breaker=CircuitBreaker.from_settings(settings.recall),
        view=view,
        popular=popular,
        filtering=Filtering.from_settings(settings.recall),
    )
    register_breaker_metrics(engine.breaker, metrics.registry)
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
        policy=reply_policy(settings),
        max_message_bytes=kafka.max_message_bytes,
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
        store = stack.enter_context(VectorStore(uri, settings.milvus, serving=True))
        history = stack.enter_context(open_reader(settings.state, settings.state_dir, settings.kafka.clicks_topic))
        state = follow_serving_state(settings, stack)  # the catalogue and the popular counts, followed
        worker = build_worker(
            settings, conf, store, history, RecallMetrics(registry), view=state.view, popular=state.popular
        )
        gc_pauses = GcPauses(registry)
        gc_pauses.install()
        stack.callback(gc_pauses.uninstall)
        with stop_on_signals(StopFlag()) as stop:
            worker.run(stop)
    log.info("recall stopped (%s)", stop.reason)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
