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

The queue is bounded (``max_queue``, ``MINDSTREAM_HTTP__MAX_QUEUE``). A job is *abandoned* when its
caller stopped waiting: its timeout passed, or (given the request's ASGI ``receive``) the client
disconnected. The batcher skips abandoned jobs; when the queue is full, every abandoned job is dropped
(the oldest first: the queue is in arrival order), and only if it is still full is the new request
refused with :class:`QueueFull` (503, ``Retry-After``). ``mindstream_http_recall_queue_depth``,
``..._refused_total`` and ``..._shed_total`` count them.

The live model is followed in the background (:meth:`RecallService.watch`): the engine's
``LiveModel.watch()`` re-resolves the alias and loads a new tower off the request path, and this
service's own check records what the alias resolves to (:class:`AliasState`) for ``/readyz`` and for
telling "the alias is gone" from other failures, so neither asks Milvus while a request waits. A swap
that dropped the collection a batch searched is still retried once by the engine on the re-resolved
model; after a publish, drop or rollback made by this gateway, :meth:`RecallService.refresh_live`
re-resolves at once.

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
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from schemas.messages import ErrorCode, ErrorReply, RecallReply, RecallRequest
from workers.infra.vector_store import VectorStore
from workers.recall.engine import RecallEngine, Reply, StageTimes
from workers.recall.metrics import RecallMetrics

__all__ = ["STATUS", "AliasState", "QueueFull", "RecallService"]

log = logging.getLogger(__name__)

STATUS: Final[dict[ErrorCode, int]] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
    ErrorCode.TIMEOUT: 504,
}
CLIENT_GONE: Final = 499  # nginx's "client closed request": counted in the metrics, never seen by anyone
INTERNAL_MESSAGE: Final = "internal error while answering the recall request (details are in the gateway log)"
UNAVAILABLE_MESSAGE: Final = "recall backend unavailable: Milvus or the live model cannot be reached; retry later"
MILVUS_NOT_ANSWERING: Final = "Milvus not answering"
STALE_CHECKS: Final = 10  # alias checks missed (Milvus not answering) before /readyz says not ready
STALE_MIN_S: Final = 5.0  # ... but never sooner than this

Receive = Callable[[], Awaitable[Any]]  # an ASGI receive callable


class QueueFull(Exception):
    """The batcher's queue is full even after dropping the abandoned jobs: answer 503 with ``Retry-After``."""

    def __init__(self, queued: int, retry_after_s: int) -> None:
        super().__init__(f"{queued} recall requests queued")
        self.retry_after_s = retry_after_s
        self.reply = ErrorReply(
            code=ErrorCode.UNAVAILABLE,
            message=f"the gateway is busy: {queued} recall requests are waiting; retry after {retry_after_s} s",
        )

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


@dataclass(frozen=True)
class AliasState:
    """What the live alias resolved to at the last check that Milvus answered."""

    collection: str | None = None
    checked: float | None = None  # time.monotonic() of that check; None = none answered yet
    error: str | None = None  # why the latest check failed (cleared by the next one that works)

    @property
    def gone(self) -> bool:
        """Milvus said, at the last check, that the alias points at nothing."""
        return self.checked is not None and self.error is None and self.collection is None


@dataclass(eq=False)
class _Job:
    request: RecallRequest
    started: float
    done: threading.Event = field(default_factory=threading.Event)
    reply: Reply | None = None
    abandoned: bool = False  # its caller stopped waiting (timed out, or the client went away)
    future: asyncio.Future[Reply] | None = None  # set for callers awaiting on an event loop
    ready: float = 0.0  # perf_counter() when its reply was ready (the stage "reply" starts)
    deadline_ms: int | None = None  # epoch ms after which its caller no longer waits (the engine's deadline)

    def gone(self, now: float, timeout_s: float) -> bool:
        """Nobody waits for this job any more (or will not by the time it could be searched)."""
        return self.abandoned or now - self.started > timeout_s


class _QueueMetrics:
    def __init__(self, registry: CollectorRegistry, depth: Callable[[], int]) -> None:
        self.depth = Gauge(
            "mindstream_http_recall_queue_depth",
            "Recall requests waiting for the gateway's batcher (at most http.max_queue)",
            registry=registry,
        )
        self.depth.set_function(lambda: float(depth()))
        self.refused = Counter(
            "mindstream_http_recall_refused",
            "Recall requests answered 503 because the gateway's queue was full (http.max_queue)",
            registry=registry,
        )
        self.shed = Counter(
            "mindstream_http_recall_shed",
            "Queued recall requests dropped unsearched: their caller had timed out or disconnected",
            registry=registry,
        )


class _JobQueue:
    """The batcher's queue, oldest first, at most ``limit`` jobs (abandoned ones make room)."""

    def __init__(self, limit: int, timeout_s: float) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False

    def __len__(self) -> int:
        return len(self._jobs)

    def put(self, job: _Job) -> int:
        """Queue ``job``; returns how many abandoned jobs were dropped to make room for it.
        Raises :class:`OverflowError` (with the queue's length) when it stays full."""
        with self._cond:
            shed = 0
            if len(self._jobs) >= self.limit:
                kept = deque(j for j in self._jobs if not j.gone(job.started, self.timeout_s))
                shed = len(self._jobs) - len(kept)
                self._jobs = kept
                if len(kept) >= self.limit:
                    raise OverflowError(len(kept))
            self._jobs.append(job)
            self._cond.notify()
            return shed

    def take(self, max_batch: int) -> tuple[list[_Job], int] | None:
        """``(jobs, skipped)``: up to ``max_batch`` live jobs queued now (waiting for the first one) and
        the abandoned ones passed over; None once closed and empty."""
        with self._cond:
            while not self._jobs:
                if self._closed:
                    return None
                self._cond.wait()
            now, skipped = time.perf_counter(), 0
            batch: list[_Job] = []
            while self._jobs and len(batch) < max_batch:
                job = self._jobs.popleft()
                if job.gone(now, self.timeout_s):
                    skipped += 1
                else:
                    batch.append(job)
            return batch, skipped

    def close(self) -> None:
        """No more jobs: :meth:`take` returns what is left, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _resolve(jobs: list[_Job]) -> None:
    """On the jobs' event loop: hand each waiting caller its reply (unless it gave up meanwhile)."""
    for job in jobs:
        if job.future is not None and not job.future.done() and job.reply is not None:
            job.future.set_result(job.reply)


async def _disconnected(receive: Receive) -> None:
    """Returns once the client has gone (the ASGI ``http.disconnect`` after the body was read)."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


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
        max_queue: int = 1024,
        retry_after_s: int = 1,
        check_every_s: float = 0.5,
    ) -> None:
        self.engine = engine
        self.store = store
        self.alias = alias
        self.metrics = metrics
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.check_every_s = check_every_s
        self._queue = _JobQueue(max_queue, timeout_s)
        self._queue_metrics = _QueueMetrics(metrics.registry, lambda: len(self._queue))
        self._alias = AliasState()
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        self._thread = threading.Thread(target=self._serve_batches, name="recall-batcher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the batcher after the jobs already queued, and the watchers."""
        self._closed.set()
        if self._watcher is not None:  # watch() started the engine's LiveModel watcher too: stop it
            stop_watching = getattr(self.engine.live, "close", None)
            if callable(stop_watching):
                stop_watching()
        self._queue.close()
        self._thread.join(timeout=self.timeout_s)

    # ------------------------------------------------------------------ the live model, in the background

    def watch(self) -> None:
        """Follow the live model off the request path: the engine's ``LiveModel.watch()`` (when it has one)
        and this service's alias check, done once now (so ``/readyz`` knows at start) and then every
        ``check_every_s`` in a thread."""
        if self._watcher is not None:
            return
        start_watching = getattr(self.engine.live, "watch", None)
        if callable(start_watching):
            start_watching()
        self.check_alias()
        self._watcher = threading.Thread(target=self._watch, name="alias-check", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._closed.wait(self.check_every_s):
            self.check_alias()

    def check_alias(self) -> AliasState:
        """Ask Milvus what the alias resolves to now, and keep the answer (a failure's details go to the log
        only: ``error`` is a fixed text, shown by ``/readyz``)."""
        try:
            collection = self.store.resolve_alias(self.alias)
        except Exception as exc:
            if self._alias.error is None:
                log.warning("cannot resolve the live alias %s: %s", self.alias, exc)
            self._alias = AliasState(self._alias.collection, self._alias.checked, MILVUS_NOT_ANSWERING)
        else:
            self._alias = AliasState(collection, time.monotonic())
        return self._alias

    def alias_state(self) -> AliasState:
        """The last alias check (no Milvus call)."""
        return self._alias

    def stale_after_s(self) -> float:
        """How old the last answered alias check may be before ``/readyz`` stops trusting it."""
        return max(STALE_CHECKS * self.check_every_s, STALE_MIN_S)

    def refresh_live(self) -> None:
        """Re-resolve the live alias now (after a publish, drop or rollback made by this gateway)."""
        try:
            self.engine.live.current(force=True)
        except Exception as exc:
            log.warning("could not re-resolve the live model: %s", exc)
        self.check_alias()

    # ------------------------------------------------------------------ the batcher

    def _serve_batches(self) -> None:
        while True:
            taken = self._queue.take(self.max_batch)
            if taken is None:
                return
            batch, skipped = taken
            if skipped:
                self._queue_metrics.shed.inc(skipped)
            if batch:
                self._answer(batch)

    def _answer(self, batch: list[_Job]) -> None:
        began = time.perf_counter()
        self.metrics.observe_waits(began - job.started for job in batch)
        stages = StageTimes()
        try:
            replies = self.engine.answer(
                [job.request for job in batch],
                min(job.started for job in batch),
                stages=stages,
                deadlines=[job.deadline_ms for job in batch],  # no search for a caller who gave up meanwhile
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

    def _deadline_ms(self) -> int:
        return int((time.time() + self.timeout_s) * 1000)

    def _submit(self, job: _Job) -> None:
        """Queue ``job`` or raise :class:`QueueFull`."""
        try:
            shed = self._queue.put(job)
        except OverflowError as full:
            self._queue_metrics.refused.inc()
            raise QueueFull(int(full.args[0]), self.retry_after_s) from None
        if shed:
            self._queue_metrics.shed.inc(shed)

    def answer(self, request: RecallRequest) -> tuple[int, Reply]:
        """Blocks the calling (thread-pool) thread until the batch holding ``request`` is answered.
        Raises :class:`QueueFull` when the queue is full."""
        job = _Job(request, time.perf_counter(), deadline_ms=self._deadline_ms())
        self._submit(job)
        if not job.done.wait(self.timeout_s) or job.reply is None:
            job.abandoned = True  # shed, if the batcher has not taken it yet
            reply: Reply = ErrorReply(code=ErrorCode.TIMEOUT, message="recall timed out")
        else:
            reply = job.reply
        return self._finish(job, reply)

    async def answer_async(self, request: RecallRequest, receive: Receive | None = None) -> tuple[int, Reply]:
        """As :meth:`answer`, awaiting on the running event loop instead of blocking a thread."""
        status, reply, _ = await self.answer_timed(request, receive)
        return status, reply

    async def answer_timed(self, request: RecallRequest, receive: Receive | None = None) -> tuple[int, Reply, float]:
        """As :meth:`answer_async`, plus the ``perf_counter()`` at which the reply was ready (its batch's
        end, or the timeout): pass it to :meth:`observe_reply` once the response is written.

        ``receive`` (the request's ASGI receive, its body already read) is watched for the client's
        disconnect: the job is then abandoned (not searched if still queued) and the answer is
        :data:`CLIENT_GONE`. Raises :class:`QueueFull` when the queue is full."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        job = _Job(request, time.perf_counter(), future=future, deadline_ms=self._deadline_ms())
        self._submit(job)
        if receive is None:
            try:
                reply = await asyncio.wait_for(future, self.timeout_s)
            except TimeoutError:
                return (*self._given_up(job), job.ready)
            return (*self._finish(job, reply), job.ready)
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((future, watcher), timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if future.done():
            return (*self._finish(job, future.result()), job.ready)
        if not watcher.done():
            return (*self._given_up(job), job.ready)
        if not watcher.cancelled() and watcher.exception() is not None:  # receive failed: the connection is gone
            log.debug("receive failed while a recall waited: %r", watcher.exception())
        job.abandoned = True  # the client went away: not searched if still queued
        future.cancel()
        job.ready = time.perf_counter()
        return CLIENT_GONE, ErrorReply(code=ErrorCode.TIMEOUT, message="the client went away"), job.ready

    def _given_up(self, job: _Job) -> tuple[int, Reply]:
        """The caller waited ``timeout_s``: 504, and the job is not searched if it is still queued."""
        job.abandoned = True
        if job.future is not None:
            job.future.cancel()
        job.ready = time.perf_counter()
        return self._finish(job, ErrorReply(code=ErrorCode.TIMEOUT, message="recall timed out"))

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
        """The error as the client sees it: its status and a message without internals (no Milvus call:
        whether the alias is gone comes from the last alias check)."""
        if error.code in (ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE):
            return STATUS[error.code], error  # about the request itself: safe and useful to show
        log.warning("recall failed: %s: %s", error.code.value, error.message)
        if error.code in (ErrorCode.INTERNAL, ErrorCode.UNAVAILABLE) and self._alias.gone:
            message = f"no live collection: alias {self.alias} points at no collection"
            return 503, ErrorReply(code=ErrorCode.UNAVAILABLE, message=message)
        if error.code is ErrorCode.UNAVAILABLE:
            return 503, ErrorReply(code=error.code, message=UNAVAILABLE_MESSAGE)
        if error.code is ErrorCode.TIMEOUT:
            return 504, ErrorReply(code=error.code, message="recall timed out")
        return 500, ErrorReply(code=ErrorCode.INTERNAL, message=INTERNAL_MESSAGE)
