"""The fallback for users with no usable history: items popular in a recent window of the click stream.

**Decayed counts.** Every click adds ``2 ** ((t - now) / half_life)`` to its item's count: 1 when it
happens, half as much ``recall.popular_half_life_s`` later. ``t`` is the click's event time, clamped
to the reader's clock (a click stamped in the future counts as now, it cannot dominate for ever).
Counts are kept relative to a reference time (``2 ** ((t - ref) / half_life)``, the same factor for
every item), so a click costs one addition and nothing is rescaled per click; the reference moves
forward (every count scaled once) when the newest click is :data:`REBASE_HALF_LIVES` half-lives past
it, far from float64's range.

**Bounded memory.** At most ``2 x capacity`` items are held; when more arrive, the counts are pruned
back to the ``capacity`` largest (``recall.popular_capacity``). As in Space-Saving (Metwally et al.),
an item that comes in after a prune starts from the largest count that prune dropped (the floor)
instead of 0: a count is never below the exact one and above it by at most :meth:`PopularItems.slack`
(the largest floor an item started from, decayed like the counts). Hence every item whose exact count
exceeds both the ``k``-th returned count and the slack is in ``top(k)``, and items that were never
pruned (the head of a steady stream) keep exact counts; while nothing was pruned (fewer distinct items
than ``2 x capacity`` in the window) the whole list is exact. The tests replay streams against a plain
model, with and without pruning.

**Feeding.** :class:`PopularFeed` reads new clicks from the ingest state
(:meth:`workers.ingest.state_reader.StateReader.columns_since`, the recall side's own reader) at most
``recall.popular_max_events`` per step; :class:`workers.catalogue.follow.Follower` runs it every
``recall.popular_refresh_s`` on a thread (again at once while it is behind). Its cursor starts at the
beginning of what the state keeps, so a restarted worker rebuilds the window from the state.

``top(k, exclude, allowed)`` walks the items by count (ties: smaller id first) and returns the first
``k`` that are not excluded and that ``allowed`` admits (availability, the request's filters).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from workers.ingest.state_reader import Cursor
from workers.ingest.state_store import ClickColumns

__all__ = ["REBASE_HALF_LIVES", "ClickSource", "PopularFeed", "PopularItems"]

REBASE_HALF_LIVES: Final = 64.0  # counts stay below 2 ** 64 x clicks: nowhere near float64's 1.8e308
_MS: Final = 1000.0

IntArray = npt.NDArray[np.int64]


def _wall_ms() -> float:
    return time.time() * _MS


class PopularItems:
    """Decayed click counts per item; ``add`` from one thread, ``top`` from any."""

    def __init__(self, half_life_s: float, capacity: int, clock_ms: Callable[[], float] = _wall_ms) -> None:
        if half_life_s <= 0 or capacity < 1:
            raise ValueError("half_life_s must be > 0 and capacity >= 1")
        self.half_life_ms = half_life_s * _MS
        self.capacity = capacity
        self.clock_ms = clock_ms
        self._counts: dict[int, float] = {}
        self._ref: float | None = None  # counts are relative to this time (ms)
        self._newest = -np.inf  # the newest (clamped) click time seen, ms
        self._ranked: tuple[IntArray, npt.NDArray[np.float64]] | None = None  # ids, counts by rank
        self._floor = 0.0  # where an item new to the counts starts: the largest count the last prune dropped
        self._slack = 0.0  # the largest floor any item started from (both relative to ``_ref``)
        self._lock = threading.Lock()
        self.pruned = 0  # items dropped by pruning so far

    def __len__(self) -> int:
        return len(self._counts)

    @property
    def newest_ms(self) -> float | None:
        """The newest click time counted (after clamping), None before the first."""
        return None if self._newest == -np.inf else float(self._newest)

    def add(self, item_ids: IntArray, ts_ms: IntArray) -> None:
        """Count clicks (``item_ids[i]`` at ``ts_ms[i]``, epoch milliseconds)."""
        if len(item_ids) == 0:
            return
        times = np.minimum(np.asarray(ts_ms, dtype=np.float64), self.clock_ms())
        ids = np.asarray(item_ids, dtype=np.int64)
        with self._lock:
            newest = float(times.max())
            if self._ref is None:
                self._ref = newest
            if newest > self._newest:
                self._newest = newest
            if (self._newest - self._ref) / self.half_life_ms > REBASE_HALF_LIVES:
                self._rebase(self._newest)
            weights = np.exp2((times - self._ref) / self.half_life_ms)
            unique, inverse = np.unique(ids, return_inverse=True)
            sums = np.zeros(unique.shape[0], dtype=np.float64)
            np.add.at(sums, inverse, weights)  # in click order per item, as a plain sum would
            counts, floor = self._counts, self._floor
            for item, weight in zip(unique.tolist(), sums.tolist(), strict=True):
                if weight > 0.0:
                    known = counts.get(item)
                    if known is None and floor > 0.0:
                        self._slack = max(self._slack, floor)
                    counts[item] = (floor if known is None else known) + weight
            if len(counts) > 2 * self.capacity:
                self._prune()
            self._ranked = None

    def _rebase(self, ref: float) -> None:
        assert self._ref is not None
        factor = float(np.exp2((self._ref - ref) / self.half_life_ms))
        self._counts = {item: count * factor for item, count in self._counts.items() if count * factor > 0.0}
        self._floor *= factor
        self._slack *= factor
        self._ref = ref

    def _prune(self) -> None:
        ids, counts = self._sorted()
        keep = slice(0, self.capacity)
        self._floor = float(counts[self.capacity])  # the largest count dropped
        self.pruned += len(self._counts) - self.capacity
        self._counts = dict(zip(ids[keep].tolist(), counts[keep].tolist(), strict=True))

    def _sorted(self) -> tuple[IntArray, npt.NDArray[np.float64]]:
        ids = np.fromiter(self._counts.keys(), dtype=np.int64, count=len(self._counts))
        counts = np.fromiter(self._counts.values(), dtype=np.float64, count=len(self._counts))
        order = np.lexsort((ids, -counts))  # by count, ties: smaller id first
        return ids[order], counts[order]

    def _scale(self, now_ms: float | None) -> float:
        """Relative counts -> decayed counts at ``now_ms`` (default: the newest click counted)."""
        if self._ref is None:
            return 0.0
        at = self._newest if now_ms is None else min(now_ms, self.clock_ms())
        return float(np.exp2((self._ref - at) / self.half_life_ms))

    def slack(self, now_ms: float | None = None) -> float:
        """How much higher than exact a count may be (pruning), at ``now_ms``; 0 while nothing was pruned."""
        with self._lock:
            return self._slack * self._scale(now_ms)

    def top(
        self,
        k: int,
        exclude: Collection[int] = (),
        allowed: Callable[[int], bool] | None = None,
        now_ms: float | None = None,
    ) -> list[tuple[int, float]]:
        """The ``k`` most clicked items (decayed count at ``now_ms``, default: the newest click counted)
        that are not in ``exclude`` and that ``allowed`` admits; fewer when fewer are known."""
        if k <= 0:
            return []
        with self._lock:
            if self._ranked is None:
                self._ranked = self._sorted()
            ids, counts = self._ranked
            scale = self._scale(now_ms)
        picked: list[tuple[int, float]] = []
        step = max(4 * k, 64)  # a slice at a time: no Python list of every item per request
        for start in range(0, ids.shape[0], step):
            for item, count in zip(
                ids[start : start + step].tolist(), counts[start : start + step].tolist(), strict=True
            ):
                if item in exclude or (allowed is not None and not allowed(item)):
                    continue
                picked.append((item, count * scale))
                if len(picked) == k:
                    return picked
        return picked


class ClickSource(Protocol):
    """What :class:`PopularFeed` reads (:class:`workers.ingest.state_reader.StateReader`)."""

    def columns_since(self, cursor: Cursor, limit: int | None = None) -> tuple[ClickColumns, Cursor]: ...


class PopularFeed:
    """Feeds a :class:`PopularItems` from the ingest state; ``step()`` for a :class:`Follower`."""

    def __init__(self, items: PopularItems, source: ClickSource, max_events: int) -> None:
        self.items = items
        self.source = source
        self.max_events = max_events
        self.cursor = Cursor()
        self.read = 0

    def step(self) -> bool:
        """Count the clicks appended since the last step (at most ``max_events``); True when more wait."""
        columns, self.cursor = self.source.columns_since(self.cursor, self.max_events)
        self.items.add(columns.item_ids, columns.ts)
        self.read += len(columns)
        return len(columns) >= self.max_events
