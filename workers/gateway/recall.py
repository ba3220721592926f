"""Recall over HTTP: requests -> micro-batches -> :class:`RecallEngine` -> reply + HTTP status.

The engine is not thread-safe; FastAPI runs sync endpoints on a thread pool. Each request thread
queues its request and waits; one batcher thread takes everything queued (up to ``max_batch``
requests) and answers it with one tower pass and one Milvus search, as the Kafka worker does. Under
load, requests that arrive while a search runs share the next one, so the gateway's capacity grows
with the load instead of being one search per request. A request never waits for a batch to fill:
an idle gateway answers a lone request at once.

The HTTP endpoint awaits :meth:`RecallService.answer_async`: the request waits as an asyncio future on
the event loop, not as a blocked thread-pool thread, and the batcher resolves all the futures of a
batch with one ``call_soon_threadsafe``. That removes a thread hand-off each way per request and the
thread pool's 40-thread cap on requests in flight. :meth:`RecallService.answer` (blocking) stays for
callers without an event loop.

Stage times (``mindstream_recall_stage_seconds`` on the gateway's registry): a request's ``wait`` runs
from its arrival at the batcher (``answer``/``answer_timed`` queued it) until the batcher starts its
batch; the engine's stages as :class:`StageTimes`, once per batch; ``reply`` from the moment the
batch's replies were ready (before the hand-off to the event loop) until the response was written,
observed by whoever writes it (:meth:`RecallService.observe_reply`: the ``/rec/recall`` fast path
after its last ``send``, the FastAPI route once its response object is built).

Error replies become HTTP statuses (:data:`STATUS`); their messages are fixed texts, never exception
details: those are logged. When the engine fails because the live alias is gone (an operator
dropped it, the engine still holds the old model), the answer is 503, not 500.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Final

from schemas.messages import ErrorCode, ErrorReply, RecallReply, RecallRequest
from workers.infra.vector_store import VectorStore
from workers.recall.engine import RecallEngine, Reply, StageTimes
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
    future: asyncio.Future[Reply] | None = None  # set for callers awaiting on an event loop
    ready: float = 0.0  # perf_counter() when its reply was ready (the stage "reply" starts)


def _resolve(jobs: list[_Job]) -> None:
    """On the jobs' event loop: hand each waiting caller its reply (unless it gave up meanwhile)."""
    for job in jobs:
        if job.future is not None and not job.future.done() and job.reply is not None:
            job.future.set_result(job.reply)


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
        self.metrics.observe_waits(began - job.started for job in batch)
        stages = StageTimes()
        try:
            replies = self.engine.answer(
                [job.request for job in batch], min(job.started for job in batch), stages=stages
            )
        except Exception as exc:  # the engine turns failures into replies; this is the last line of defence
            log.exception("recall batch failed")
            replies = [ErrorReply(code=ErrorCode.INTERNAL, message=f"recall failed: {type(exc).__name__}")] * len(batch)
        users = sum(job.request.n_users for job in batch)
        ready = time.perf_counter()
        self.metrics.observe_batch(len(batch), users, ready - began)
        self.metrics.observe_engine(stages)
        waiting: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        for job, reply in zip(batch, replies, strict=True):
            job.reply = reply
            job.ready = ready
            if job.future is None:
                job.done.set()
            else:
                waiting.setdefault(job.future.get_loop(), []).append(job)
        for loop, jobs in waiting.items():
            try:
                loop.call_soon_threadsafe(_resolve, jobs)  # one wake-up of the loop per batch
            except RuntimeError:  # the loop is closed: nobody waits for these replies any more
                log.debug("event loop closed before %d replies were handed over", len(jobs))

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
        return self._finish(job, reply)

    async def answer_async(self, request: RecallRequest) -> tuple[int, Reply]:
        """As :meth:`answer`, awaiting on the running event loop instead of blocking a thread."""
        status, reply, _ = await self.answer_timed(request)
        return status, reply

    async def answer_timed(self, request: RecallRequest) -> tuple[int, Reply, float]:
        """As :meth:`answer_async`, plus the ``perf_counter()`` at which the reply was ready (its batch's
        end, or the timeout): pass it to :meth:`observe_reply` once the response is written."""
        job = _Job(request, time.perf_counter(), future=asyncio.get_running_loop().create_future())
        self._jobs.put(job)
        assert job.future is not None
        try:
            reply = await asyncio.wait_for(job.future, self.timeout_s)
        except TimeoutError:
            job.abandoned = True
            job.ready = time.perf_counter()
            reply = ErrorReply(code=ErrorCode.TIMEOUT, message="recall timed out")
        if isinstance(reply, RecallReply):
            return (*self._finish(job, reply), job.ready)
        return (*await asyncio.to_thread(self._finish, job, reply), job.ready)  # may ask Milvus about the alias

    def observe_reply(self, ready: float) -> None:
        """The ``reply`` stage of one request: from ``ready`` (:meth:`answer_timed`) until now."""
        self.metrics.observe_stage("reply", time.perf_counter() - ready)

    def _finish(self, job: _Job, reply: Reply) -> tuple[int, Reply]:
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
