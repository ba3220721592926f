"""The supervisor's restart back-off with real child processes (a ``mindstream`` command that exits at
once) and a fake clock: the delay doubles with each crash in a row, stops at ``backoff_max_s``, and
starts again from 1 s after a run of ``healthy_after_s``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from workers.settings import SupervisorSettings
from workers.supervisor import Child, Supervisor


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _exited(child: Child, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while child.running:
        assert time.monotonic() < deadline, f"{child.name} did not exit"
        time.sleep(0.02)


def _crash_and_delay(supervisor: Supervisor, child: Child, clock: FakeClock, ran_s: float = 0.0) -> float:
    """Let the child exit after running ``ran_s`` (of the fake clock); the delay the supervisor chose."""
    _exited(child)
    clock.now += ran_s
    supervisor.check()  # notices the exit
    delay = child.next_start - clock.now
    clock.now += delay - 0.01
    supervisor.check()  # too early: nothing
    assert child.next_start > 0.0 and not child.running
    clock.now += 0.01
    supervisor.check()  # restarts it
    assert child.next_start == 0.0
    return delay


def test_the_backoff_doubles_up_to_its_cap_and_resets_after_a_healthy_run(tmp_path: Path) -> None:
    clock = FakeClock()
    child = Child("crasher", ["no-such-command"], dict(os.environ), tmp_path / "crasher.log")
    supervisor = Supervisor([child], SupervisorSettings(backoff_max_s=8.0, healthy_after_s=60.0), clock=clock)
    supervisor.start()
    try:
        pids = {child.proc.pid if child.proc else None}
        delays = [_crash_and_delay(supervisor, child, clock) for _ in range(5)]
        assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
        assert _crash_and_delay(supervisor, child, clock, ran_s=59.0) == 8.0  # not long enough: still the cap
        assert _crash_and_delay(supervisor, child, clock, ran_s=60.0) == 1.0  # healthy: from 1 s again
        assert _crash_and_delay(supervisor, child, clock) == 2.0
        pids |= {child.proc.pid if child.proc else None}
        assert len(pids) == 2 and child.restarts == 2  # new processes each time
        assert "invalid choice: 'no-such-command'" in (tmp_path / "crasher.log").read_text()
    finally:
        supervisor.stop(timeout=10)
