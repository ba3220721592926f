"""Dead-letter sink: original key, value and headers, plus the ``DeadLetter`` headers; delivery confirmed.

A letter always fits: one whose record would exceed ``max_message_bytes`` (a click of ~1 MB with the
``dlq_*`` headers on top) is cut to fit (:func:`fitted`): the original headers kept in order while they
fit in half the room, the key cut to :data:`MAX_KEY_BYTES`, the value to what is left, and a
``dlq_truncated`` header carrying the original size. A letter the broker still refuses for its size
(a dead-letter topic with a smaller ``max.message.bytes``) is sent again without its original bytes.
Only a letter that is not acknowledged at all (broker down, timeout) fails the batch
(:class:`DeadLetterError`): the caller holds the offsets and retries, it never gives the message up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from schemas.dlq import DLQ_HEADERS, DLQ_TRUNCATED, DeadLetter
from schemas.headers import HeaderValue, header_list
from workers.infra.kafka import record_bytes, rewind

__all__ = ["MAX_KEY_BYTES", "DeadLetterError", "DeadLetterSink", "Letter", "bare", "deliver_or_hold", "fitted"]

log = logging.getLogger(__name__)

MAX_KEY_BYTES: Final = 1024  # a cut letter keeps at most this much of the original key
# Broker answers that say "this record is too large", never "try later".
_TOO_LARGE: Final = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD}
)

HeaderList = list[tuple[str, HeaderValue]]


class DeadLetterError(RuntimeError):
    """Some dead letters were not acknowledged by the broker: the source offsets must not advance."""


@dataclass(frozen=True)
class Letter:
    """One record for the dead-letter topic."""

    key: bytes | None
    value: bytes | None
    headers: HeaderList

    @property
    def size(self) -> int:
        return record_bytes(self.value, self.key, self.headers)


def fitted(letter: DeadLetter, key: bytes | None, value: bytes | None, original: HeaderList, limit: int) -> Letter:
    """The letter for an original record, cut to at most ``limit`` bytes when it would not fit."""
    whole = Letter(key, value, letter.headers(original))
    if whole.size <= limit:
        return whole
    original_size = record_bytes(value, key, original)
    bare = Letter(None, None, letter.headers(None, truncated_from=original_size))
    room = limit - bare.size
    kept: HeaderList = []
    used = 0
    for name, header in original:
        cost = record_bytes(None, None, [(name, header)]) - record_bytes(None)
        if used + cost > room // 2:
            break
        kept.append((name, header))
        used += cost
    headers = letter.headers(kept, truncated_from=original_size)
    cut_key = key[: min(MAX_KEY_BYTES, max(0, room - used))] if key is not None else None
    left = limit - record_bytes(None, cut_key, headers)
    cut_value = value[: max(0, left)] if value is not None else None
    return Letter(cut_key, cut_value, headers)


class DeadLetterSink:
    """``send`` queues, ``flush`` waits for every acknowledgement and raises if any failed for good."""

    def __init__(self, producer: Producer, topic: str, flush_timeout_s: float, max_message_bytes: int) -> None:
        self.producer = producer
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self.max_message_bytes = max_message_bytes
        self.truncated = 0  # letters cut to fit (a counter for the worker's metrics)
        self._failures: list[str] = []
        self._too_large: list[Letter] = []  # refused by the broker for their size: sent again, bare
        self._pending = 0

    def send(self, msg: Message, reason: str) -> None:
        """Queue the letter for ``msg``; a letter the producer refuses at once is sent again without the
        original bytes, and counted as a failure (for ``flush``) only if even that is refused."""
        dead = DeadLetter(reason, msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
        letter = fitted(dead, msg.key(), msg.value(), header_list(msg.headers()), self.max_message_bytes)
        if any(k == DLQ_TRUNCATED for k, _ in letter.headers):
            self.truncated += 1
        refused = self._produce(letter)
        if refused is not None:
            log.warning("dead letter refused (%s); sending it without the original bytes", refused)
            self._resend_bare(letter)

    def _resend_bare(self, letter: Letter) -> None:
        self.truncated += 1
        refused = self._produce(bare(letter))
        if refused is not None:
            self._failures.append(refused)

    def _produce(self, letter: Letter) -> str | None:
        while True:
            try:
                self.producer.produce(
                    self.topic, value=letter.value, key=letter.key, headers=letter.headers, on_delivery=self._delivered
                )
                self._pending += 1
                return None
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.1)
            except KafkaException as exc:
                return str(exc.args[0])

    def _delivered(self, error: KafkaError | None, msg: Message) -> None:
        self._pending -= 1
        if error is None:
            return
        if error.code() in _TOO_LARGE and msg.value() is not None:  # not yet bare: send it so
            self._too_large.append(Letter(msg.key(), msg.value(), header_list(msg.headers())))
        else:
            self._failures.append(str(error))

    def flush(self) -> None:
        """Block until every queued letter is acknowledged; raise ``DeadLetterError`` otherwise."""
        if self._pending == 0 and not self._failures and not self._too_large:
            return
        left = self.producer.flush(self.flush_timeout_s)
        while self._too_large and not left:
            resend, self._too_large = self._too_large, []
            for letter in resend:
                self._resend_bare(letter)
            left = self.producer.flush(self.flush_timeout_s)
        failures, self._failures = self._failures, []
        if left or self._pending or failures or self._too_large:
            self._pending = 0
            self._too_large = []
            raise DeadLetterError(
                f"{left} dead letters unacknowledged after {self.flush_timeout_s} s, "
                f"{len(failures)} failed: {'; '.join(failures[:3])}"
            )


def deliver_or_hold(
    sink: DeadLetterSink,
    rejected: Sequence[tuple[Message, str]],
    consumer: Consumer,
    batch: Sequence[Message],
    backoff_s: float,
) -> bool:
    """Dead-letter ``rejected`` (message, reason) and wait for the acknowledgements; False when a letter was
    not acknowledged: then ``batch`` is rewound to be read again after ``backoff_s``, and nothing of it may
    be applied or its offsets stored."""
    try:
        for msg, reason in rejected:
            sink.send(msg, reason)
        sink.flush()
        return True
    except DeadLetterError as exc:
        log.error("dead letters not acknowledged; batch held, retry in %.1f s: %s", backoff_s, exc)
        rewind(consumer, batch)
        time.sleep(backoff_s)
        return False


def bare(letter: Letter) -> Letter:
    """The letter without the original key, value and headers: only its ``dlq_*`` headers, with the
    original record's size in ``dlq_truncated``."""
    original = [(k, v) for k, v in letter.headers if k not in DLQ_HEADERS and k != DLQ_TRUNCATED]
    own = [(k, v) for k, v in letter.headers if k in DLQ_HEADERS]
    cut = [(k, v) for k, v in letter.headers if k == DLQ_TRUNCATED]
    size = cut[-1][1] if cut else str(record_bytes(letter.value, letter.key, original)).encode("ascii")
    return Letter(None, None, [*own, (DLQ_TRUNCATED, size)])
