"""The recall worker's Prometheus metrics, on an injected ``CollectorRegistry`` (one object per worker).

The gateway builds the same :class:`RecallMetrics` on its own registry for ``POST /rec/recall``, so
both recall paths expose the same names; Prometheus' ``job`` label (``recall`` or ``gateway``) tells
them apart.

Where a request's time goes: ``mindstream_recall_stage_seconds{stage}`` with the stages of
:data:`STAGES`. ``wait`` (arrival until its micro-batch starts) is observed once per request, and on
the HTTP path ``reply`` too; ``history``, ``tower``, ``search``, ``merge`` (:class:`StageTimes`) and
the Kafka worker's ``reply`` (produce every reply of the batch, then wait for the broker's
acknowledgements) once per micro-batch. ``history`` only for batches that read a history.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from schemas.messages import ErrorReply, RecallReply
from workers.metrics import consumer_lag_gauge, observe_consumer_lag
from workers.recall.engine import StageTimes

__all__ = ["LATENCY_BUCKETS", "STAGES", "STAGE_BUCKETS", "RecallMetrics"]

LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
# A stage can take well under a millisecond (a history read, a merge) or seconds (a search under load).
STAGE_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
STAGES: Final = ("wait", "history", "tower", "search", "merge", "reply")
USERS_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1_024, 4_096, 16_384)
OK: Final = "ok"


class RecallMetrics:
    """Counters by outcome, worker-side latency, micro-batch shape, and the model version served."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "mindstream_recall_requests",
            "Recall requests answered, by status (ok or the error code of the ErrorReply)",
            ["status"],
            registry=registry,
        )
        self.undeliverable = Counter(
            "mindstream_recall_replies_undeliverable",
            "Replies the broker did not acknowledge (e.g. unknown reply_to topic)",
            registry=registry,
        )
        self.latency = Histogram(
            "mindstream_recall_latency_seconds",
            "Worker-side time from consuming a request to its reply's acknowledgement",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.search_seconds = Histogram(
            "mindstream_recall_batch_compute_seconds",
            "Time to embed and search one micro-batch (tower + Milvus + merge)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_requests = Histogram(
            "mindstream_recall_batch_requests",
            "Requests per micro-batch",
            buckets=USERS_BUCKETS,
            registry=registry,
        )
        self.batch_users = Histogram(
            "mindstream_recall_batch_users",
            "Users per micro-batch (one Milvus search of K x users queries)",
            buckets=USERS_BUCKETS,
            registry=registry,
        )
        self.live_version = Gauge(
            "mindstream_recall_served_model_info",
            "1 for the model version (and collection) this worker serves, info-style",
            ["version", "collection"],
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "mindstream_recall_stage_seconds",
            "Time a recall spends per stage: wait (arrival until its micro-batch starts; per request), "
            "history, tower, search, merge (per micro-batch), reply (Kafka: produce until acknowledged, "
            "per micro-batch; HTTP: reply ready until the response is written, per request)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self._stages = {stage: self.stage_seconds.labels(stage=stage) for stage in STAGES}  # every series from start
        self.consumer_lag = consumer_lag_gauge(registry)
        self._served: tuple[str, str] | None = None

    def observe_batch(self, requests: int, users: int, seconds: float) -> None:
        """Shape and compute time of one micro-batch."""
        self.search_seconds.observe(seconds)
        self.batch_requests.observe(requests)
        self.batch_users.observe(users)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """One observation of ``stage`` (one of :data:`STAGES`)."""
        self._stages[stage].observe(seconds)

    def observe_waits(self, seconds: Iterable[float]) -> None:
        """The ``wait`` of each request of a micro-batch."""
        wait = self._stages["wait"]
        for value in seconds:
            wait.observe(value)

    def observe_engine(self, stages: StageTimes) -> None:
        """The engine stages one micro-batch went through (those that did not run are not observed)."""
        for stage, seconds in stages.measured():
            self._stages[stage].observe(seconds)

    def record(self, replies: list[RecallReply | ErrorReply]) -> None:
        for reply in replies:
            status = OK if isinstance(reply, RecallReply) else reply.code.value
            self.requests.labels(status=status).inc()
        served = next(((r.model_version, r.collection) for r in replies if isinstance(r, RecallReply)), None)
        if served is not None and served != self._served:
            if self._served is not None:
                self.live_version.remove(*self._served)
            self.live_version.labels(version=served[0], collection=served[1]).set(1)
            self._served = served

    def on_stats(self, stats_json: str) -> None:
        """librdkafka ``stats_cb``."""
        observe_consumer_lag(self.consumer_lag, stats_json)
