"""What one recall may cost, and how a micro-batch is cut into Milvus searches (issue 29: a valid but
hostile request is load, never an outage).

* The cost of a request is ``users x top_k``: the items its reply carries (and what its users' searches
  and merge cost). Above ``recall.max_request_cost`` it is refused ``too_large`` before any work.
* With ``diversity > 0`` its greedy merge costs ``~K x top_k^2`` per user (``top_k`` picks, each over
  ``K x top_k`` candidates): quadratic in ``top_k``, which a factor on ``users x top_k`` would not
  follow, so such a request also has a lower ``top_k`` cap, ``recall.max_diverse_top_k``.
* One Milvus search covers ``sum of users x the largest top_k`` (every user of a search is searched
  with the search's ``limit``): that is the cost of a batch. :meth:`Budget.split` cuts a micro-batch,
  in order, into consecutive sub-batches of at most ``recall.max_batch_cost``; a request that alone
  exceeds it is searched alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from schemas.messages import RecallRequest
from workers.settings import RecallSettings

__all__ = ["Budget"]


@dataclass(frozen=True, slots=True)
class Budget:
    """The limits of ``recall.max_request_cost``, ``max_diverse_top_k`` and ``max_batch_cost``."""

    max_request_cost: int
    max_diverse_top_k: int
    max_batch_cost: int

    @classmethod
    def from_settings(cls, recall: RecallSettings | None = None) -> Budget:
        """From ``recall`` (default: the settings' defaults)."""
        recall = RecallSettings() if recall is None else recall
        return cls(recall.max_request_cost, recall.max_diverse_top_k, recall.max_batch_cost)

    @staticmethod
    def cost(request: RecallRequest) -> int:
        """``users x top_k``: the items a reply to ``request`` carries at most."""
        return request.n_users * request.top_k

    def refusal(self, request: RecallRequest) -> str | None:
        """Why ``request`` is too large to serve (the reason names the limit and its setting), or None."""
        if (request.diversity or 0.0) > 0 and request.top_k > self.max_diverse_top_k:
            return f"top_k {request.top_k} with diversity > 0 exceeds recall.max_diverse_top_k {self.max_diverse_top_k}"
        cost = self.cost(request)
        if cost > self.max_request_cost:
            return f"cost {cost} (users x top_k) exceeds recall.max_request_cost {self.max_request_cost}"
        return None

    def split(self, shapes: Sequence[tuple[int, int]]) -> list[range]:
        """Consecutive sub-batches (index ranges into ``shapes``, in order, covering all of it) of requests
        given as ``(users, top_k)``, each searched as ``sum(users) x max(top_k) <= max_batch_cost``;
        a request over that alone forms a sub-batch of its own."""
        batches: list[range] = []
        start, users, top_k = 0, 0, 0
        for index, (n, k) in enumerate(shapes):
            if index > start and (users + n) * max(top_k, k) > self.max_batch_cost:
                batches.append(range(start, index))
                start, users, top_k = index, 0, 0
            users, top_k = users + n, max(top_k, k)
        if start < len(shapes):
            batches.append(range(start, len(shapes)))
        return batches
