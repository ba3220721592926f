"""What a recall process (``mindstream recall``, the gateway) follows beside the live model (issue 32):
the catalogue (availability and metadata) and the popular items of the click stream, each kept
current by a :class:`~workers.catalogue.follow.Follower` thread of its own, so a request never waits
on SQLite.

* :class:`~workers.catalogue.view.CatalogueView` over the catalogue state, read every
  ``catalogue.poll_s`` (with the catalogue worker's ``batch_timeout_s``: how long a withdrawal takes
  to reach every recall);
* :class:`~workers.recall.popular.PopularItems` (``recall.popular_half_life_s``,
  ``recall.popular_capacity``) fed from the ingest state every ``recall.popular_refresh_s``
  (:class:`~workers.recall.popular.PopularFeed`, its own state reader: the engine's history reads
  never wait on it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from workers.catalogue.follow import Follower
from workers.catalogue.reader import CatalogueReader
from workers.catalogue.view import CatalogueView
from workers.ingest.history_store import open_reader
from workers.recall.popular import PopularFeed, PopularItems
from workers.settings import Settings

__all__ = ["ServingState", "follow_serving_state"]


@dataclass(frozen=True)
class ServingState:
    view: CatalogueView
    popular: PopularItems
    followers: tuple[Follower, Follower]  # the catalogue's, the popular counts'


def follow_serving_state(settings: Settings, stack: contextlib.ExitStack) -> ServingState:
    """The catalogue view (read once before returning: served from the first request) and the popular
    counts, each followed by a thread; both threads stop and their readers close with ``stack``."""
    reader = stack.enter_context(CatalogueReader(settings.state_dir, settings.kafka.items_topic))
    view = CatalogueView(reader)
    view.refresh()
    catalogue = stack.enter_context(Follower(view.step, settings.catalogue.poll_s, "catalogue-view"))
    recall = settings.recall
    popular = PopularItems(recall.popular_half_life_s, recall.popular_capacity)
    clicks = stack.enter_context(open_reader(settings.state, settings.state_dir, settings.kafka.clicks_topic))
    feed = PopularFeed(popular, clicks, recall.popular_max_events)
    counts = stack.enter_context(Follower(feed.step, recall.popular_refresh_s, "popular-feed"))
    return ServingState(view, popular, (catalogue, counts))
