"""Recall over HTTP: one request -> :class:`RecallEngine` (serialised by a lock) -> reply + HTTP status.

The engine is not thread-safe and FastAPI runs sync endpoints on a thread pool, so calls go through
one lock (one Milvus search at a time, like the Kafka worker's single loop). Error replies become
HTTP statuses (:data:`STATUS`); their messages are fixed texts, never exception details: those are
logged. When the engine fails because the live alias is gone (an operator dropped it, the engine
still holds the old model), the answer is 503, not 500.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

from schemas.messages import ErrorCode, ErrorReply, RecallReply, RecallRequest
from workers.recall_core import RecallEngine, Reply
from workers.recall_metrics import RecallMetrics
from workers.vector_store import VectorStore

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


class RecallService:
    def __init__(self, engine: RecallEngine, store: VectorStore, alias: str, metrics: RecallMetrics) -> None:
        self.engine = engine
        self.store = store
        self.alias = alias
        self.metrics = metrics
        self._lock = threading.Lock()

    def refresh_live(self) -> None:
        """Re-resolve the live alias now (after a publish or a drop made by this gateway)."""
        try:
            self.engine.live.current(force=True)
        except Exception as exc:
            log.warning("could not re-resolve the live model: %s", exc)

    def answer(self, request: RecallRequest) -> tuple[int, Reply]:
        started = time.perf_counter()
        with self._lock:
            reply = self.engine.answer([request], started)[0]
        elapsed = time.perf_counter() - started
        self.metrics.search_seconds.observe(elapsed)
        self.metrics.batch_requests.observe(1)
        self.metrics.batch_users.observe(request.n_users)
        self.metrics.latency.observe(elapsed)
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
