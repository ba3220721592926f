"""The gateway's micro-batcher (pure logic: a fake engine stands in for the tower and Milvus): batching,
timeouts, and the bounded queue (full = 503 with Retry-After; abandoned jobs make room first)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import pytest
from prometheus_client import CollectorRegistry

from schemas.messages import ErrorCode, ErrorReply, RecallReply, RecallRequest
from tests.waiting import wait_until
from workers.gateway.recall import QueueFull, RecallService
from workers.infra.vector_store import VectorStore
from workers.recall.engine import RecallEngine, Reply, StageTimes
from workers.recall.metrics import RecallMetrics


class SlowEngine:
    """Answers each user's history with its last item; every call takes ``delay_s`` (a Milvus search)."""

    def __init__(self, delay_s: float, fail_on: int | None = None) -> None:
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.batches: list[int] = []
        self.lock = threading.Lock()
        self.entered = threading.Event()  # set when the first batch reaches the engine

    def answer(
        self,
        requests: Sequence[RecallRequest],
        started: float | None = None,
        *,
        stages: StageTimes | None = None,
        deadlines: Sequence[int | None] | None = None,
    ) -> list[Reply]:
        assert deadlines is not None and len(deadlines) == len(requests)  # each caller's deadline goes along
        with self.lock:
            self.batches.append(len(requests))
        self.entered.set()
        time.sleep(self.delay_s)
        if stages is not None:
            stages.search = self.delay_s
        if any(r.hist_item and r.hist_item[0][-1] == self.fail_on for r in requests):
            raise RuntimeError("boom: secret detail")
        return [
            RecallReply(
                items=[[h[-1]] for h in r.hist_item or []],
                scores=[[1.0] for _ in r.hist_item or []],
                model_version="v1",
                collection="c_v1",
                took_ms=0.0,
            )
            for r in requests
        ]


def _service(engine: SlowEngine, max_batch: int = 8, timeout_s: float = 5.0) -> RecallService:
    return RecallService(
        cast(RecallEngine, engine),
        cast(VectorStore, None),
        "alias",
        RecallMetrics(CollectorRegistry()),
        max_batch=max_batch,
        timeout_s=timeout_s,
    )


def _request(n: int) -> RecallRequest:
    return RecallRequest(hist_item=[[1, n]], top_k=5)


def test_concurrent_requests_share_searches_and_get_their_own_replies() -> None:
    engine = SlowEngine(delay_s=0.05)
    service = _service(engine, max_batch=8)
    with ThreadPoolExecutor(max_workers=40) as pool:
        results = list(pool.map(lambda n: service.answer(_request(n)), range(2, 42)))
    service.close()
    for n, (status, reply) in zip(range(2, 42), results, strict=True):
        assert status == 200 and isinstance(reply, RecallReply)
        assert reply.items == [[n]], "a reply went to the wrong request"
    assert sum(engine.batches) == 40
    assert max(engine.batches) <= 8
    assert len(engine.batches) < 40, f"no batching happened: {engine.batches}"


def test_a_lone_request_is_answered_without_waiting_for_company() -> None:
    engine = SlowEngine(delay_s=0.0)
    service = _service(engine)
    status, reply = service.answer(_request(7))
    service.close()
    assert status == 200 and isinstance(reply, RecallReply) and reply.items == [[7]]
    assert engine.batches == [1]


def test_an_engine_crash_fails_its_batch_with_a_fixed_message_and_the_next_batch_is_served() -> None:
    engine = SlowEngine(delay_s=0.0, fail_on=666)
    service = _service(engine)
    status, reply = service.answer(_request(666))
    assert status == 500 and isinstance(reply, ErrorReply) and reply.code is ErrorCode.INTERNAL
    assert "secret" not in reply.message
    status, reply = service.answer(_request(5))
    service.close()
    assert status == 200 and isinstance(reply, RecallReply) and reply.items == [[5]]


def test_a_stuck_engine_gives_504_after_the_timeout() -> None:
    engine = SlowEngine(delay_s=1.0)
    service = _service(engine, timeout_s=0.2)
    status, reply = service.answer(_request(3))
    assert status == 504 and isinstance(reply, ErrorReply) and reply.code is ErrorCode.TIMEOUT
    service.close()


def test_requests_whose_callers_timed_out_are_not_searched() -> None:
    engine = SlowEngine(delay_s=0.5)
    service = _service(engine, max_batch=8, timeout_s=0.2)
    with ThreadPoolExecutor(max_workers=4) as pool:
        first = pool.submit(service.answer, _request(2))  # occupies the engine for 0.5 s
        assert engine.entered.wait(5), "the first request never reached the engine"
        late = [pool.submit(service.answer, _request(n)) for n in (3, 4, 5)]  # queued; give up after 0.2 s
        assert all(f.result()[0] == 504 for f in late)
        assert first.result()[0] == 504  # its own wait (0.2 s) was shorter than the search
    service.close()  # returns once the batcher has drained the queue
    assert engine.batches == [1], f"the abandoned requests were searched anyway: {engine.batches}"


def test_awaiting_requests_share_searches_and_get_their_own_replies() -> None:
    engine = SlowEngine(delay_s=0.05)
    service = _service(engine, max_batch=8)

    async def many() -> list[tuple[int, Reply]]:
        return await asyncio.gather(*(service.answer_async(_request(n)) for n in range(2, 42)))

    results = asyncio.run(many())
    service.close()
    for n, (status, reply) in zip(range(2, 42), results, strict=True):
        assert status == 200 and isinstance(reply, RecallReply)
        assert reply.items == [[n]], "a reply went to the wrong request"
    assert sum(engine.batches) == 40 and max(engine.batches) <= 8
    assert len(engine.batches) < 40, f"no batching happened: {engine.batches}"


def test_an_awaiting_request_gets_504_after_the_timeout_and_is_not_searched_late() -> None:
    engine = SlowEngine(delay_s=0.5)
    service = _service(engine, timeout_s=0.2)

    async def two() -> list[tuple[int, Reply]]:
        first = asyncio.ensure_future(service.answer_async(_request(2)))  # occupies the engine for 0.5 s
        await asyncio.sleep(0.05)
        return [*(await asyncio.gather(first, service.answer_async(_request(3))))]

    results = asyncio.run(two())
    service.close()
    assert [status for status, _ in results] == [504, 504]
    assert all(isinstance(r, ErrorReply) and r.code is ErrorCode.TIMEOUT for _, r in results)
    assert engine.batches == [1], f"the abandoned request was searched anyway: {engine.batches}"


def test_an_engine_crash_reaches_an_awaiting_caller_as_a_fixed_500() -> None:
    engine = SlowEngine(delay_s=0.0, fail_on=666)
    service = _service(engine)
    status, reply = asyncio.run(service.answer_async(_request(666)))
    service.close()
    assert status == 500 and isinstance(reply, ErrorReply) and "secret" not in reply.message


# ------------------------------------------------------------------ the bounded queue


class BlockingEngine(SlowEngine):
    """Holds every batch until ``release`` is set; records the requests it searched, in order."""

    def __init__(self) -> None:
        super().__init__(delay_s=0.0)
        self.release = threading.Event()
        self.searched: list[int] = []

    def answer(
        self,
        requests: Sequence[RecallRequest],
        started: float | None = None,
        *,
        stages: StageTimes | None = None,
        deadlines: Sequence[int | None] | None = None,
    ) -> list[Reply]:
        self.entered.set()
        assert self.release.wait(30), "the test never released the engine"
        self.searched += [r.hist_item[0][-1] for r in requests if r.hist_item]
        return super().answer(requests, started, stages=stages, deadlines=deadlines)


def _bounded(engine: SlowEngine, max_queue: int, timeout_s: float = 30.0) -> RecallService:
    return RecallService(
        cast(RecallEngine, engine),
        cast(VectorStore, None),
        "alias",
        RecallMetrics(CollectorRegistry()),
        max_batch=1,
        timeout_s=timeout_s,
        max_queue=max_queue,
        retry_after_s=7,
    )


def _metric(service: RecallService, name: str) -> float:
    value = service.metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


def test_a_full_queue_refuses_with_retry_after_and_serves_the_queued_ones() -> None:
    engine = BlockingEngine()
    service = _bounded(engine, max_queue=3)

    async def scenario() -> tuple[list[tuple[int, Reply]], QueueFull]:
        first = asyncio.ensure_future(service.answer_async(_request(1)))
        while not engine.entered.is_set():  # the batcher holds request 1: the queue is empty again
            await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(service.answer_async(_request(n))) for n in (2, 3, 4)]
        await asyncio.sleep(0)  # each one queued itself
        assert _metric(service, "mindstream_http_recall_queue_depth") == 3
        with pytest.raises(QueueFull) as refused:
            await service.answer_async(_request(5))
        engine.release.set()
        return list(await asyncio.gather(first, *queued)), refused.value

    answered, full = asyncio.run(scenario())
    service.close()
    assert full.headers == {"Retry-After": "7"} and full.reply.code is ErrorCode.UNAVAILABLE
    assert "3 recall requests are waiting" in full.reply.message
    assert [status for status, _ in answered] == [200, 200, 200, 200]
    assert engine.searched == [1, 2, 3, 4]  # the refused one was never queued
    assert _metric(service, "mindstream_http_recall_refused_total") == 1
    assert _metric(service, "mindstream_http_recall_shed_total") == 0


def test_abandoned_jobs_make_room_before_new_work_is_refused() -> None:
    """Queue of 3: two callers go away (their client disconnects), one keeps waiting; a new request then
    takes the room of the abandoned ones, which are never searched; the live ones keep their order."""
    engine = BlockingEngine()
    service = _bounded(engine, max_queue=3)

    async def scenario() -> list[tuple[int, Reply]]:
        gone = asyncio.Event()

        async def receive() -> dict[str, str]:  # the client's side of the connection
            await gone.wait()
            return {"type": "http.disconnect"}

        first = asyncio.ensure_future(service.answer_async(_request(1)))
        while not engine.entered.is_set():
            await asyncio.sleep(0.01)
        leaving = [asyncio.ensure_future(service.answer_async(_request(n), receive)) for n in (2, 4)]
        staying = asyncio.ensure_future(service.answer_async(_request(3)))
        await asyncio.sleep(0)
        assert _metric(service, "mindstream_http_recall_queue_depth") == 3
        gone.set()
        left = await asyncio.gather(*leaving)
        assert [status for status, _ in left] == [499, 499]  # answered at once, nobody reads them
        newcomer = asyncio.ensure_future(service.answer_async(_request(5)))  # not refused: room was made
        await asyncio.sleep(0)
        assert _metric(service, "mindstream_http_recall_queue_depth") == 2
        engine.release.set()
        return list(await asyncio.gather(first, staying, newcomer))

    answered = asyncio.run(scenario())
    service.close()
    assert [status for status, _ in answered] == [200, 200, 200]
    assert engine.searched == [1, 3, 5], "an abandoned request was searched, or the order changed"
    assert _metric(service, "mindstream_http_recall_shed_total") == 2
    assert _metric(service, "mindstream_http_recall_refused_total") == 0


def test_jobs_past_their_timeout_are_dropped_to_make_room() -> None:
    """Blocking callers that timed out (504) leave their jobs queued; they count as abandoned."""
    engine = BlockingEngine()
    service = _bounded(engine, max_queue=2, timeout_s=0.2)
    with ThreadPoolExecutor(max_workers=4) as pool:
        first = pool.submit(service.answer, _request(1))
        assert engine.entered.wait(5), "the first request never reached the engine"
        late = [pool.submit(service.answer, _request(n)) for n in (2, 3)]
        assert [f.result()[0] for f in late] == [504, 504]
        wait_until(
            lambda: _metric(service, "mindstream_http_recall_queue_depth") == 2, 10, "the late jobs stay queued", 0.01
        )
        newcomer = pool.submit(service.answer, _request(4))  # would raise QueueFull if no room were made
        wait_until(
            lambda: _metric(service, "mindstream_http_recall_shed_total") == 2, 10, "the late jobs dropped", 0.01
        )
        assert _metric(service, "mindstream_http_recall_queue_depth") == 1
        engine.release.set()
        assert newcomer.result()[0] in (200, 504) and first.result()[0] == 504  # 504: this machine was slow
    service.close()
    assert engine.searched in ([1, 4], [1]) and _metric(service, "mindstream_http_recall_refused_total") == 0
