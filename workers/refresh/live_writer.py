"""Writing into the live collection: the one way rows change after an epoch's build.

A fast-path step (new items under the live version) and a delta (what a major round changed, under
its new version) are the same operation on a keyed collection (:mod:`workers.infra.row_keys`):

1. repair what a crashed write left (rows of unannounced generations deleted, rows it closed
   reopened), so nothing half-done is ever built upon;
2. insert the new rows as generation ``g + 1`` (readers at ``g`` filter them out);
3. close the rows they replace and the rows of withdrawn items (``gen_to = g + 1``: still visible at
   ``g``, not at ``g + 1``);
4. verify (the caller's check: counts, probes, quality), then announce ``(g + 1, version)``
   (:class:`~workers.refresh.generations.Generations`): readers switch at once, tower included;
5. delete the rows no reader and no rollback can see any more (closed at or before the previous
   version's last announcement).

A delta is written in two parts so that fast-path steps go on while it is under way
(:meth:`LiveWriter.stage` then :meth:`LiveWriter.commit`): staging reserves the generation
``g + FAST_PATH_SLOTS`` and writes steps 2 and 3 there without the writer's lock; fast-path steps
meanwhile announce ``g + 1``, ``g + 2``, ... below it (readers at those generations never see the
staged rows, nor miss the rows it closes). The commit takes the lock for the short rest: repair what
a failed step left (never the staged rows), close the rows fast-path steps added meanwhile for items
the delta writes too, verify, announce. Items the delta closes are left to the fast path until then.

A rollback announces the previous version's last ``(generation, version)`` (readers switch within
their alias check) and repairs down to it; one level deep (step 5 keeps what the previous version
needs, not what the one before it needed: an older state is an older epoch, reached through the
alias).

:class:`LiveWriter` serialises writes within the refresh worker (the fast path's thread and the
major rounds); callers across processes hold the publish lock. It keeps the published rows of the
live collection in memory (:class:`Published`: one row per item, as readers see them), so that a
delta compares against what is published without reading it back; a write by the fast path is kept
as an overlay, merged at the next delta.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from workers.infra.row_keys import MAX_GENERATION, OPEN
from workers.infra.vector_store import Rows, VectorStore
from workers.refresh.generations import Generations

__all__ = [
    "FAST_PATH_SLOTS",
    "ConcurrentAnnouncement",
    "DeltaUnderWay",
    "LiveWriter",
    "NoRollback",
    "Published",
    "Staged",
    "Written",
]

log = logging.getLogger(__name__)

FAST_PATH_SLOTS: Final = 1024  # generations left below a staged delta for fast-path steps while it is written


class NoRollback(RuntimeError):
    """No earlier announcement of this collection can be served again (roll back the alias instead)."""


class DeltaUnderWay(RuntimeError):
    """A fast-path write the staged delta leaves no room for (its items, or generations below it): retry
    after the delta's commit."""


class ConcurrentAnnouncement(RuntimeError):
    """Another process announced (a rollback through the gateway) while this write was under way: the
    write is abandoned unannounced, and the next one repairs what it left."""


@dataclass
class Published:
    """The rows readers see at ``generation``, one per item, sorted by item id (plus the fast path's
    writes since, in ``writes``, merged in order by :meth:`merged`)."""

    generation: int
    item_ids: np.ndarray
    vectors: np.ndarray
    segments: np.ndarray  # object (str)
    rows: Rows  # model_versions, generations and gen_to of the same rows (vectors shared)
    writes: list[tuple[np.ndarray, dict[str, Rows]]] = field(default_factory=list)  # (closed ids, added), in order

    @classmethod
    def of(cls, generation: int, by_segment: dict[str, Rows], dim: int) -> Published:
        parts = [(segment, rows) for segment, rows in by_segment.items() if len(rows)]
        if not parts:
            empty = Rows.of(np.empty(0, dtype=np.int64), np.empty((0, dim), dtype=np.float32), "", 0)
            return cls(generation, empty.item_ids, empty.vectors, np.empty(0, dtype=object), empty)
        ids = np.concatenate([rows.item_ids for _, rows in parts])
        order = np.argsort(ids, kind="stable")
        vectors = np.concatenate([rows.vectors for _, rows in parts])[order]
        segments = np.concatenate([np.full(len(rows), segment, dtype=object) for segment, rows in parts])[order]
        versions = [v for _, rows in parts for v in rows.model_versions]
        gens = np.concatenate([rows.generations for _, rows in parts])[order]
        merged = Rows(ids[order], vectors, [versions[i] for i in order.tolist()], gens, np.full(len(ids), OPEN))
        return cls(generation, merged.item_ids, vectors, segments, merged)

    def __len__(self) -> int:
        return int(self.merged().item_ids.shape[0]) if self.writes else int(self.item_ids.shape[0])

    def find(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(found, positions)`` of ``item_ids`` among the merged rows (call on a merged table)."""
        assert not self.writes, "merge first"
        positions = np.searchsorted(self.item_ids, item_ids)
        positions = np.minimum(positions, max(len(self.item_ids) - 1, 0))
        found = (self.item_ids[positions] == item_ids) if len(self.item_ids) else np.zeros(len(item_ids), bool)
        return found, positions

    def by_segment(self, positions: np.ndarray) -> dict[str, Rows]:
        """The published rows at ``positions``, grouped by segment (as they must be written back)."""
        grouped: dict[str, Rows] = {}
        for segment in sorted(set(self.segments[positions].tolist())):
            at = positions[self.segments[positions] == segment]
            grouped[segment] = self.rows[at]
        return grouped

    def frozen(self) -> Published:
        """This table as it is now (merged), unchanged by later writes (the arrays are never written in place)."""
        table = self.merged()
        return Published(table.generation, table.item_ids, table.vectors, table.segments, table.rows)

    def merged(self) -> Published:
        """One sorted table of everything published now: the writes applied in their order (a later write
        of an item replaces an earlier one, of the base or of a write); one sort, however many writes."""
        if not self.writes:
            return self
        parts: dict[str, list[Rows]] = {}
        later = np.empty(0, dtype=np.int64)  # items closed by a later write than the one at hand
        for closed, added in reversed(self.writes):
            for segment, rows in added.items():
                kept = ~np.isin(rows.item_ids, later)
                parts.setdefault(segment, []).append(rows[np.flatnonzero(kept)])
            later = np.union1d(later, closed)
        keep = ~np.isin(self.item_ids, later)
        for segment in sorted(set(self.segments[keep].tolist())):
            parts.setdefault(segment, []).append(self.rows[np.flatnonzero(keep & (self.segments == segment))])
        joined = {segment: _concat(rows) for segment, rows in parts.items()}
        return Published.of(self.generation, joined, self.vectors.shape[1])


def _concat(parts: list[Rows]) -> Rows:
    return Rows(
        np.concatenate([p.item_ids for p in parts]),
        np.concatenate([p.vectors for p in parts]),
        [v for p in parts for v in p.model_versions],
        np.concatenate([p.generations for p in parts]),
        np.concatenate([p.gen_to for p in parts]),
    )


def _at_generation(new: dict[str, Rows], generation: int) -> tuple[dict[str, Rows], np.ndarray]:
    """``new``'s non-empty parts written at ``generation`` (open), and their item ids."""
    fresh = {segment: rows.written_at(generation) for segment, rows in new.items() if len(rows)}
    ids = np.concatenate([r.item_ids for r in fresh.values()]) if fresh else np.empty(0, np.int64)
    return fresh, ids


@dataclass
class _Since:
    """The fast-path writes announced while a delta is staged: the items they added and the net row count."""

    added: dict[str, list[Rows]] = field(default_factory=dict)
    net_rows: int = 0


@dataclass(frozen=True)
class Staged:
    """A delta written under a reserved generation, not announced (:meth:`LiveWriter.commit`)."""

    collection: str
    version: str
    generation: int
    base: tuple[int, str | None]  # the announcement it was staged against
    fresh: dict[str, Rows]
    closing_ids: np.ndarray
    expected: int  # rows visible at ``generation`` if no fast-path step adds any meanwhile
    inserted: int
    closed: int


@dataclass(frozen=True)
class Written:
    """What a write announced."""

    collection: str
    generation: int
    version: str
    inserted: int
    closed: int
    announced_at: float


class LiveWriter:
    """Serialised writes into the live (keyed) collections of one alias; see the module doc."""

    def __init__(self, store: VectorStore, dim: int) -> None:
        self.store = store
        self.dim = dim
        self.lock = threading.RLock()
        self._published: dict[str, Published] = {}
        self._repaired: dict[str, int] = {}  # collection -> the generation it is known clean at
        self._uncollected: dict[str, bool] = {}  # collection -> rows were closed since the last collection
        self._staged: dict[str, tuple[int, np.ndarray]] = {}  # collection -> (reserved generation, ids it closes)
        self._since: dict[str, _Since] = {}  # collection -> fast-path writes since the delta's snapshot

    # -- reading ----------------------------------------------------------------------------

    def announced(self, collection: str) -> Generations:
        return Generations.load(self.store, collection)

    def published(self, collection: str) -> Published:
        """The rows readers see now, merged (read from Milvus when not in hand)."""
        with self.lock:
            generation = self.announced(collection).generation
            self._repair(collection, generation)
            table = self._published.get(collection)
            if table is None or table.generation != generation:
                rows = self.store.rows_where(collection, self.store.visible_at(collection, generation))
                table = Published.of(generation, rows, self.dim)
                log.info("read the %d published rows of %s at generation %d", len(table), collection, generation)
            table = table.merged()
            self._published[collection] = table
            return table

    def closing(self, collection: str) -> np.ndarray:
        """The items a staged delta of ``collection`` closes (a fast-path step leaves them until its commit)."""
        with self.lock:
            staged = self._staged.get(collection)
            return staged[1] if staged is not None else np.empty(0, dtype=np.int64)

    def seed(self, collection: str, by_segment: dict[str, Rows]) -> None:
        """What an epoch's build wrote (generation 0, nothing to repair): its first delta compares against it
        without reading the collection back."""
        with self.lock:
            self._published[collection] = Published.of(0, by_segment, self.dim)
            self._repaired[collection] = 0

    def forget(self, collection: str) -> None:
        with self.lock:
            self._published.pop(collection, None)
            self._repaired.pop(collection, None)

    # -- writing ----------------------------------------------------------------------------

    def write(
        self,
        collection: str,
        version: str,
        new: dict[str, Rows],
        withdrawn: np.ndarray | None = None,
        verify: Callable[[int], None] | None = None,
        *,
        table: Published | None = None,
        items: Sequence[int] = (),
    ) -> Written:
        """Insert ``new`` (by segment; their generations are set here), close the published rows of their
        items and of ``withdrawn``, ``verify(g + 1)``, announce ``(g + 1, version)``. ``table``: the merged
        published rows when the caller already holds them (a delta); else what is closed is read from
        Milvus (the fast path's few items); ``items``: the fast path's additions (refused while a staged delta
        closes one of them)."""
        with self.lock:
            state = self.announced(collection)
            previous = state.generation
            self._repair(collection, previous)
            generation = previous + 1
            if generation > MAX_GENERATION:
                raise RuntimeError(f"{collection}: generations exhausted; a new epoch is due")
            staged = self._staged.get(collection)
            if staged is not None and generation >= staged[0]:
                raise DeltaUnderWay(f"{collection}: every generation below the staged delta's is taken")
            if staged is not None and np.isin(np.asarray(list(items), dtype=np.int64), staged[1]).any():
                raise DeltaUnderWay(f"{collection}: the staged delta closes some of these items")
            keyed = self.store.is_keyed(collection)
            fresh, new_ids = _at_generation(new, generation)
            closing_ids = np.union1d(new_ids, withdrawn if withdrawn is not None else np.empty(0, np.int64))
            old = self._open_rows(collection, closing_ids, table) if keyed and closing_ids.size else {}
            self._repaired.pop(collection, None)  # from here until the announcement, a crash leaves work
            inserted = sum(self.store.write_rows(collection, rows, segment) for segment, rows in fresh.items())
            closed = sum(
                self.store.write_rows(collection, rows.closed(generation), segment, upsert=True)
                for segment, rows in old.items()
            )
            if verify is not None:
                verify(generation)
            now = self.announced(collection)
            if (now.generation, now.version) != (previous, state.version):
                self._repaired.pop(collection, None)
                self._published.pop(collection, None)
                raise ConcurrentAnnouncement(f"{collection}: announced {now.generation} meanwhile, not {previous}")
            at = time.time()
            state.announce(generation, version, at)
            state.save(self.store)
            self._repaired[collection] = generation
            self._remember(collection, previous, generation, fresh, closing_ids, table)
            if (since := self._since.get(collection)) is not None:
                for segment, rows in fresh.items():
                    since.added.setdefault(segment, []).append(rows)
                since.net_rows += inserted - closed
            self._collect_after(collection, state, previous, closed, keyed)
            return Written(collection, generation, version, inserted, closed, at)

    def _collect_after(self, collection: str, state: Generations, previous: int, closed: int, keyed: bool) -> None:
        """After an announcement: delete what no reader nor rollback sees any more, when rows were closed."""
        if keyed and self._uncollected.get(collection, True):
            target = state.rollback_target()
            self._collect(collection, target[0] if target is not None else previous)
        self._uncollected[collection] = closed > 0 or state.rollback_target() is None

    # -- a delta, staged then committed -----------------------------------------------------

    def snapshot(self, collection: str) -> Published:
        """The published rows, as they are now, for a delta to compare against; fast-path writes from
        here on are followed so that :meth:`commit` can reconcile them."""
        with self.lock:
            table = self.published(collection).frozen()
            self._since[collection] = _Since()
            return table

    def stage(
        self, collection: str, version: str, new: dict[str, Rows], withdrawn: np.ndarray, table: Published
    ) -> Staged:
        """Write ``new`` and close the rows of its items and of ``withdrawn`` (as published in ``table``,
        from :meth:`snapshot`) under a reserved generation; nothing is announced. Fast-path steps go on
        meanwhile (below the reserved generation, never on the items closed here)."""
        if collection not in self._since:
            raise RuntimeError(f"{collection}: stage a delta against a snapshot() of the writer")
        with self.lock:
            state = self.announced(collection)
            previous = state.generation
            self._repair(collection, previous)
            generation = previous + FAST_PATH_SLOTS
            if generation > MAX_GENERATION:
                raise RuntimeError(f"{collection}: generations exhausted; a new epoch is due")
            fresh, new_ids = _at_generation(new, generation)
            closing_ids = np.union1d(new_ids, withdrawn)
            found, positions = table.find(closing_ids)
            old = table.by_segment(positions[found])
            new_found, _ = table.find(new_ids)
            withdrawn_found, _ = table.find(np.setdiff1d(withdrawn, new_ids))
            expected = len(table) - int(withdrawn_found.sum()) + int((~new_found).sum())
            self._staged[collection] = (generation, closing_ids)
        try:
            inserted = sum(self.store.write_rows(collection, rows, segment) for segment, rows in fresh.items())
            closed = sum(
                self.store.write_rows(collection, rows.closed(generation), segment, upsert=True)
                for segment, rows in old.items()
            )
        except BaseException:
            self.abandon(collection)
            raise
        base = (previous, state.version)
        return Staged(collection, version, generation, base, fresh, closing_ids, expected, inserted, closed)

    def commit(self, staged: Staged, verify: Callable[[int, int], None] | None = None) -> Written:
        """Announce a staged delta: repair what failed steps left, close the rows fast-path steps added
        meanwhile for items the delta writes too, ``verify(generation, expected_rows)``, announce."""
        collection, generation = staged.collection, staged.generation
        with self.lock:
            try:
                state = self.announced(collection)
                previous = state.generation
                since = self._since.get(collection, _Since())
                ours = staged.base[0] <= previous < generation and state.version == staged.base[1]
                if not ours:
                    raise ConcurrentAnnouncement(
                        f"{collection}: {previous} ({state.version}) announced meanwhile, staged on {staged.base}"
                    )
                self._repair(collection, previous)
                closed = staged.closed
                overtaken = 0
                for segment, parts in since.added.items():
                    rows = _concat(parts)
                    again = rows[np.flatnonzero(np.isin(rows.item_ids, staged.closing_ids))]
                    if len(again):
                        overtaken += self.store.write_rows(collection, again.closed(generation), segment, upsert=True)
                closed += overtaken
                if verify is not None:
                    verify(generation, staged.expected + since.net_rows - overtaken)
                now = self.announced(collection)
                if (now.generation, now.version) != (previous, state.version):
                    raise ConcurrentAnnouncement(f"{collection}: announced {now.generation} meanwhile, not {previous}")
                at = time.time()
                state.announce(generation, staged.version, at)
                state.save(self.store)
            except BaseException:
                self._abandon(collection)
                raise
            self._staged.pop(collection, None)
            self._since.pop(collection, None)
            self._repaired[collection] = generation
            self._remember(collection, previous, generation, staged.fresh, staged.closing_ids, None)
            self._collect_after(collection, state, previous, closed, True)
            return Written(collection, generation, staged.version, staged.inserted, closed, at)

    def abandon(self, collection: str) -> None:
        """Give up a staged delta: the next write deletes its rows and reopens what it closed."""
        with self.lock:
            self._abandon(collection)

    def _abandon(self, collection: str) -> None:
        self._staged.pop(collection, None)
        self._since.pop(collection, None)
        self._repaired.pop(collection, None)
        self._published.pop(collection, None)

    def _open_rows(self, collection: str, item_ids: np.ndarray, table: Published | None) -> dict[str, Rows]:
        """The currently published rows of ``item_ids`` (those that have one), by segment."""
        if table is not None:
            found, positions = table.find(item_ids)
            return table.by_segment(positions[found])
        rows: dict[str, Rows] = {}
        for start in range(0, len(item_ids), 1000):
            chunk = item_ids[start : start + 1000].tolist()
            where = f"item_id in {chunk} and gen_to == {OPEN}"
            for segment, part in self.store.rows_where(collection, where).items():
                rows[segment] = _concat([rows[segment], part]) if segment in rows else part
        return rows

    def _remember(
        self,
        collection: str,
        previous: int,
        generation: int,
        fresh: dict[str, Rows],
        closing_ids: np.ndarray,
        table: Published | None,
    ) -> None:
        """Keep the in-memory published rows in step with what was announced."""
        held = table if table is not None else self._published.get(collection)
        if held is None or held.generation != previous:
            self._published.pop(collection, None)
            return
        held.generation = generation
        held.writes.append((closing_ids, fresh))
        self._published[collection] = held

    def _collect(self, collection: str, previous: int) -> None:
        """Delete the rows nobody can see at the announced generation nor at ``previous`` (the rollback
        target: the previous version's last announcement): those closed at or before ``previous``."""
        try:
            self.store.delete_where(collection, f"gen_to <= {int(previous)}")
        except Exception as exc:  # garbage stays until the next write; nothing reads it
            log.warning("could not delete the superseded rows of %s: %s", collection, exc)

    def _repair(self, collection: str, generation: int) -> None:
        """Undo what writes after ``generation`` left: their rows deleted, the rows they closed reopened."""
        if self._repaired.get(collection) == generation:
            return
        staged = self._staged.get(collection)
        if staged is None:
            self.store.delete_generations_above(collection, generation)
        else:  # this process' staged delta is work under way, not a crash's leftovers
            self.store.delete_where(collection, f"generation > {int(generation)} and generation != {staged[0]}")
        if not self.store.is_keyed(collection):
            self._repaired[collection] = generation
            return
        reopened = 0
        closed_by_others = f"gen_to > {generation} and gen_to < {OPEN}"
        if staged is not None:
            closed_by_others += f" and gen_to != {staged[0]}"
        for segment, rows in self.store.rows_where(collection, closed_by_others).items():
            reopened += self.store.write_rows(collection, rows.closed(OPEN), segment, upsert=True)
        if reopened:
            log.warning("%s: %d rows closed by an unannounced write reopened", collection, reopened)
        self._repaired[collection] = generation

    # -- rollback ---------------------------------------------------------------------------

    def rollback(self, collection: str) -> tuple[tuple[int, str | None], tuple[int, str | None]]:
        """Announce the previous ``(generation, version)`` of ``collection`` again; returns (target, was)."""
        with self.lock:
            state = self.announced(collection)
            target = state.rollback_target()
            if target is None:
                raise NoRollback(f"{collection}: no earlier version announced here to serve again")
            was = (state.generation, state.version)
            generation, version = target
            state.generation, state.version = generation, version
            state.history = [(generation, version)]  # one level: the next write collects what a second needs
            state.announced_at = [time.time()]
            state.save(self.store)
            self._published.pop(collection, None)
            self._repaired.pop(collection, None)
            self._repair(collection, generation)
            log.warning("%s: rolled back to generation %d (%s) from %s", collection, generation, version, was)
            return (generation, version), was
