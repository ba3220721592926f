"""Items by name for ``/ui``: titles and genres (categories) by external item id, and a title search.

Built from the data set's :class:`model.data.items.ItemCatalogue` (``settings.data.item_catalogue()``:
ML-100K's ``ml-100k.item``, or your own item file), read once when the gateway starts. A data set
without one gives an empty catalogue: the page then shows items by id. Items born in the stream
(fresh ids) have no title either.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from model.data.items import ItemCatalogue
from workers.settings import Settings

__all__ = ["Catalogue", "ItemInfo", "catalogue_of"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemInfo:
    title: str | None
    genres: tuple[str, ...] = ()


class Catalogue:
    """External item id -> :class:`ItemInfo`; :meth:`search` by id or by the words of a title."""

    def __init__(self, entries: Mapping[int, ItemInfo] | None = None, name: str = "") -> None:
        self.entries: dict[int, ItemInfo] = dict(entries or {})
        self.name = name
        self._folded = {item_id: (info.title or "").casefold() for item_id, info in self.entries.items()}

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
