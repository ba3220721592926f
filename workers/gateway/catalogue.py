"""Items by name for ``/ui``: titles and genres (categories) by external item id, and a title search.

Built from the data set's :class:`model.data.items.ItemCatalogue` (``settings.data.item_catalogue()``:
ML-100K's ``ml-100k.item``, or your own item file), read once when the gateway starts. A data set
without one gives an empty catalogue: the page then shows items by id. Items born in the stream
(fresh ids) have no title either, unless the items topic announced them: with a
:class:`StreamedItems` (the gateway follows the catalogue state), an item's title and categories
are the stream's where it gave them, and every item says whether it is available.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from model.data.items import ItemCatalogue
from workers.catalogue.reader import CatalogueReader
from workers.catalogue.store import ItemRecord
from workers.catalogue.view import CatalogueView
from workers.settings import Settings

__all__ = ["Catalogue", "ItemInfo", "StreamedItems", "catalogue_of"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemInfo:
    title: str | None
    genres: tuple[str, ...] = ()
    available: bool | None = None  # None: no items topic followed (every item is available then)


class StreamedItems:
    """The items topic's side of the page: availability from the recall engine's view (what recall
    serves), titles and categories from the catalogue state (read per request, for a few ids)."""

    def __init__(self, view: CatalogueView, reader: CatalogueReader) -> None:
        self.view = view
        self.reader = reader
        self._lock = threading.Lock()  # one reader, several threadpool workers

    def records(self, item_ids: Iterable[int]) -> dict[int, ItemRecord]:
        with self._lock:
            return self.reader.metadata(item_ids)


class Catalogue:
    """External item id -> :class:`ItemInfo`; :meth:`search` by id or by the words of a title."""

    def __init__(
        self, entries: Mapping[int, ItemInfo] | None = None, name: str = "", stream: StreamedItems | None = None
    ) -> None:
        self.entries: dict[int, ItemInfo] = dict(entries or {})
        self.name = name
        self.stream = stream
        self._folded = {item_id: (info.title or "").casefold() for item_id, info in self.entries.items()}

    def with_stream(self, stream: StreamedItems | None) -> Catalogue:
        """The same entries, completed by ``stream``."""
        out = Catalogue(name=self.name, stream=stream)
        out.entries, out._folded = self.entries, self._folded
        return out

    def describe(self, item_ids: list[int]) -> list[ItemInfo | None]:
        """Each item's info: the data set's, with the stream's title and categories where it gave them,
        and its availability when a stream is followed (None: nothing known)."""
        if self.stream is None:
            return [self.entries.get(item_id) for item_id in item_ids]
        records = self.stream.records(item_ids)
        out: list[ItemInfo | None] = []
        for item_id in item_ids:
            info = self.entries.get(item_id) or ItemInfo(None)
            record = records.get(item_id)
            if record is not None:
                info = replace(info, title=record.title or info.title, genres=record.categories or info.genres)
            out.append(replace(info, available=self.stream.view.is_available(item_id)))
        return out

    @classmethod
    def from_items(cls, items: ItemCatalogue | None, name: str = "") -> Catalogue:
        if items is None:
            return cls(name=name)
        entries = {
            int(item_id): ItemInfo(items.title_of(int(item_id)) or None, items.categories_of(int(item_id)))
            for item_id in items.ids.tolist()
        }
        return cls(entries, name)

    def get(self, item_id: int) -> ItemInfo | None:
        return self.entries.get(item_id)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def titles(self) -> int:
        """How many items have a title."""
        return sum(1 for info in self.entries.values() if info.title)

    def search(self, query: str, limit: int = 20) -> list[int]:
        """Ids: the one equal to ``query``, then those whose title holds every word of it (case-insensitive)."""
        query = query.strip()
        if not query or limit <= 0:
            return []
        found: list[int] = []
        if query.isdigit() and int(query) in self.entries:
            found.append(int(query))
        words = query.casefold().split()
        for item_id, title in self._folded.items():
            if len(found) >= limit:
                break
            if title and all(w in title for w in words) and item_id not in found:
                found.append(item_id)
        return found


def catalogue_of(settings: Settings) -> Catalogue:
    """The configured data set's catalogue; an empty one when it has none or it cannot be read."""
    name = settings.data.name
    try:
        return Catalogue.from_items(settings.data.item_catalogue(), name)
    except (OSError, ValueError) as exc:
        log.warning("no item titles for %s: %s", name, exc)
        return Catalogue(name=name)
