"""Where a recall reply may go and how large it may be: the ``reply_to`` policy and the size checks.

A request names its reply topic in the ``reply_to`` header and its ``correlation_id``, which the reply
echoes. Both come from whoever can write to the requests topic, so both are bounded here:

* ``reply_to`` must be a whole Kafka topic name (``fullmatch``, so no trailing newline slips through)
  allowed by :class:`ReplyPolicy`: by default the shared replies topic and ``<replies topic>.<suffix>``
  (the private topics :class:`~workers.recall.client.RecallClient` creates), never an internal topic
  (``__*``) nor one of the stack's own topics (clicks, dead letters, requests). A refused request is
  answered ``bad_request`` on the default replies topic.
* The topic must exist (:class:`KnownTopics`): a worker never creates topics by producing to them (on a
  broker with ``auto.create.topics.enable`` every bogus name would become a topic), and on a cluster
  without auto-creation a reply to a missing topic would stall its whole batch for
  ``message.timeout.ms``. A request to a missing topic is answered on the default replies topic.
* ``correlation_id`` is echoed only up to ``recall.max_correlation_id_bytes``; a longer one is refused.
* A reply is produced only when its record fits in ``kafka.max_message_bytes``;
  one that does not is replaced by a ``too_large`` error reply naming the limit
  (:func:`workers.infra.kafka.record_bytes`).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["KnownTopics", "ReplyPolicy"]

log = logging.getLogger(__name__)

_TOPIC_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")


@dataclass(frozen=True)
class ReplyPolicy:
    """Which ``reply_to`` names are accepted: ``allowed`` entries are exact names, or prefixes when they
    end in ``.`` (the prefix must then be followed by at least one character); ``forbidden`` names and
    every ``__``-prefixed (internal) topic are refused whatever ``allowed`` says."""

    default_topic: str
    allowed: tuple[str, ...]
    forbidden: frozenset[str]
    max_correlation_id_bytes: int

    @classmethod
    def for_stack(
        cls,
        replies_topic: str,
        own_topics: Iterable[str],
        allowed: Sequence[str] | None,
        max_correlation_id_bytes: int,
    ) -> ReplyPolicy:
        """``allowed`` None: the replies topic and ``<replies topic>.<suffix>``."""
        names = tuple(allowed) if allowed is not None else (replies_topic, f"{replies_topic}.")
        forbidden = frozenset(own_topics) - {replies_topic}
        return cls(replies_topic, names, forbidden, max_correlation_id_bytes)

    def refusal(self, reply_to: str) -> str | None:
        """Why ``reply_to`` is refused, or None when replies may go there."""
        if not _TOPIC_NAME.fullmatch(reply_to):
            return "invalid reply_to header: not a Kafka topic name"
        if reply_to.startswith("__") or reply_to in self.forbidden:
            return f"reply_to {reply_to!r} refused: an internal or stack topic"
        for entry in self.allowed:
            prefix = entry.endswith(".")
            if (reply_to.startswith(entry) and len(reply_to) > len(entry)) if prefix else reply_to == entry:
                return None
        return f"reply_to {reply_to!r} refused: not allowed by recall.reply_to_allowed"

    def correlation_refusal(self, correlation_id: str) -> str | None:
        """Why a ``correlation_id`` is not echoed, or None."""
        size = len(correlation_id.encode("utf-8"))
        if size > self.max_correlation_id_bytes:
            return (
                f"correlation_id header of {size} bytes exceeds recall.max_correlation_id_bytes "
                f"{self.max_correlation_id_bytes}; not echoed"
            )
        return None


class KnownTopics:
    """The cluster's topic names, listed again only when a name is unknown and the last listing started
    before the batch that named it was consumed (a client creates its reply topic before it sends, so a
    listing started after the request arrived sees it): a flood of bogus names costs at most one
    metadata request per batch, a legitimate new client at most one listing.

    ``list_topics`` raising (no broker answers) keeps the last listing and trusts the names asked about:
    the produce path then decides, as it would without this check.
    """

    def __init__(self, list_topics: Callable[[], Iterable[str]], clock: Callable[[], float] = time.monotonic) -> None:
        self._list_topics = list_topics
        self._clock = clock
        self._known: frozenset[str] = frozenset()
        self._listed_at = -math.inf

    def missing(self, names: Iterable[str], received_at: float) -> set[str]:
        """Those of ``names`` the cluster does not have; ``received_at``: when (``clock``) the batch naming
        them was consumed."""
        unknown = set(names) - self._known
        if unknown and self._listed_at < received_at:
            started = self._clock()
            try:
                self._known = frozenset(self._list_topics())
            except Exception as exc:  # a broker away must not refuse replies: produce decides
                log.warning("could not list topics (%s); reply topics not checked", exc)
                return set()
            self._listed_at = started
            unknown -= self._known
        return unknown
