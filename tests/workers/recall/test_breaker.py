"""The Milvus circuit breaker: its states on a fake clock, the engine failing fast while it is open (no
search, no tower pass), one trial after ``breaker_open_s``, and its Prometheus series. Pure: fakes only."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from pymilvus.exceptions import MilvusException, MilvusUnavailableException

from schemas.messages import ErrorCode, ErrorReply, RecallReply, RecallRequest
from tests.workers.recall.scripted_store import ScriptedStore
from tests.workers.recall.test_engine import FakeLive, FakeServed, FakeTower, _table
from workers.recall.breaker import BreakerState, CircuitBreaker, CircuitOpen, register_breaker_metrics
from workers.recall.budget import Budget
from workers.recall.engine import RecallEngine
from workers.settings import RecallSettings

OPEN_S = 5.0
DOWN = MilvusUnavailableException(message="connection refused")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_states_on_a_fake_clock(clock: FakeClock) -> None:
    breaker = CircuitBreaker(OPEN_S, clock=clock)
    assert breaker.state is BreakerState.CLOSED and breaker.refusal() is None
    assert breaker.failed(DOWN) is True
    assert breaker.state is BreakerState.OPEN and breaker.opened == 1
    message = breaker.refusal() or ""
    assert message.startswith("Milvus unavailable (circuit open for 5.0 s after: MilvusUnavailableException: ")
    assert message.endswith("connection refused)>)") and breaker.reason is not None
    clock.now += 4.0
    assert breaker.refusal() is not None and "open for 1.0 s" in (breaker.refusal() or "")
    with pytest.raises(CircuitOpen, match="Milvus unavailable"):
        breaker.check()
    clock.now += 1.0
    assert breaker.state is BreakerState.HALF_OPEN and breaker.refusal() is None  # the trial may go
    breaker.failed(DOWN)  # the trial failed: open again for a full period
    assert breaker.state is BreakerState.OPEN and breaker.opened == 2
    clock.now += OPEN_S
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.succeeded()
    assert breaker.state is BreakerState.CLOSED and breaker.reason is None


def test_a_non_transient_failure_changes_nothing(clock: FakeClock) -> None:
    breaker = CircuitBreaker(OPEN_S, clock=clock)
    assert breaker.failed(MilvusException(code=1100, message="invalid parameter")) is False
    assert breaker.state is BreakerState.CLOSED
    breaker.failed(DOWN)
    clock.now += OPEN_S
    breaker.failed(ValueError("bad shape"))
    assert breaker.state is BreakerState.HALF_OPEN and breaker.opened == 1


def test_defaults_from_settings() -> None:
    assert CircuitBreaker.from_settings().open_s == RecallSettings().breaker_open_s
    assert CircuitBreaker.from_settings(RecallSettings(breaker_open_s=0.5)).open_s == 0.5
    with pytest.raises(ValueError):
        CircuitBreaker(0)


def _engine(store: ScriptedStore, clock: FakeClock, budget: Budget | None = None) -> tuple[RecallEngine, FakeLive]:
    live = FakeLive(FakeServed("v1", "items_v1", FakeTower(store.tables["items_v1"])))
    return RecallEngine(live, store, breaker=CircuitBreaker(OPEN_S, clock=clock), budget=budget), live


REQUEST = RecallRequest(hist_item=[[1, 2], [5]], top_k=4)


def test_the_engine_fails_fast_while_open_then_tries_once(clock: FakeClock) -> None:
    store = ScriptedStore({"items_v1": _table(1)}, script={0: DOWN})
    engine, live = _engine(store, clock)
    first = engine.answer([REQUEST])[0]
    assert isinstance(first, ErrorReply) and first.code is ErrorCode.UNAVAILABLE
    assert first.message.startswith("recall failed: MilvusUnavailableException")
    assert True not in live.calls  # no alias re-resolve after a transient failure (it would wait on Milvus too)
    assert engine.breaker.state is BreakerState.OPEN

    served = live.served
    assert served is not None
    towered, reads = len(served.tower.seen), len(live.calls)
    clock.now += OPEN_S - 0.5
    fast = engine.answer([REQUEST, REQUEST])
    assert all(isinstance(r, ErrorReply) and r.code is ErrorCode.UNAVAILABLE for r in fast)
    assert isinstance(fast[0], ErrorReply)
    assert fast[0].message.startswith("Milvus unavailable (circuit open for 0.5 s after: MilvusUnavailableException")
    assert len(store.calls) == 1 and len(served.tower.seen) == towered and len(live.calls) == reads  # no work at all

    clock.now += 0.5  # half-open: the next batch is the trial, and it succeeds
    trial = engine.answer([REQUEST])[0]
    assert isinstance(trial, RecallReply) and len(trial.items) == 2
    assert engine.breaker.state is BreakerState.CLOSED
    assert isinstance(engine.answer([REQUEST])[0], RecallReply) and len(store.calls) == 3


def test_a_failed_trial_opens_the_circuit_again(clock: FakeClock) -> None:
    store = ScriptedStore({"items_v1": _table(1)}, script={0: DOWN, 1: DOWN})
    engine, _ = _engine(store, clock)
    engine.answer([REQUEST])
    clock.now += OPEN_S
    trial = engine.answer([REQUEST])[0]
    assert isinstance(trial, ErrorReply) and trial.code is ErrorCode.UNAVAILABLE and len(store.calls) == 2
    assert engine.breaker.state is BreakerState.OPEN and engine.breaker.opened == 2
    clock.now += OPEN_S - 0.1
    refused = engine.answer([REQUEST])[0]
    assert isinstance(refused, ErrorReply) and "circuit open" in refused.message and len(store.calls) == 2


def test_later_sub_batches_of_the_call_fail_fast_once_it_opened(clock: FakeClock) -> None:
    store = ScriptedStore({"items_v1": _table(1)}, script={0: DOWN})
    engine, _ = _engine(store, clock, Budget(max_request_cost=1000, max_diverse_top_k=20, max_batch_cost=8))
    replies = engine.answer([REQUEST, REQUEST, REQUEST])  # 2 x 4 = 8 each: three searches
    assert len(store.calls) == 1
    messages = [r.message for r in replies if isinstance(r, ErrorReply) and r.code is ErrorCode.UNAVAILABLE]
    assert len(messages) == 3 and messages[0].startswith("recall failed")
    assert all(m.startswith("Milvus unavailable (circuit open") for m in messages[1:])


def test_a_non_transient_search_error_does_not_open_it(clock: FakeClock) -> None:
    store = ScriptedStore({"items_v1": _table(1)}, script={0: MilvusException(code=1100, message="bad")})
    engine, _ = _engine(store, clock)
    assert isinstance(engine.answer([REQUEST])[0], ErrorReply)
    assert engine.breaker.state is BreakerState.CLOSED
    assert isinstance(engine.answer([REQUEST])[0], RecallReply)


def test_a_transient_failure_to_resolve_the_live_model_opens_it(clock: FakeClock) -> None:
    store = ScriptedStore({"items_v1": _table(1)})
    engine, live = _engine(store, clock)
    live.served = DOWN  # FakeLive raises what it holds
    first = engine.answer([REQUEST])[0]
    assert isinstance(first, ErrorReply) and first.message.startswith("live model unavailable")
    assert engine.breaker.state is BreakerState.OPEN
    reads = len(live.calls)
    assert isinstance(engine.answer([REQUEST])[0], ErrorReply) and len(live.calls) == reads


def test_state_and_openings_on_the_registry(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    breaker = CircuitBreaker(OPEN_S, clock=clock)
    register_breaker_metrics(breaker, registry)

    def state(name: str) -> float | None:
        return registry.get_sample_value("mindstream_recall_milvus_breaker_state", {"state": name})

    assert (state("closed"), state("open"), state("half_open")) == (1.0, 0.0, 0.0)
    breaker.failed(DOWN)
    assert (state("closed"), state("open"), state("half_open")) == (0.0, 1.0, 0.0)
    assert registry.get_sample_value("mindstream_recall_milvus_breaker_opened_total") == 1.0
    clock.now += OPEN_S
    assert state("half_open") == 1.0
