"""Dead-letter sink: original key, value and headers, plus the ``DeadLetter`` headers; delivery confirmed."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, Message, Producer

from schemas.dlq import DeadLetter

log = logging.getLogger(__name__)


class DeadLetterError(RuntimeError):
    """Some dead letters were not acknowledged by the broker: the source offsets must not advance."""


class DeadLetterSink:
    """``send`` queues, ``flush`` waits for every acknowledgement and raises if any failed."""

    def __init__(self, producer: Producer, topic: str, flush_timeout_s: float) -> None:
        self.producer = producer
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self._failures: list[str] = []
        self._pending = 0

    def _delivered(self, error: KafkaError | None, msg: Message) -> None:
        self._pending -= 1
        if error is not None:
            self._failures.append(str(error))

    def send(self, msg: Message, reason: str) -> None:
        letter = DeadLetter(reason, msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
        while True:
            try:
                self.producer.produce(
                    self.topic,
                    value=msg.value(),
                    key=msg.key(),
                    headers=letter.headers(msg.headers()),
                    on_delivery=self._delivered,
                )
                break
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.1)
        self._pending += 1

    def flush(self) -> None:
        """Block until every queued letter is acknowledged; raise ``DeadLetterError`` otherwise."""
        if self._pending == 0 and not self._failures:
            return
        left = self.producer.flush(self.flush_timeout_s)
        failures, self._failures = self._failures, []
        if left or self._pending or failures:
            self._pending = 0
            raise DeadLetterError(
                f"{left} dead letters unacknowledged after {self.flush_timeout_s} s, "
                f"{len(failures)} failed: {'; '.join(failures[:3])}"
            )
