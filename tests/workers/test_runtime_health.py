"""A worker's ``/healthz`` and ``/readyz`` (``workers.runtime``), served beside its ``/metrics``.

``Health`` with an injected clock for the rules (starting, beating, stale; ready only when told and
live), then the real server on a free loopback port, queried over HTTP, and the shared loop
(``run_until_stopped``) that beats it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from tests.fixtures_milvus import free_port
from workers.runtime import Health, StopFlag, run_until_stopped, serve_metrics
from workers.settings import Settings

TIMEOUT_S = 30.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _json(url: str) -> tuple[int, dict[str, Any]]:
    status, body = _get(url)
    data = json.loads(body)
    assert isinstance(data, dict)
    return status, data


# ------------------------------------------------------------------------------ the rules


def test_starting_process_is_live_but_not_ready() -> None:
    health = Health(TIMEOUT_S, FakeClock())
    assert health.live() == (True, {"status": "starting", "heartbeat_age_s": None, "timeout_s": TIMEOUT_S})
    ready, body = health.ready()
    assert not ready and body == {"status": "not ready", "reason": "starting"}


def test_heartbeat_older_than_the_timeout_is_stale() -> None:
    clock = FakeClock()
    health = Health(TIMEOUT_S, clock)
    health.beat()
    clock.now += TIMEOUT_S
    assert health.live()[0], "exactly at the timeout is still live"
    clock.now += 0.5
    live, body = health.live()
    assert not live and body["status"] == "stale" and body["heartbeat_age_s"] == TIMEOUT_S + 0.5
    health.beat()
    assert health.live() == (True, {"status": "ok", "heartbeat_age_s": 0.0, "timeout_s": TIMEOUT_S})


def test_ready_needs_the_flag_and_a_live_loop() -> None:
    clock = FakeClock()
    health = Health(TIMEOUT_S, clock)
    health.beat()
    health.set_ready()
    assert health.ready() == (True, {"status": "ready", "reason": None})
    clock.now += TIMEOUT_S + 1
    ready, body = health.ready()
    assert not ready and body["reason"].startswith("loop stale")
    health.beat()
    health.set_ready(False, "milvus unreachable")
    assert health.ready() == (False, {"status": "not ready", "reason": "milvus unreachable"})


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        Health(0)


def test_the_default_timeout_is_the_setting() -> None:
    assert Settings().heartbeat_timeout_s > 0
    assert Settings.model_fields["heartbeat_timeout_s"].description


# ------------------------------------------------------------------------------ over HTTP


@pytest.fixture
def served() -> Iterator[tuple[str, Health, FakeClock]]:
    registry = CollectorRegistry()
    Counter("mindstream_probe", "a probe", registry=registry).inc()
    clock = FakeClock()
    health = Health(TIMEOUT_S, clock)
    port = free_port()
    server = serve_metrics(registry, port, "127.0.0.1", health=health)
    try:
        yield f"http://127.0.0.1:{port}", health, clock
    finally:
        server.shutdown()
        server.server_close()


def test_endpoints_answer_over_http(served: tuple[str, Health, FakeClock]) -> None:
    url, health, clock = served
    assert _json(f"{url}/healthz") == (200, {"status": "starting", "heartbeat_age_s": None, "timeout_s": TIMEOUT_S})
    assert _json(f"{url}/readyz") == (503, {"status": "not ready", "reason": "starting"})

    health.beat()
    health.set_ready()
    assert _json(f"{url}/healthz")[0] == 200
    assert _json(f"{url}/readyz") == (200, {"status": "ready", "reason": None})

    clock.now += TIMEOUT_S + 5  # the loop stopped beating
    status, body = _json(f"{url}/healthz")
    assert status == 503 and body["status"] == "stale"
    status, body = _json(f"{url}/readyz")
    assert status == 503 and body["reason"].startswith("loop stale")


def test_metrics_are_still_served(served: tuple[str, Health, FakeClock]) -> None:
    url, _, _ = served
    status, body = _get(f"{url}/metrics")
    assert status == 200 and b"mindstream_probe_total 1.0" in body
    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.headers["Cache-Control"] == "no-store"


# ------------------------------------------------------------------------------ the shared loop


def test_the_loop_beats_and_is_ready_after_its_first_step() -> None:
    clock = FakeClock()
    health = Health(TIMEOUT_S, clock)
    stop = StopFlag()
    seen: list[tuple[bool, bool]] = []

    def step() -> None:
        clock.now += 10  # each step takes 10 s of the fake clock
        seen.append((health.live()[0], health.ready()[0]))
        if len(seen) == 3:
            stop.set()

    assert run_until_stopped(step, stop, health) == 3
    # before the first step returned: beating (live) but not ready; from then on ready
    assert seen == [(True, False), (True, True), (True, True)]
    assert health.ready() == (True, {"status": "ready", "reason": None})
    assert health.live()[1]["heartbeat_age_s"] == 0.0  # beaten after the last step


def test_a_step_that_never_returns_turns_stale() -> None:
    clock = FakeClock()
    health = Health(TIMEOUT_S, clock)
    stop = StopFlag()

    def stuck() -> None:
        clock.now += TIMEOUT_S * 3  # as if the step hung for 90 s
        assert not health.live()[0]
        raise RuntimeError("the step failed")

    with pytest.raises(RuntimeError, match="failed"):
        run_until_stopped(stuck, stop, health)
    assert not health.ready()[0], "a loop that never completed a step is not ready"
