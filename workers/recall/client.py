"""Python API for callers of the recall worker: request/reply over Kafka with futures.

The client owns a producer and a consumer of its reply topic: by default a private topic
``<replies_topic>.<client id>`` (created here, deleted on close), or a shared topic whose replies it
filters by ``correlation_id``. The consumer uses ``assign()`` at the concrete end offsets read when
the client starts, never ``subscribe()``: no group join (~3 s), and because the start position is a
concrete offset rather than "latest" (which librdkafka resolves lazily), no reply produced after the
constructor returned can be missed. A background thread polls replies, resolves the pending
``Future`` of each correlation id, and fails the ones past their deadline with ``TimeoutError``.

On the embedded broker (``kafka.topic_generation_s`` set, see ``workers.infra.generations``) requests
go to the requests topic's current generation, and a private reply topic is one topic per generation
(``<replies_topic>.<client id>.g<N>``), each with its own consumer: the next one is created ahead of
time, and an older one is closed and deleted once every request that named it has been answered or
has timed out (plus ``generation_grace_s``). The broker's memory and fetch cost for a client then stay
bounded however long it runs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from schemas.codec import DecodeError, decode_reply, encode
from schemas.headers import CORRELATION_ID, DEADLINE_MS, REPLY_TO, get_header
from schemas.messages import ErrorCode, ErrorReply, RecallReply, RecallRequest
from workers.infra.generations import delete_topics, generation_of, generation_topic
from workers.infra.kafka import ensure_topics, make_consumer, make_producer
from workers.settings import KafkaSettings, RecallSettings

__all__ = ["RecallClient", "RecallClientClosed", "RecallError"]

log = logging.getLogger(__name__)

POLL_S: Final = 0.05  # poll thread tick: bounds how late a timeout fires
_METADATA_TIMEOUT_S: Final = 10.0
_LEAD_S: Final = 2.0  # the next reply generation is ready this long before it is used

Reply = RecallReply | ErrorReply


class RecallError(RuntimeError):
    """The worker answered with an ``ErrorReply`` (raised by :meth:`RecallClient.recall`)."""

    def __init__(self, reply: ErrorReply) -> None:
        super().__init__(f"{reply.code.value}: {reply.message}")
        self.code: ErrorCode = reply.code
        self.reply = reply


class RecallClientClosed(RuntimeError):
    """The client was closed while the request was pending."""


@dataclass
class _ReplyTopic:
    """One reply topic and its consumer; ``last_deadline`` (monotonic) of the requests that named it."""

    topic: str
    gen: int | None
    consumer: Consumer
    last_deadline: float = 0.0


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
        self._generation_s = kafka.topic_generation_s
        self._grace_s = kafka.generation_grace_s
        self._base_reply_topic = reply_topic or f"{kafka.replies_topic}.{self.client_id}"
        self._pending: dict[str, tuple[Future[Reply], float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.retired_topics = 0
        # generations: a producer's metadata refresh would re-create deleted topics (the embedded broker
        # auto-creates on metadata requests), so it never asks for that; the topics are created ahead instead
        no_auto = {"allow.auto.create.topics": False} if self._generation_s is not None else {}
        self._producer = make_producer(self._conf, {"linger.ms": 0, **no_auto})
        if self._private and self._generation_s is not None:
            self._replies = [self._open_reply(generation_of(time.time(), self._generation_s))]
        else:
            self._replies = [self._open_reply(None)]
        self._thread = threading.Thread(target=self._loop, name=f"recall-client-{self.client_id}", daemon=True)
        self._thread.start()

    @property
    def reply_topic(self) -> str:
        """The reply topic new requests name."""
        return self._current_reply().topic

    def _open_reply(self, gen: int | None) -> _ReplyTopic:
        topic = self._base_reply_topic if gen is None else generation_topic(self._base_reply_topic, gen)
        ensure_topics(self._conf, [topic])
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
        return _ReplyTopic(topic, gen, consumer)

    def _current_reply(self) -> _ReplyTopic:
        replies = self._replies
        if self._generation_s is None or len(replies) == 1:
            return replies[-1]
        current = generation_of(time.time(), self._generation_s)
        usable = [r for r in replies if r.gen is not None and r.gen <= current]
        return usable[-1] if usable else replies[0]

    def _request_topic(self) -> str:
        if self._generation_s is None:
            return self.requests_topic
        return generation_topic(self.requests_topic, generation_of(time.time(), self._generation_s))

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
            reply = self._current_reply()
            reply.last_deadline = max(reply.last_deadline, deadline)
        headers: list[tuple[str, str | bytes | None]] = [
            (CORRELATION_ID, correlation_id),
            (REPLY_TO, reply.topic),
            (DEADLINE_MS, str(int((time.time() + wait_s) * 1000))),  # workers shed it once we gave up
        ]
        try:
            self._producer.produce(
                self._request_topic(),
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
        timeout: float | None = None,
    ) -> RecallReply:
        """Blocking recall; raises ``RecallError`` for an error reply, ``TimeoutError`` without reply."""
        fields: dict[str, object] = {}
        if hist_item is not None:
            fields["hist_item"] = [list(h) for h in hist_item]
        if user_ids is not None:
            fields["user_ids"] = list(user_ids)
        if top_k is not None:
            fields["top_k"] = top_k
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
                replies = self._replies
                for older in replies[:-1]:  # retiring generations: whatever is there, without waiting
                    while (msg := older.consumer.poll(0)) is not None:
                        self._on_message(msg)
                msg = replies[-1].consumer.poll(POLL_S)
                if msg is not None:
                    self._on_message(msg)
                self._producer.poll(0)
                self._expire(time.monotonic())
                if self._generation_s is not None and self._private:
                    self._rotate(self._generation_s)
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
            _resolve(entry[0], decode_reply(msg.value()))
        except DecodeError as exc:
            _reject(entry[0], exc)

    def _rotate(self, period_s: float) -> None:
        """Open the next generation ahead of time; close and delete the ones nobody can be waiting on."""
        began = time.monotonic()
        newest = self._replies[-1].gen
        ahead = generation_of(time.time() + _LEAD_S, period_s)
        if newest is not None and ahead > newest:
            ensure_topics(self._conf, [generation_topic(self.requests_topic, ahead)])  # the worker does too
            opened = self._open_reply(ahead)
            with self._lock:
                self._replies = [*self._replies, opened]
        now = time.monotonic()
        with self._lock:
            current = self._current_reply()
            done = [r for r in self._replies if r is not current and r.gen is not None and r.gen < (current.gen or 0)]
            done = [r for r in done if now > r.last_deadline + self._grace_s]
            if done:
                self._replies = [r for r in self._replies if r not in done]
        for reply in done:
            reply.consumer.close()  # before the delete: a consumer that knows a deleted topic crashes
            delete_topics(self._conf, [reply.topic])
            self.retired_topics += 1
        if (took := time.monotonic() - began) > 0.2:
            log.warning("reply topic rotation took %.2f s (replies waited)", took)

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
            for reply in self._replies:
                reply.consumer.close()
            self._producer.flush(1.0)
        finally:
            if self._private:
                self._drop_topics([r.topic for r in self._replies])

    def _drop_topics(self, topics: list[str]) -> None:
        try:
            delete_topics(self._conf, topics, timeout=5)
        except Exception as exc:
            log.warning("could not delete reply topics %s: %s", topics, exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


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
