"""Recall over HTTP: requests -> micro-batches -> :class:`RecallEngine` -> reply + HTTP status.

The engine is not thread-safe; FastAPI runs sync endpoints on a thread pool. Each request thread
queues its request and waits; one batcher thread takes everything queued (up to ``max_batch``
requests) and answers it with one tower pass and one Milvus search, as the Kafka worker does. Under
load, requests that arrive while a search runs share the next one, so the gateway's capacity grows
with the load instead of being one search per request. A request never waits for a batch to fill:
an idle gateway answers a lone request at once.

Error replies become HTTP statuses (:data:`STATUS`); their messages are fixed texts, never exception
details: those are logged. When the engine fails because the live alias is gone (an operator
dropped it, the engine still holds the old model), the answer is 503, not 500.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Final

from schemas.messages import ErrorCode, ErrorReply, RecallReply, RecallRequest
from workers.infra.vector_store import VectorStore
from workers.recall.engine import RecallEngine, Reply
from workers.recall.metrics import RecallMetrics

__all__ = ["STATUS", "RecallService"]

log = logging.getLogger(__name__)

STATUS: Final[dict[ErrorCode, int]] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
    ErrorCode.TIMEOUT: 504,
}
INTERNAL_MESSAGE: Final = "internal error while answering the recall request (details are in the gateway log)"
UNAVAILABLE_MESSAGE: Final = "recall backend unavailable: Milvus or the live model cannot be reached; retry later"


@dataclass
class _Job:
    request: RecallRequest
    started: float
    done: threading.Event = field(default_factory=threading.Event)
    reply: Reply | None = None
    abandoned: bool = False  # its caller timed out: not worth a search any more


class RecallService:
    def __init__(
        self,
        engine: RecallEngine,
        store: VectorStore,
        alias: str,
        metrics: RecallMetrics,
        *,
        max_batch: int = 64,
        timeout_s: float = 30.0,
    ) -> None:
        self.engine = engine
        self.store = store
        self.alias = alias
        self.metrics = metrics
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve_batches, name="recall-batcher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the batcher after the jobs already queued."""
        self._jobs.put(None)
        self._thread.join(timeout=self.timeout_s)

    def _serve_batches(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._jobs.put(None)  # stop after this batch
                    break
                batch.append(job)
            live = [job for job in batch if not job.abandoned]
            if live:
                self._answer(live)

    def _answer(self, batch: list[_Job]) -> None:
        began = time.perf_counter()
        try:
            replies = self.engine.answer([job.request for job in batch], min(job.started for job in batch))
        except Exception as exc:  # the engine turns failures into replies; this is the last line of defence
            log.exception("recall batch failed")
            replies = [ErrorReply(code=ErrorCode.INTERNAL, message=f"recall failed: {type(exc).__name__}")] * len(batch)
        users = sum(job.request.n_users for job in batch)
        self.metrics.observe_batch(len(batch), users, time.perf_counter() - began)
        for job, reply in zip(batch, replies, strict=True):
            job.reply = reply
            job.done.set()

    def refresh_live(self) -> None:
        """Re-resolve the live alias now (after a publish or a drop made by this gateway)."""
        try:
            self.engine.live.current(force=True)
        except Exception as exc:
            log.warning("could not re-resolve the live model: %s", exc)

    def answer(self, request: RecallRequest) -> tuple[int, Reply]:
        """Blocks the calling (thread-pool) thread until the batch holding ``request`` is answered."""
        job = _Job(request, time.perf_counter())
        self._jobs.put(job)
        if not job.done.wait(self.timeout_s) or job.reply is None:
            job.abandoned = True  # shed, if the batcher has not taken it yet
            reply: Reply = ErrorReply(code=ErrorCode.TIMEOUT, message="recall timed out")
        else:
            reply = job.reply
        self.metrics.latency.observe(time.perf_counter() - job.started)
        self.metrics.record([reply])
        if isinstance(reply, RecallReply):
            return 200, reply
        return self._public(reply)

    def _public(self, error: ErrorReply) -> tuple[int, ErrorReply]:
        """The error as the client sees it: its status and a message without internals."""
        if error.code in (ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE):
            return STATUS[error.code], error  # about the request itself: safe and useful to show
        log.warning("recall failed: %s: %s", error.code.value, error.message)
        if error.code in (ErrorCode.INTERNAL, ErrorCode.UNAVAILABLE) and self._alias_gone():
            message = f"no live collection: alias {self.alias} points at no collection"
            return 503, ErrorReply(code=ErrorCode.UNAVAILABLE, message=message)
        if error.code is ErrorCode.UNAVAILABLE:
            return 503, ErrorReply(code=error.code, message=UNAVAILABLE_MESSAGE)
        if error.code is ErrorCode.TIMEOUT:
            return 504, ErrorReply(code=error.code, message="recall timed out")
        return 500, ErrorReply(code=ErrorCode.INTERNAL, message=INTERNAL_MESSAGE)

    def _alias_gone(self) -> bool:
        try:
            return self.store.resolve_alias(self.alias) is None
        except Exception:
            return False  # Milvus unreachable: the caller's status (503 or 500) stands
