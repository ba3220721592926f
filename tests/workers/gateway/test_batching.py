"""The gateway's micro-batcher (pure logic: a fake engine stands in for the tower and Milvus)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import cast

from prometheus_client import CollectorRegistry

from schemas.messages import ErrorCode, ErrorReply, RecallReply, RecallRequest
from workers.gateway.recall import RecallService
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
        self, requests: Sequence[RecallRequest], started: float | None = None, *, stages: StageTimes | None = None
    ) -> list[Reply]:
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
