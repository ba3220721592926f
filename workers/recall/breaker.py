"""A circuit breaker in front of Milvus for the recall engine (issue 29).

Without it, while Milvus is down every micro-batch waits for its search to fail (up to
``milvus.timeout_s``, retries included) and the requests queued behind it wait as long. With it:

* **closed**: searches go through. A search failing with a *transient* error
  (:func:`workers.infra.vector_store.is_transient`: connection trouble, overload, not ready) opens it.
* **open** for ``recall.breaker_open_s``: the engine answers ``unavailable`` at once, naming the reason
  and the seconds left, and never calls Milvus.
* **half-open** once that time has passed: the next search is the trial. Success closes the circuit;
  a transient failure opens it again for another ``breaker_open_s``.

A non-transient failure (a bad request, a collection a swap dropped) says Milvus answered: it changes
nothing. The state is derived from the time when read, so nothing has to tick. One engine is used by
one thread at a time (the Kafka worker's loop, the gateway's batcher); a lock keeps the state
consistent for the metrics scrape, which reads it from another thread.

:func:`register_breaker_metrics` exposes the state on a Prometheus registry:
``mindstream_recall_milvus_breaker_state{state}`` (1 for the current state, 0 for the others) and
``mindstream_recall_milvus_breaker_opened_total``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from workers.infra.vector_store import is_transient
from workers.settings import RecallSettings

__all__ = ["BreakerState", "CircuitBreaker", "CircuitOpen", "register_breaker_metrics"]

MAX_REASON_LENGTH: Final = 300


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(Exception):
    """Raised instead of calling Milvus while the circuit is open; the message is the reply's."""


class CircuitBreaker:
    """``refusal()`` before a Milvus call; ``succeeded()`` / ``failed(exc)`` after it."""

    def __init__(self, open_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if open_s <= 0:
            raise ValueError("open_s must be > 0")
        self.open_s = open_s
        self._clock = clock
        self._lock = threading.Lock()
        self._reason: str | None = None  # None: closed
        self._until = 0.0  # clock() at which an open circuit turns half-open
        self.opened = 0  # times it opened (a failed trial counts again)

    @classmethod
    def from_settings(cls, recall: RecallSettings | None = None) -> CircuitBreaker:
        """Open for ``recall.breaker_open_s`` (default: the settings' default)."""
        return cls((RecallSettings() if recall is None else recall).breaker_open_s)

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state(self._clock())

    @property
    def reason(self) -> str | None:
        """The failure that opened the circuit (kept while half-open); None when closed."""
        return self._reason

    def _state(self, now: float) -> BreakerState:
        if self._reason is None:
            return BreakerState.CLOSED
        return BreakerState.OPEN if now < self._until else BreakerState.HALF_OPEN

    def refusal(self) -> str | None:
        """The ``unavailable`` message while open; None when a call may go through (closed, or the trial)."""
        with self._lock:
            now = self._clock()
            if self._state(now) is not BreakerState.OPEN:
                return None
            return f"Milvus unavailable (circuit open for {self._until - now:.1f} s after: {self._reason})"

    def check(self) -> None:
        """Raise :class:`CircuitOpen` while open."""
        message = self.refusal()
        if message is not None:
            raise CircuitOpen(message)

    def succeeded(self) -> None:
        """Milvus answered: close."""
        with self._lock:
            self._reason = None

    def failed(self, exc: BaseException) -> bool:
        """Milvus failed with ``exc``: a transient error opens the circuit (True); others change nothing."""
        if not is_transient(exc):
            return False
        reason = f"{type(exc).__name__}: {exc}"
        if len(reason) > MAX_REASON_LENGTH:
            reason = reason[: MAX_REASON_LENGTH - 1] + "…"
        with self._lock:
            self._reason = reason
            self._until = self._clock() + self.open_s
            self.opened += 1
        return True


class _BreakerCollector(Collector):
    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker

    def collect(self) -> Iterator[Metric]:
        current = self.breaker.state
        state = GaugeMetricFamily(
            "mindstream_recall_milvus_breaker_state",
            "Circuit breaker in front of Milvus: 1 for its current state (closed, open: recall answers unavailable "
            "without searching, half_open: the next search is a trial), 0 for the others",
            labels=["state"],
        )
        for value in BreakerState:
            state.add_metric([value.value], 1.0 if value is current else 0.0)
        yield state
        opened = CounterMetricFamily(
            "mindstream_recall_milvus_breaker_opened", "Times the Milvus circuit opened after a transient failure"
        )
        opened.add_metric([], float(self.breaker.opened))
        yield opened


def register_breaker_metrics(breaker: CircuitBreaker, registry: CollectorRegistry) -> None:
    """Expose ``breaker``'s state and openings on ``registry`` (read at each scrape)."""
    registry.register(_BreakerCollector(breaker))
