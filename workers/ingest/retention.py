"""Retention of the ingest state, driven by the ingest worker between its batches.

Kept per partition file (``PartitionStore.retain``): each user's newest ``history`` clicks, and
the training buffer, i.e. every event the refresh has not consumed plus the newest ``window``.
"Consumed" is the refresh's own record of what it trained on: the cursor in
``<state_dir>/refresh/state.json`` (file name -> last seq read), written after a round's version
went live. Without that file (no refresh ran yet) nothing in the buffer counts as consumed, so
only ``max_unconsumed``, when set, bounds it. Each step is one short transaction per file; while
a pass has rows left, a call repeats steps for up to ``budget_s`` (so retention keeps up with any
ingest rate the batches allow) and the next call goes on; a pass that has caught up waits ``interval_s``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from workers.ingest.history_store import PartitionWriter
from workers.ingest.state_store import RetentionPolicy, RetentionStep
from workers.refresh.state import RefreshState
from workers.settings import StateRetentionSettings

log = logging.getLogger(__name__)

_LOG_EVERY_S = 60.0


def policy_of(settings: StateRetentionSettings) -> RetentionPolicy:
    return RetentionPolicy(
        history=settings.history,
        window=settings.window,
        max_unconsumed=settings.max_unconsumed,
        batch=settings.batch,
        vacuum_pages=settings.vacuum_pages,
    )


class ConsumedCursor:
    """The refresh's training cursor per state file, re-read when ``state.json`` changes."""

    def __init__(self, state_file: Path) -> None:
        self.state_file = state_file
        self._stamp: int | None = None
        self._positions: Mapping[str, int] = {}

    def positions(self) -> Mapping[str, int]:
        try:
            stamp = self.state_file.stat().st_mtime_ns
        except FileNotFoundError:
            self._stamp, self._positions = None, {}
            return self._positions
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._positions = RefreshState.load(self.state_file).get_cursor().positions
            except (OSError, ValueError, TypeError) as exc:  # written by rename: never torn, but maybe bad
                log.warning("refresh cursor in %s unreadable (%s): nothing counts as consumed", self.state_file, exc)
                self._positions = {}
        return self._positions

    def of(self, store: PartitionWriter) -> int:
        return self.positions().get(store.name, 0)


class Retention:
    """``step(stores)``: at most one bounded retention step per store, when it is due."""

    def __init__(self, settings: StateRetentionSettings, refresh_state_file: Path) -> None:
        self.settings = settings
        self.policy = policy_of(settings)
        self.consumed = ConsumedCursor(refresh_state_file)
        self._next: dict[str, float] = {}
        self.deleted = 0
        self._logged_at = time.monotonic()
        self._logged_deleted = 0

    @classmethod
    def for_state_dir(cls, settings: StateRetentionSettings, state_dir: Path) -> Retention:
        """The retention of ``state_dir``'s ingest files, reading the refresh cursor of the same directory."""
        return cls(settings, RefreshState.file(state_dir / "refresh"))

    def step(self, stores: Iterable[PartitionWriter], now: float | None = None) -> list[RetentionStep]:
        """Steps on every due store: at least one each, more while rows are left and ``budget_s`` lasts."""
        now = time.monotonic() if now is None else now
        deadline = time.perf_counter() + self.settings.budget_s
        steps: list[RetentionStep] = []
        for store in list(stores):
            if self._next.get(store.name, 0.0) > now:
                continue
            try:
                consumed = self.consumed.of(store)
                done = store.retain(self.policy, consumed)
                steps.append(done)
                while done.pending and time.perf_counter() < deadline:
                    done = store.retain(self.policy, consumed)
                    steps.append(done)
            except Exception:  # retention must never stop ingest: the next step retries
                log.exception("retention step on %s failed", store.name)
                self._next[store.name] = now + self.settings.interval_s
                continue
            self._next[store.name] = now if done.pending else now + self.settings.interval_s
        self.deleted += sum(s.deleted for s in steps)
        if now - self._logged_at >= _LOG_EVERY_S and self.deleted > self._logged_deleted:
            log.info("retention deleted %d rows in %.0f s", self.deleted - self._logged_deleted, now - self._logged_at)
            self._logged_at, self._logged_deleted = now, self.deleted
        return steps
