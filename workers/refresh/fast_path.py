"""The fast path: new items recallable within seconds, inside the live version.

A major round (train, shadow collection, verify, swap) takes seconds to minutes; an item clicked
for the first time should not wait for it. Every ``fast_path_interval_s`` the fast path reads the
clicks that arrived since its last step, collects the items the live version does not know, and
adds them to the live collection as the next *generation*:

1. a vector per new item under the **live version's weights**, by the rule
   ``settings.refresh.cold_start`` (:mod:`model.cold_start`, measured by ``bench.cold_start``):
   ``co_click``, the mean of the live vectors of the items its clickers clicked (their recent
   histories, known items only), or ``steps``, a few optimiser steps of the training loss on the
   new rows alone from that mean, the live tower and every live row frozen, on the clicks of
   those clickers plus recent clicks on known items (in which the new rows are negatives, so a
   new item does not outscore the catalogue for everyone). Both read nothing but the live
   checkpoint and the state store;
2. write them as generation ``g + 1`` of the live collection, verify them (every row found by its
   own vector, Strong consistency) and announce ``(g + 1, live version)``
   (:meth:`~workers.refresh.live_writer.LiveWriter.write`, the same path as a delta's): from then
   on the recall workers search the rows visible at ``g + 1`` and name it in their replies. Steps go
   on while a major round's delta is being written (it is staged under a generation above theirs),
   except for the items that delta closes, which wait for its commit.

Every vector of these rows is a function of the live version's weights, and the tower is that
version's. A crash before the announce leaves rows nobody searches; the next write removes them.
A newer version that does not know an item yet (its clicks came after the round's) gets it again,
embedded with its own weights (the item's older row is closed in the same write), and an item
stays pending until a live version's vocabulary holds it.

At most ``refresh.fast_path_max_pending`` items are pending: an item first clicked while that many
are waits for the major round, which takes every item of the clicks it consumes (oldest first,
``refresh.max_new_items_per_round`` at a time), or for a click after a swap has made room; such
items are counted in ``mindstream_refresh_new_items_deferred_total{path="fast_path"}``. The items
that hold the places are the oldest ones: the same ones the next rounds take first, so the places
are given back at the next swaps. A new item's partition is its segment's if that segment is (or
can still be) admitted (:class:`~workers.refresh.segments.SegmentMap`), else the default.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from model.cold_start import FrozenModel, IntroducingClicks, co_click_mean, few_steps
from model.vocab import ItemVocab
from workers.infra.vector_store import Rows, VectorStore
from workers.ingest.history_store import HistoryReader
from workers.ingest.state_reader import Cursor
from workers.ingest.state_store import StoredClick
from workers.refresh.live_writer import DeltaUnderWay, LiveWriter
from workers.refresh.metrics import RefreshMetrics, in_progress
from workers.refresh.registry import ModelRegistry
from workers.refresh.segments import SegmentMap
from workers.settings import Settings

log = logging.getLogger(__name__)

CLICKERS_KEPT = 8  # recent clickers per pending item whose histories give its context
PLAUSIBLE_CLOCK_SKEW_S = 86_400.0  # an event time further than this from now is not trusted


@dataclass
class PendingItem:
    first_click: float  # epoch seconds of the first click seen
    clickers: list[int] = field(default_factory=list)  # most recent last
    segment: str | None = None
    live_since: float | None = None  # first announced in some version (its freshness is counted once)


@dataclass(frozen=True)
class StepReport:
    collection: str
    version: str
    generation: int
    added: list[int]
    waiting: int  # pending items without context yet (no clicker history with a known item)
    seconds: float
    freshness_s: list[float]

    def as_dict(self) -> dict[str, object]:
        return {
            "collection": self.collection,
            "version": self.version,
            "generation": self.generation,
            "added": len(self.added),
            "waiting": self.waiting,
            "seconds": round(self.seconds, 4),
        }


@dataclass
class _Live:
    collection: str
    version: str
    vocab: ItemVocab
    model: FrozenModel  # the live item table and numpy user tower, never written
    supported: bool  # the collection has the generation field


def click_time(event: StoredClick, now: float) -> float:
    """The event's time (epoch ms -> s) when plausible, else ``now``."""
    ts = event.ts / 1000.0
    return ts if abs(now - ts) <= PLAUSIBLE_CLOCK_SKEW_S else now


class FastPath:
    """One fast-path loop per alias (the refresh worker runs it in a thread of its own)."""

    def __init__(
        self,
        settings: Settings,
        store: VectorStore,
        reader: HistoryReader,
        *,
        cursor: Cursor | None = None,
        metrics: RefreshMetrics | None = None,
        before_announce: Callable[[], None] | None = None,
        writer: LiveWriter | None = None,
    ) -> None:
        """``writer``: the refresh worker's (shared with its major rounds); default a writer of its own."""
        self.settings = settings
        self.writer = writer if writer is not None else LiveWriter(store, settings.mind.dim)
        self.store = store
        self.reader = reader
        self.registry = ModelRegistry.from_settings(settings)
        self.cursor = cursor if cursor is not None else Cursor()
        self.metrics = metrics
        self.pending: dict[int, PendingItem] = {}
        # The 'steps' rule's background: recent clicks on known items (user, item), and how many
        # clicks were on known / unknown items (the background's share of the loss).
        self.background: deque[tuple[int, int]] = deque(maxlen=settings.refresh.cold_start_steps.background)
        self.clicks_known = 0
        self.clicks_unknown = 0
        self._live: _Live | None = None
        self._segments: SegmentMap | None = None  # opened at the first step that adds items
        self._before_announce = before_announce  # test hook: a crash between insert and announce
        self._announced: tuple[tuple[str, str] | None, set[int]] = (None, set())  # added under (collection, version)

    # -- the live version ------------------------------------------------------------------------

    def _resolve(self) -> _Live | None:
        collection = self.store.resolve_alias(self.registry.alias)
        if collection is None:
            return None
        version = self.writer.announced(collection).version or self.registry.version_of(collection)
        if version is None:
            return None
        if self._live is None or (self._live.collection, self._live.version) != (collection, version):
            ckpt = self.registry.checkpoint(version)
            self._live = _Live(
                collection,
                version,
                ckpt.vocab(),
                FrozenModel.from_net(ckpt.load_net(), version),
                self.store.has_generations(collection),
            )
            log.info("fast path on %s (%s)", collection, version)
        return self._live

    # -- one step --------------------------------------------------------------------------------

    def observe(self, events: list[StoredClick], now: float) -> None:
        """Record the clicks on items the live version may not know (checked at each step); a new item
        finds no place once ``fast_path_max_pending`` are pending (it is left to the major round)."""
        room = self.settings.refresh.fast_path_max_pending - len(self.pending)
        deferred: set[int] = set()
        for event in events:
            item = self.pending.get(event.item_id)
            if item is None:
                if room <= 0:
                    deferred.add(event.item_id)
                    continue
                room -= 1
                item = self.pending[event.item_id] = PendingItem(click_time(event, now))
            item.clickers.append(event.user_id)
            del item.clickers[:-CLICKERS_KEPT]
            if event.segment is not None:
                item.segment = event.segment
        if deferred:
            log.debug("fast path full (%d pending): %d new items left to the round", len(self.pending), len(deferred))
            if self.metrics is not None:
                self.metrics.new_items_deferred.labels(path="fast_path").inc(len(deferred))

    def note(self, events: list[StoredClick], known: list[bool], now: float) -> None:
        """Record the clicks of one step: those on unknown items (:meth:`observe`), the recent ones on
        known items (the 'steps' rule's background) and how many were on known items."""
        self.observe([e for e, k in zip(events, known, strict=True) if not k], now)
        n_known = sum(known)
        self.clicks_known += n_known
        self.clicks_unknown += len(events) - n_known
        if self.background.maxlen:
            tail = [e for e, k in zip(events, known, strict=True) if k][-self.background.maxlen :]
            self.background.extend((e.user_id, e.item_id) for e in tail)

    def step(self) -> StepReport | None:
        """Read new clicks; add the live version's unknown items as its next generation."""
        began = time.perf_counter()
        now = time.time()
        events, self.cursor = self.reader.events_since(self.cursor, limit=self.settings.refresh.fast_path_max_events)
        live = self._resolve()
        if live is None:
            return None
        if events:
            known = live.vocab.rows(np.fromiter((e.item_id for e in events), dtype=np.int64, count=len(events))) > 0
            self.note(events, known.tolist(), now)
        self._forget_known(live, now)
        if self.metrics is not None:
            self.metrics.fast_path_pending.set(len(self.pending))
        if not live.supported or not self.settings.refresh.fast_path:
            return None
        if self._announced[0] != (live.collection, live.version):  # a new version: what was added is in it, or again
            self._announced = ((live.collection, live.version), set())
        announced = self._announced[1]
        busy = set(self.writer.closing(live.collection).tolist())  # a staged delta writes them: after its commit
        candidates = [i for i in self.pending if i not in announced and i not in busy]
        if not candidates:
            return None
        with in_progress(self.metrics, "fast_path"):
            try:
                return self._add(live, candidates, began)
            except DeltaUnderWay as exc:  # rare: the items stay pending, the next step tries again
                log.info("fast path waits for the delta under way: %s", exc)
                return None

    def _add(self, live: _Live, candidates: list[int], began: float) -> StepReport | None:
        """Embed the candidates, insert those with context as generation g + 1, verify and announce it
        (the ``fast_path`` activity); ``began``: when the step started (its report's seconds)."""
        ids, vectors, waiting = self._vectors(live, candidates)
        if not ids:
            return None
        id_arr = np.asarray(ids, dtype=np.int64)
        segments = self._partitions([self.pending[i].segment for i in ids])
        new: dict[str, Rows] = {}
        for segment in sorted(set(segments)):
            picked = np.asarray([s == segment for s in segments])
            new[segment] = Rows.of(id_arr[picked], vectors[picked], live.version, 0)
        n_probe = min(len(ids), self.settings.refresh.probe_items)

        def verify(generation: int) -> None:
            probe = self.store.probe(
                live.collection, id_arr[:n_probe], vectors[:n_probe], model_version=live.version, generation=generation
            )
            if not probe.ok:
                raise RuntimeError(f"fast-path rows of {live.collection} failed verification: {probe}")
            if self._before_announce is not None:
                self._before_announce()

        written = self.writer.write(live.collection, live.version, new, verify=verify, items=ids)
        self._announced[1].update(ids)
        announced_at, generation = written.announced_at, written.generation
        # Items re-added to a newer version (born after its training data) were live already: counted once.
        first_time = [self.pending[i] for i in ids if self.pending[i].live_since is None]
        fresh = [max(announced_at - p.first_click, 0.0) for p in first_time]
        for pending in first_time:
            pending.live_since = announced_at
        if self.metrics is not None:
            self.metrics.observe_new_items(fresh)
            self.metrics.fast_path_items.inc(len(ids))
            self.metrics.live_generation.set(generation)
        report = StepReport(live.collection, live.version, generation, ids, waiting, time.perf_counter() - began, fresh)
        log.info("fast path: %s", report.as_dict())
        return report

    def _partitions(self, segments: list[str | None]) -> list[str]:
        """The partition of each new item: its segment's when admitted (admitting new segments while
        ``max_segments`` allows), else the default."""
        if self._segments is None:
            self._segments = SegmentMap(SegmentMap.file(self.settings.refresh_dir), self.settings.refresh.max_segments)
        self._segments.admit(segments)
        return self._segments.partitions(segments)

    def close(self) -> None:
        if self._segments is not None:
            self._segments.close()
            self._segments = None

    def _forget_known(self, live: _Live, now: float) -> None:
        """Pending items the live *version* knows (a major swap embedded them) are done."""
        if not self.pending:
            return
        items = np.fromiter(self.pending, dtype=np.int64, count=len(self.pending))
        done = items[live.vocab.rows(items) > 0].tolist()
        for item in done:
            pending = self.pending.pop(item)
            if self.metrics is not None and pending.live_since is None:  # live through the major version
                self.metrics.observe_new_items([max(now - pending.first_click, 0.0)])

    def _vectors(self, live: _Live, candidates: list[int]) -> tuple[list[int], np.ndarray, int]:
        """A vector under the live weights for each candidate with context (``refresh.cold_start``);
        the rest wait. Context: the known history items of the candidate's recent clickers."""
        histories: dict[int, np.ndarray] = {}
        self._read_histories(live, {u for item in candidates for u in self.pending[item].clickers}, histories)
        contexts: list[np.ndarray] = []
        clicks: list[np.ndarray] = []
        targets: list[int] = []
        for index, item in enumerate(candidates):
            context: list[np.ndarray] = []
            for user in self.pending[item].clickers:
                context.append(histories[user])
                clicks.append(histories[user])
                targets.append(index)
            contexts.append(np.concatenate(context) if context else np.zeros(0, dtype=np.int64))
        cold = co_click_mean(live.model.table, contexts)
        vectors, ready = cold.vectors, cold.ready
        refresh = self.settings.refresh
        if refresh.cold_start == "steps" and ready.any():
            introducing = IntroducingClicks(clicks, np.asarray(targets, dtype=np.int64))
            init = None if refresh.cold_start_steps.init == "random" else vectors
            background, weight = self._background(live, histories)
            steps = few_steps(
                live.model,
                introducing,
                len(candidates),
                refresh.cold_start_steps,
                init=init,
                background=background,
                background_weight=weight,
            )
            vectors, ready = steps.vectors, steps.ready & ready
        ids = [item for item, r in zip(candidates, ready.tolist(), strict=True) if r]
        return ids, np.ascontiguousarray(vectors[ready], dtype=np.float32), len(candidates) - len(ids)

    def _read_histories(self, live: _Live, users: set[int], histories: dict[int, np.ndarray]) -> None:
        """Add to ``histories`` the live rows of the known items in the recent history of each of
        ``users`` not in it yet (one read of the state for all of them)."""
        missing = sorted(users - histories.keys())
        for user, history in zip(missing, self.reader.histories(missing, self.settings.mind.maxlen), strict=True):
            known = live.vocab.rows(history)
            histories[user] = known[known > 0]

    def _background(self, live: _Live, histories: dict[int, np.ndarray]) -> tuple[IntroducingClicks | None, float]:
        """Recent clicks on items the live version knows (history without the item -> its row), and
        the share of the loss they stand for: the share of clicks seen on known items."""
        if not self.background:
            return None, 0.0
        users, items = zip(*self.background, strict=True)
        rows = live.vocab.rows(np.asarray(items, dtype=np.int64))
        clicks: list[np.ndarray] = []
        targets: list[int] = []
        self._read_histories(live, set(users), histories)
        for user, row in zip(users, rows.tolist(), strict=True):
            if row <= 0:
                continue  # a click of an older version's item this version dropped
            clicks.append(histories[user][histories[user] != row])
            targets.append(row)
        seen = self.clicks_known + self.clicks_unknown
        weight = self.clicks_known / seen if seen else self.settings.refresh.cold_start_steps.background_weight
        return IntroducingClicks(clicks, np.asarray(targets, dtype=np.int64)), min(weight, 0.99)
