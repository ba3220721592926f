"""Child worker processes for ``mindstream up``: start, restart on crash (capped back-off), stop cleanly.

The restart delay doubles with each crash in a row (1, 2, 4 ... ``supervisor.backoff_max_s``) and starts
again from 1 s once a child has run ``supervisor.healthy_after_s`` before it exits: a worker that crashes
once a day is back in a second, not after the cap it reached on some earlier bad day."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from workers.settings import SupervisorSettings

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    args: list[str]  # mindstream sub-command and its options (or the options of ``module``)
    env: dict[str, str]
    log_path: Path
    module: str = "workers.cli"  # run as ``python -m <module> <args>``
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0  # crashes in a row (reset once a run lasted supervisor.healthy_after_s)
    next_start: float = 0.0
    started_at: float = 0.0  # the supervisor's clock when the current run started
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log is not None:  # the previous run's (it was killed, not stopped)
            self._log.close()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's life
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal reaches us only; we stop children ourselves
        )
        log.info("started %s (pid %d), log %s", self.name, self.proc.pid, self.log_path)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s: killing it", self.name, timeout)
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


class Supervisor:
    """Keeps every child running; a child that exits is restarted after 1, 2, 4 ... ``backoff_max_s``
    seconds, from 1 s again after a run of ``healthy_after_s``. ``clock``: monotonic seconds (tests)."""

    def __init__(
        self,
        children: list[Child],
        settings: SupervisorSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children = children
        self.settings = settings if settings is not None else SupervisorSettings()
        self.clock = clock

    def start(self) -> None:
        for child in self.children:
            self.start_child(child)

    def start_child(self, child: Child) -> None:
        """Start ``child`` now (again); a restart it was waiting for is cleared."""
        child.start()
        child.started_at = self.clock()
        child.next_start = 0.0

    def delay(self, child: Child) -> float:
        """The restart delay of a child that has just exited (after ``restarts`` crashes in a row)."""
        return min(self.settings.backoff_max_s, 2.0**child.restarts)

    def check(self) -> None:
        now = self.clock()
        for child in self.children:
            if child.running:
                continue
            if child.proc is not None and child.next_start == 0.0:
                code = child.proc.returncode
                ran = now - child.started_at
                if child.restarts and ran >= self.settings.healthy_after_s:
                    log.info("%s ran %.0f s before it exited: restart delay back to 1 s", child.name, ran)
                    child.restarts = 0
                delay = self.delay(child)
                child.next_start = now + delay
                log.error("%s exited with %s; restarting in %.0f s (see %s)", child.name, code, delay, child.log_path)
            elif now >= child.next_start:
                child.stop(0)
                self.start_child(child)
                child.restarts += 1

    def stop(self, timeout: float | None = None) -> None:
        """Every child, the last started first: SIGTERM, SIGKILL past ``timeout`` (default: the settings')."""
        for child in reversed(self.children):
            child.stop(self.settings.stop_timeout_s if timeout is None else timeout)
