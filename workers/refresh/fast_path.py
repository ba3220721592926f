"""The fast path: new items recallable within seconds, inside the live version.

A major round (train, shadow collection, verify, swap) takes seconds to minutes; an item clicked
for the first time should not wait for it. Every ``fast_path_interval_s`` the fast path reads the
clicks that arrived since its last step, collects the items the live version does not know, and
adds them to the live collection as the next *generation*:

1. a vector per new item under the **live version's weights**: the mean of the live vectors of
   the items its clickers clicked (their recent histories, known items only): a cold-start rule
   that needs no training step and reads nothing but the live checkpoint;
2. insert the rows tagged ``generation = g + 1`` (searches at generation ``g`` filter them out);
3. verify them (every row found by its own vector, Strong consistency);
4. announce ``g + 1`` (:class:`~workers.refresh.generations.Generations`, an atomic file write):
   from then on the recall workers search ``generation <= g + 1`` and name it in their replies.

Every vector a reply searches is therefore a function of one version's weights, and the tower is
that version's: a reply never mixes versions, and names exactly the generation it searched. A
crash before the announce leaves rows nobody searches; the next step deletes them and redoes the
work. The next major version re-embeds these items with its own weights (its round reads the
same clicks), and an item stays pending until a live version's vocabulary holds it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from model.export import item_table
from model.vocab import ItemVocab
from workers.infra.vector_store import VectorStore
from workers.ingest.state_reader import Cursor, StateReader
from workers.ingest.state_store import StoredClick
from workers.refresh.generations import Generations
from workers.refresh.metrics import RefreshMetrics
from workers.refresh.registry import ModelRegistry
from workers.refresh.segments import partition_name
from workers.settings import Settings

log = logging.getLogger(__name__)

CLICKERS_KEPT = 8  # recent clickers per pending item whose histories give its context
PLAUSIBLE_CLOCK_SKEW_S = 86_400.0  # an event time further than this from now is not trusted


@dataclass
class PendingItem:
    first_click: float  # epoch seconds of the first click seen
    clickers: list[int] = field(default_factory=list)  # most recent last
    segment: str | None = None


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
    table: np.ndarray
    generations: Generations
    supported: bool  # the collection has the generation field
    clean: bool = False  # rows of unannounced generations deleted


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
        reader: StateReader,
        *,
        cursor: Cursor | None = None,
        metrics: RefreshMetrics | None = None,
        before_announce: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.reader = reader
        self.registry = ModelRegistry(settings.models_dir, settings.milvus.alias)
        self.cursor = cursor if cursor is not None else Cursor()
        self.metrics = metrics
        self.pending: dict[int, PendingItem] = {}
        self._live: _Live | None = None
        self._before_announce = before_announce  # test hook: a crash between insert and announce

    # -- the live version ------------------------------------------------------------------------

    def _resolve(self) -> _Live | None:
        collection = self.store.resolve_alias(self.registry.alias)
        version = self.registry.version_of(collection) if collection else None
        if collection is None or version is None:
            return None
        if self._live is None or self._live.collection != collection:
            ckpt = self.registry.checkpoint(version)
            self._live = _Live(
                collection,
                version,
                ckpt.vocab(),
                item_table(ckpt.load_net()),
                Generations.load(self.registry.root, collection),
                self.store.has_generations(collection),
            )
            log.info("fast path on %s (generation %d)", collection, self._live.generations.generation)
        return self._live

    # -- one step --------------------------------------------------------------------------------

    def observe(self, events: list[StoredClick], now: float) -> None:
        """Record the clicks on items the live version may not know (checked at each step)."""
        for event in events:
            item = self.pending.get(event.item_id)
            if item is None:
                item = self.pending[event.item_id] = PendingItem(click_time(event, now))
            item.clickers.append(event.user_id)
            del item.clickers[:-CLICKERS_KEPT]
            if event.segment is not None:
                item.segment = event.segment

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
            self.observe([e for e, k in zip(events, known.tolist(), strict=True) if not k], now)
        self._forget_known(live, now)
        if not live.supported or not self.settings.refresh.fast_path:
            return None
        announced = set(live.generations.items)
        candidates = [i for i in self.pending if i not in announced]
        if not candidates:
            return None
        ids, vectors, waiting = self._vectors(live, candidates)
        if not ids:
            return None
        if not live.clean:
            self.store.delete_generations_above(live.collection, live.generations.generation)
            live.clean = True
        generation = live.generations.generation + 1
        live.clean = False  # rows of an unannounced generation exist from here on
        id_arr = np.asarray(ids, dtype=np.int64)
        segments = [partition_name(self.pending[i].segment) for i in ids]
        for segment in sorted(set(segments)):
            picked = np.asarray([s == segment for s in segments])
            self.store.insert(
                live.collection, id_arr[picked], vectors[picked], live.version, segment=segment, generation=generation
            )
        n_probe = min(len(ids), self.settings.refresh.probe_items)
        probe = self.store.probe(live.collection, id_arr[:n_probe], vectors[:n_probe], model_version=live.version)
        if not probe.ok:
            raise RuntimeError(f"fast-path rows of {live.collection} failed verification: {probe}")
        if self._before_announce is not None:
            self._before_announce()
        announced_at = time.time()
        live.generations.generation = generation
        live.generations.items.extend(ids)
        live.generations.announced_at.append(announced_at)
        live.generations.save(self.registry.root)
        live.clean = True
        fresh = [max(announced_at - self.pending[i].first_click, 0.0) for i in ids]
        if self.metrics is not None:
            self.metrics.observe_new_items(fresh)
            self.metrics.fast_path_items.inc(len(ids))
            self.metrics.live_generation.set(generation)
        report = StepReport(live.collection, live.version, generation, ids, waiting, time.perf_counter() - began, fresh)
        log.info("fast path: %s", report.as_dict())
        return report

    def _forget_known(self, live: _Live, now: float) -> None:
        """Pending items the live *version* knows (a major swap embedded them) are done."""
        if not self.pending:
            return
        items = np.fromiter(self.pending, dtype=np.int64, count=len(self.pending))
        done = items[live.vocab.rows(items) > 0].tolist()
        announced = set(live.generations.items) if done else set()
        for item in done:
            first = self.pending.pop(item).first_click
            if self.metrics is not None and item not in announced:
                self.metrics.observe_new_items([max(now - first, 0.0)])  # live through the major version

    def _vectors(self, live: _Live, candidates: list[int]) -> tuple[list[int], np.ndarray, int]:
        """Co-click mean under the live weights for each candidate with context; the rest wait."""
        maxlen = self.settings.mind.maxlen
        histories: dict[int, np.ndarray] = {}
        ids: list[int] = []
        rows: list[np.ndarray] = []
        for item in candidates:
            context: list[np.ndarray] = []
            for user in self.pending[item].clickers:
                if user not in histories:
                    histories[user] = live.vocab.rows(self.reader.history(user, maxlen))
                known = histories[user]
                context.append(known[known > 0])
            rows_of = np.concatenate(context) if context else np.zeros(0, dtype=np.int64)
            if rows_of.size:
                ids.append(item)
                rows.append(live.table[rows_of].mean(axis=0))
        dim = live.table.shape[1]
        vectors = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), dtype=np.float32)
        return ids, vectors, len(candidates) - len(ids)
