"""Python API for callers of the recall worker: request/reply over Kafka with futures.

The client owns a producer and a consumer of its reply topic: by default a private topic
``<replies_topic>.<client id>`` (created here, deleted on close), or a shared topic whose replies it
filters by ``correlation_id``. The consumer uses ``assign()`` at the concrete end offsets read when
the client starts, never ``subscribe()``: no group join (~3 s), and because the start position is a
concrete offset rather than "latest" (which librdkafka resolves lazily), no reply produced after the
constructor returned can be missed. A background thread polls replies, resolves the pending
``Future`` of each correlation id, and fails the ones past their deadline with ``TimeoutError``.
The reply topic keeps ``kafka.request_retention_ms`` of replies (minutes), so a long-running client
costs the broker a bounded log.

Compatibility (``docs/wire-protocol.md``): replies are decoded leniently (fields a newer worker added
are ignored, an unknown error code reads as ``internal``), and a request carries only the fields the
caller set (new optional fields are left out while unset), so this client works with workers older
and newer than itself as long as it does not ask an older worker for a feature it lacks.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from types import TracebackType
from typing import Final, Literal, Self

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from schemas.codec import DecodeError, decode_reply, encode
from schemas.headers import CORRELATION_ID, DEADLINE_MS, REPLY_TO, get_header
from schemas.messages import ErrorCode, ErrorReply, RecallFilters, RecallReply, RecallRequest
from workers.infra.kafka import close_producer, ensure_topics, make_admin, make_consumer, make_producer
from workers.infra.topics import reply_topic as reply_topic_spec
from workers.settings import KafkaSettings, RecallSettings

__all__ = ["RecallClient", "RecallClientClosed", "RecallError"]

log = logging.getLogger(__name__)

POLL_S: Final = 0.05  # poll thread tick: bounds how late a timeout fires
_METADATA_TIMEOUT_S: Final = 10.0

Reply = RecallReply | ErrorReply


class RecallError(RuntimeError):
    """The worker answered with an ``ErrorReply`` (raised by :meth:`RecallClient.recall`)."""

    def __init__(self, reply: ErrorReply) -> None:
        super().__init__(f"{reply.code.value}: {reply.message}")
        self.code: ErrorCode = reply.code
        self.reply = reply


class RecallClientClosed(RuntimeError):
    """The client was closed while the request was pending."""


class RecallClient:
    """``request(req) -> Future``, blocking ``recall(...)``; use as a context manager or ``close()``."""

    def __init__(
        self,
        kafka: KafkaSettings,
        recall: RecallSettings | None = None,
        *,
        bootstrap: str | None = None,
        reply_topic: str | None = None,
    ) -> None:
        self.client_id = uuid.uuid4().hex[:12]
        recall = recall or RecallSettings()
        self.timeout_s = recall.client_timeout_s
        self.requests_topic = kafka.requests_topic
        self._kafka = kafka
        self._fetch_wait_max_ms = recall.fetch_wait_max_ms
        self._conf = kafka.client_config(bootstrap)
        self._private = reply_topic is None
        self.reply_topic = reply_topic or f"{kafka.replies_topic}.{self.client_id}"
        """The topic the requests name in ``reply_to``."""
        self._pending: dict[str, tuple[Future[Reply], float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._producer = make_producer(self._conf, {"linger.ms": 0})
        self._replies = self._open_reply(kafka)
        self._thread = threading.Thread(target=self._loop, name=f"recall-client-{self.client_id}", daemon=True)
        self._thread.start()

    def _open_reply(self, kafka: KafkaSettings) -> Consumer:
        topic = self.reply_topic
        ensure_topics(self._conf, [reply_topic_spec(kafka, topic)])
        consumer = make_consumer(
            self._conf,
            f"mindstream-recall-client-{self.client_id}",  # required by librdkafka; never joined
            session_timeout_ms=self._kafka.session_timeout_ms,
            overrides={"enable.auto.commit": False, "fetch.wait.max.ms": self._fetch_wait_max_ms},
        )
        try:
            consumer.assign(_end_offsets(consumer, topic))
        except BaseException:
            consumer.close()
            raise
        return consumer

    # -- API ------------------------------------------------------------------------------------

    def request(self, req: RecallRequest, timeout: float | None = None) -> Future[Reply]:
        """Send ``req``: the future gets the reply, or ``TimeoutError`` after ``timeout``."""
        if self._stop.is_set():
            raise RecallClientClosed("the client is closed")
        correlation_id = uuid.uuid4().hex
        future: Future[Reply] = Future()
        future.set_running_or_notify_cancel()  # not cancellable: the deadline cleans up instead
        wait_s = self.timeout_s if timeout is None else timeout
        deadline = time.monotonic() + wait_s
        with self._lock:
            self._pending[correlation_id] = (future, deadline)
        headers: list[tuple[str, str | bytes | None]] = [
            (CORRELATION_ID, correlation_id),
            (REPLY_TO, self.reply_topic),
            (DEADLINE_MS, str(int((time.time() + wait_s) * 1000))),  # workers shed it once we gave up
        ]
        try:
            self._producer.produce(
                self.requests_topic,
                value=encode(req),
                headers=headers,
                on_delivery=lambda err, _msg: self._sent(correlation_id, err),
            )
        except Exception:
            with self._lock:
                self._pending.pop(correlation_id, None)
            raise
        return future

    def recall(
        self,
        *,
        hist_item: Sequence[Sequence[int]] | None = None,
        user_ids: Sequence[int] | None = None,
        top_k: int | None = None,
        diversity: float | None = None,
        exclude_seen: bool | None = None,
        filters: RecallFilters | None = None,
        fallback: Literal["popular"] | None = None,
        timeout: float | None = None,
    ) -> RecallReply:
        """Blocking recall; raises ``RecallError`` for an error reply, ``TimeoutError`` without reply.
        Arguments left None are not sent (the worker's defaults, today's behaviour)."""
        fields: dict[str, object] = {}
        if hist_item is not None:
            fields["hist_item"] = [list(h) for h in hist_item]
        if user_ids is not None:
            fields["user_ids"] = list(user_ids)
        optional = {
            "top_k": top_k,
            "diversity": diversity,
            "exclude_seen": exclude_seen,
            "filters": filters,
            "fallback": fallback,
        }
        fields.update((name, value) for name, value in optional.items() if value is not None)
        req = RecallRequest.model_validate(fields)
        wait = self.timeout_s if timeout is None else timeout
        reply = self.request(req, timeout=wait).result(timeout=wait + 1.0)
        if isinstance(reply, ErrorReply):
            raise RecallError(reply)
        return reply

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    # -- background -----------------------------------------------------------------------------

    def _sent(self, correlation_id: str, error: KafkaError | None) -> None:
        if error is not None:
            self._fail(correlation_id, ConnectionError(f"request not delivered: {error}"))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._replies.poll(POLL_S)
                if msg is not None:
                    self._on_message(msg)
                self._producer.poll(0)
                self._expire(time.monotonic())
            except Exception:  # never let the thread die: pending futures would hang until close
                log.exception("recall client poll loop error")
                self._stop.wait(POLL_S)

    def _on_message(self, msg: Message) -> None:
        error = msg.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("reply consumer error: %s", error)
            return
        correlation_id = get_header(msg.headers(), CORRELATION_ID)
        with self._lock:
            entry = self._pending.pop(correlation_id, None) if correlation_id else None
        if entry is None:
            log.debug("reply for an unknown or expired correlation id %r ignored", correlation_id)
            return
        try:
            _resolve(entry[0], decode_reply(msg.value(), lenient=True))  # a newer worker's fields ignored
        except DecodeError as exc:
            _reject(entry[0], exc)

    def _expire(self, now: float) -> None:
        with self._lock:
            late = [cid for cid, (_, deadline) in self._pending.items() if deadline <= now]
            futures = [self._pending.pop(cid)[0] for cid in late]
        for future in futures:
            _reject(future, TimeoutError(f"no recall reply within the client timeout (topic {self.reply_topic})"))

    def _fail(self, correlation_id: str, exc: BaseException) -> None:
        with self._lock:
            entry = self._pending.pop(correlation_id, None)
        if entry is not None:
            _reject(entry[0], exc)

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Idempotent: stop polling, fail what is pending, close the clients, drop a private topic."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        with self._lock:
            left, self._pending = self._pending, {}
        for future, _ in left.values():
            _reject(future, RecallClientClosed("the client was closed before the reply came"))
        try:
            self._replies.close()
            close_producer(self._producer, 1.0)
        finally:
            if self._private:
                _delete_topic(make_admin(self._conf), self.reply_topic)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _delete_topic(admin: AdminClient, topic: str, timeout: float = 5.0) -> None:
    """Best effort: a private reply topic nobody will read again (it would expire with its retention)."""
    try:
        admin.delete_topics([topic], operation_timeout=timeout)[topic].result(timeout)
    except KafkaException as exc:
        log.warning("could not delete reply topic %s: %s", topic, exc)


def _end_offsets(consumer: Consumer, topic: str) -> list[TopicPartition]:
    meta = consumer.list_topics(topic, timeout=_METADATA_TIMEOUT_S).topics[topic]
    if meta.error is not None:
        raise RuntimeError(f"reply topic {topic}: {meta.error}")
    offsets = []
    for partition in sorted(meta.partitions):
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=_METADATA_TIMEOUT_S)
        offsets.append(TopicPartition(topic, partition, high))
    return offsets


def _resolve(future: Future[Reply], reply: Reply) -> None:
    with contextlib.suppress(InvalidStateError):  # already failed (deadline, close)
        future.set_result(reply)


def _reject(future: Future[Reply], exc: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):
        future.set_exception(exc)
