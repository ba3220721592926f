"""What a recall process holds of the catalogue: availability, segment and categories per item, kept
current by polling the catalogue state's change feed (:meth:`CatalogueReader.changed_since`).

:meth:`CatalogueView.refresh` reads what changed since the last call (at most ``batch`` records per
read, every read until caught up); :class:`~workers.catalogue.follow.Follower` calls it every
``catalogue.poll_s`` on a thread of its own, so a request never waits on SQLite. Readers take
:attr:`CatalogueView.unavailable`, an immutable snapshot replaced (not mutated) on each change, and
:attr:`CatalogueView.version`, which moves whenever anything changed (to rebuild what depends on it).

Memory follows the number of items: one small tuple per item (ts, availability, segment, categories),
segments and category tuples shared between items. Titles stay on disk (:meth:`CatalogueReader.metadata`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from typing import Final, NamedTuple, TypeVar, cast

from model.data.items import ItemCatalogue
from schemas.messages import RecallFilters
from workers.catalogue.reader import CatalogueReader, Cursor
from workers.catalogue.store import ItemRecord

__all__ = ["CatalogueView", "ItemState"]

DEFAULT_BATCH: Final = 50_000
_Shared = TypeVar("_Shared", str | None, tuple[str, ...])


class ItemState(NamedTuple):
    ts: int
    available: bool
    segment: str | None
    categories: tuple[str, ...]


class CatalogueView:
    """Availability and filter metadata by item id; ``refresh()`` from one thread, read from any."""

    def __init__(self, reader: CatalogueReader, batch: int = DEFAULT_BATCH) -> None:
        self.reader = reader
        self.batch = batch
        self.version = 0
        self._cursor = Cursor()
        self._items: dict[int, ItemState] = {}
        self._unavailable: frozenset[int] = frozenset()
        self._shared: dict[object, object] = {}  # one copy of each segment name and category tuple
        self._catalogue: tuple[int, ItemCatalogue | None, ItemCatalogue] | None = None
        self._lock = threading.Lock()  # refresh() against item_catalogue()'s read of every item

    # -- following ------------------------------------------------------------------------------

    def refresh(self) -> int:
        """Apply every change since the last call; returns how many records were read."""
        read = 0
        changed: list[ItemRecord] = []
        while True:
            records, cursor = self.reader.changed_since(self._cursor, self.batch)
            self._cursor = cursor
            read += len(records)
            changed.extend(records)
            if len(records) < self.batch:
                break
        if changed:
            self._apply(changed)
        return read

    def step(self) -> bool:
        """:meth:`refresh` for a :class:`~workers.catalogue.follow.Follower` (it reads until caught up:
        nothing is left waiting)."""
        self.refresh()
        return False

    def _apply(self, records: list[ItemRecord]) -> None:
        gone = set(self._unavailable)
        with self._lock:
            for record in records:
                known = self._items.get(record.item_id)
                if known is not None and record.ts < known.ts:  # an older row of another partition file
                    continue
                self._items[record.item_id] = ItemState(
                    record.ts, record.available, self._one(record.segment), self._one(record.categories)
                )
                if record.available:
                    gone.discard(record.item_id)
                else:
                    gone.add(record.item_id)
            self._unavailable = frozenset(gone)
            self.version += 1

    def _one(self, value: _Shared) -> _Shared:
        if value is None or value == ():
            return value
        return cast(_Shared, self._shared.setdefault(value, value))

    # -- reading --------------------------------------------------------------------------------

    @property
    def unavailable(self) -> frozenset[int]:
        """Items never to be recalled (withdrawn or deleted), as of the last refresh."""
        return self._unavailable

    def __len__(self) -> int:
        return len(self._items)

    def get(self, item_id: int) -> ItemState | None:
        return self._items.get(item_id)

    def is_available(self, item_id: int) -> bool:
        """True unless the catalogue says the item is withdrawn (an item it never heard of is available:
        items exist through clicks)."""
        return item_id not in self._unavailable

    def admits(self, item_id: int, filters: RecallFilters | None = None) -> bool:
        """Available and passing ``filters`` (segment and categories from the catalogue)."""
        if item_id in self._unavailable:
            return False
        if filters is None:
            return True
        state = self._items.get(item_id)
        segment, categories = (state.segment, state.categories) if state is not None else (None, ())
        return filters.admits(segment, categories, item_id)

    def predicate(self, filters: RecallFilters | None, exclude: Collection[int] = ()) -> Callable[[int], bool]:
        """``allowed(item_id)`` for :meth:`workers.recall.popular.PopularItems.top`: :meth:`admits`, and
        not in ``exclude`` (a user's history with ``exclude_seen``)."""
        return lambda item_id: item_id not in exclude and self.admits(item_id, filters)

    def item_catalogue(self, base: ItemCatalogue | None = None) -> ItemCatalogue:
        """Categories (and titles of ``base``) by item id for the ``diversity`` merge: ``base`` (the data
        set's file) with every item the stream announced with categories replaced by the stream's.
        Rebuilt when the view or ``base`` changed since the last call (O(items))."""
        cached = self._catalogue
        if cached is not None and cached[0] == self.version and cached[1] is base:
            return cached[2]
        categories: dict[int, Collection[str]] = {}
        if base is not None:
            for n, item_id in enumerate(base.ids.tolist()):
                codes = base.codes[int(base.offsets[n]) : int(base.offsets[n + 1])]
                categories[item_id] = [base.names[int(c)] for c in codes]
        with self._lock:
            version = self.version
            categories.update((i, s.categories) for i, s in self._items.items() if s.categories)
        titles = None
        if base is not None and base.titles is not None:
            titles = {int(i): t for i, t in zip(base.ids.tolist(), base.titles, strict=True)}
        built = ItemCatalogue.from_mapping(categories, titles)
        self._catalogue = (version, base, built)
        return built
