"""Recall logic without Kafka: a micro-batch of requests -> Milvus searches -> one reply per request.

Per ``answer()`` call: the live model is read ONCE (``live.current()``), so every reply of the call
names the same ``model_version``, ``generation`` and ``collection``, all of its users were embedded by
that version's tower, and every search saw exactly the rows of that version up to that generation.
The call's requests are cut, in order, into sub-batches by cost (:class:`~workers.recall.budget.Budget`,
``recall.max_batch_cost``; usually one): each is ONE search of all its users (``nq = K x users``,
``top_k`` = its largest), all on that same model. Each user's ``K`` lists are then merged with its own
request's ``top_k``. Merging the top-``N`` lists down to ``n <= N`` gives exactly what a search with
``top_k = n`` would have given, so a reply does not depend on the requests it shared a search with.

Choices:

* ``hist_item`` is used as given (the tower keeps the last ``maxlen`` clicks and ignores ids it does
  not know); ``user_ids`` are resolved through a :class:`HistorySource`.
* A user with no usable history (unknown user, or only unknown items) gets an **empty list**, not an
  error: it is a valid question with no personalised answer; with ``fallback: "popular"`` it gets the
  items most clicked in the recent window instead (:class:`~workers.recall.popular.PopularItems`,
  available, passing the filters, without its exclusions), and the reply's ``source`` says, per
  user, which answered (present only when the request asked for a fallback).
* **What a recall may return** (issue 32; :mod:`workers.recall.item_filters`): never an item the
  catalogue withdrew (:attr:`CatalogueView.unavailable`, read once per ``answer()`` call: every
  reply of the call sees the same set), only items passing the request's ``filters``, and, with
  ``exclude_seen``, none of the user's history (``user_ids``: the history recall reads; ``hist_item``:
  the whole given sequence) nor ``exclude_items``. Segment and category filters (and the withdrawn
  items up to ``recall.unavailable_in_search``) are applied inside the Milvus search; requests whose
  filters differ are searched apart. Exclusions are per user, so they are left out after the search,
  and each interest's search asks for as many more candidates: ``top_k`` items remain whenever the
  catalogue has them. The budget counts a request at that larger ``top_k``.
* An :class:`ErrorReply` is only for requests that cannot be served: ``user_ids`` without a history
  source or a failing one (``bad_request`` / ``internal``), over the budget (``too_large``, before any
  work: ``users x top_k`` over ``recall.max_request_cost``, or ``top_k`` over
  ``recall.max_diverse_top_k`` with ``diversity``), past its deadline (``timeout``), no live model or
  Milvus down (``unavailable``), anything else (``internal``).
* **Deadlines** (``answer(..., deadlines=[epoch ms or None per request])``, the Kafka header
  ``deadline_ms``): checked before each sub-batch is searched and before each request's merge; a
  request past its deadline gets ``timeout`` and no further work.
* **Milvus circuit breaker** (:class:`~workers.recall.breaker.CircuitBreaker`): a search failing with
  a transient error opens it for ``recall.breaker_open_s``; meanwhile every request is answered
  ``unavailable`` at once, without a search (nor a tower pass); then one trial search, whose success
  closes it. After a transient failure the alias is not re-resolved (that would wait on the same
  Milvus); the alias watcher follows it.
* If a search fails otherwise, the alias is re-resolved at once (``current(force=True)``); when it now
  points elsewhere (a swap dropped the collection we held), the whole call (every sub-batch, those
  already answered too) is recomputed once on the new model. Otherwise the sub-batch's requests get
  the error and the next sub-batches are still searched.
* ``diversity`` (lambda > 0) replaces a request's merge by score with ComiRec's greedy selection
  (:mod:`model.diversity`, row by row: no ``[n, n]`` matrix) over its users' ``K x top_k`` candidates
  (each interest's list cut to the request's own ``top_k`` first, so the reply does not depend on the
  batch it shared): similarities by the catalogue's categories where both items have them, by the
  served version's item vectors otherwise. Absent or 0 takes the plain merge, unchanged. Scores in
  such a reply are the items' search scores, in pick order (no longer sorted).
* An interest that is all zero (beyond a user's dynamic interest count) retrieves nothing.
* ``took_ms`` of a reply: from ``started`` until that reply was built.

Stage timing: ``answer(..., stages=StageTimes())`` fills in the seconds the call spent reading
histories, in the tower, in the Milvus searches and merging (:class:`StageTimes`, summed over the
sub-batches; ``perf_counter`` pairs only, replies unchanged). The callers put them into
``mindstream_recall_stage_seconds``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

import numpy as np

from model.data.items import ItemCatalogue
from model.diversity import ItemFeatures, Similarity, greedy_select, merge_candidates
from schemas.messages import ErrorCode, ErrorReply, RecallFilters, RecallReply, RecallRequest, RecallSource
from workers.catalogue.view import CatalogueView
from workers.infra.vector_store import MAX_TOP_K, PAD_ID, SearchResult, is_transient
from workers.recall.breaker import CircuitBreaker, CircuitOpen
from workers.recall.budget import Budget
from workers.recall.item_filters import (
    Filtering,
    ViewCategories,
    availability_expression,
    filter_expression,
    has_metadata_conditions,
    join,
)
from workers.recall.popular import PopularItems

__all__ = ["HistorySource", "RecallEngine", "Reply", "StageTimes", "merge_scored"]

log = logging.getLogger(__name__)

Reply = RecallReply | ErrorReply
_EMPTY: Final = np.empty(0, dtype=np.int64)


class HistorySource(Protocol):
    def history(self, user_id: int, maxlen: int) -> list[int]: ...


class Tower(Protocol):
    @property
    def maxlen(self) -> int: ...

    def interests(self, histories: Sequence[Sequence[int]]) -> np.ndarray: ...


class CategoryMatrix(Protocol):
    """Multi-hot categories by external item id (:class:`ItemCatalogue`, :class:`ViewCategories`)."""

    def matrix(self, item_ids: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class VectorTower(Protocol):
    """A tower that can also give item vectors by external id (:class:`model.serving.ServingTower`)."""

    def item_vectors(self, item_ids: np.ndarray) -> np.ndarray: ...


class ServedModel(Protocol):
    @property
    def version(self) -> str: ...
    @property
    def collection(self) -> str: ...
    @property
    def tower(self) -> Tower: ...
    @property
    def generation(self) -> int: ...
    @property
    def max_generation(self) -> int | None: ...


class Live(Protocol):
    def current(self, *, force: bool = False) -> ServedModel | None: ...


class Searcher(Protocol):
    def search(
        self,
        name_or_alias: str,
        queries: np.ndarray,
        top_k: int,
        *,
        with_versions: bool = ...,
        max_generation: int | None = ...,
    ) -> SearchResult: ...


@runtime_checkable
class FilteringSearcher(Protocol):
    """A store that can filter inside a search (:class:`~workers.infra.vector_store.VectorStore`)."""

    def search(
        self,
        name_or_alias: str,
        queries: np.ndarray,
        top_k: int,
        *,
        with_versions: bool = ...,
        max_generation: int | None = ...,
        filter: str | None = ...,
    ) -> SearchResult: ...

    def has_metadata(self, name: str) -> bool: ...


def merge_scored(ids: np.ndarray, scores: np.ndarray, top_n: int) -> tuple[list[int], list[float]]:
    """One user's ``K x n`` candidates -> best ``top_n`` unique ids (id 0 dropped) with their best score.

    Same order as ``model.metrics.merge_interests`` (stable sort by score, first occurrence kept),
    plus the scores. Higher scores are better: negate L2 distances before calling.
    """
    flat_ids, flat_scores = ids.reshape(-1), scores.reshape(-1)
    order = np.argsort(-flat_scores, kind="stable")
    ranked_ids, ranked_scores = flat_ids[order], flat_scores[order]
    _, first = np.unique(ranked_ids, return_index=True)
    keep = np.sort(first)
    keep = keep[ranked_ids[keep] != PAD_ID][:top_n]
    return ranked_ids[keep].tolist(), ranked_scores[keep].astype(float).tolist()


@dataclass(slots=True)
class StageTimes:
    """Seconds one micro-batch spent in the engine's stages; ``None``: the stage did not run.

    * ``history``: the history reads of its ``user_ids`` requests, summed (``None`` when none read any);
    * ``tower``: the user tower pass (``served.tower.interests``) over all users of the batch;
    * ``search``: the Milvus search round trip (a failed search included);
    * ``merge``: from the search's return (the tower's, when no user had an interest to search) until
      the batch's replies are built: dedupe by score, the diversity merge where asked, reply objects.

    A batch recomputed after the alias moved (see the module doc) adds both passes.
    """

    history: float | None = None
    tower: float | None = None
    search: float | None = None
    merge: float | None = None

    def measured(self) -> list[tuple[str, float]]:
        """``(stage, seconds)`` of the stages that ran, in pipeline order."""
        stages = (("history", self.history), ("tower", self.tower), ("search", self.search), ("merge", self.merge))
        return [(name, seconds) for name, seconds in stages if seconds is not None]


def _plus(total: float | None, seconds: float) -> float:
    return seconds if total is None else total + seconds


class _RequestError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.reply = ErrorReply(code=code, message=message)


class _SearchFailed(Exception):
    """The Milvus search failed with ``cause``; ``opened``: that failure opened the circuit."""

    def __init__(self, cause: Exception, opened: bool) -> None:
        super().__init__(str(cause))
        self.cause, self.opened = cause, opened


class _AliasMoved(Exception):
    """A search failed and the alias now points at ``served``: recompute the whole call on it."""

    def __init__(self, served: ServedModel) -> None:
        super().__init__(served.collection)
        self.served = served


@dataclass(frozen=True, slots=True)
class _Candidates:
    """A sub-batch's searches: user ``u``'s ``K`` lists are ``lists[u] = (ids [K, n], scores [K, n])``
    (signed: higher is better); ``None``: not searched (no usable history). ``returned``: the
    ``perf_counter()`` at which the last search (or the tower, when nobody was searched) returned."""

    lists: list[tuple[np.ndarray, np.ndarray] | None]
    returned: float


@dataclass(frozen=True, slots=True)
class _Availability:
    """The withdrawn items as one ``answer()`` call sees them: named in the search ``expression``, or,
    past ``recall.unavailable_in_search``, left out ``after`` the search (sorted ids) with ``overfetch``
    more candidates per interest."""

    unavailable: frozenset[int]
    expression: str
    after: np.ndarray
    overfetch: int


_NOTHING_WITHDRAWN: Final = _Availability(frozenset(), "", _EMPTY, 0)


@dataclass(frozen=True, slots=True)
class _UserPlan:
    """How one user is searched: the search's filter ``expression`` (users with the same one share a
    search), what is left out after it (``excluded`` ids; ``admit``: the filters checked item by item,
    on a collection without the metadata fields) and the candidates each interest asks for."""

    expression: str
    excluded: np.ndarray
    admit: Callable[[int], bool] | None
    limit: int


def _contains(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``ids`` (any shape) that are in ``sorted_ids`` (ascending)."""
    if sorted_ids.size == 0:
        return np.zeros(ids.shape, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.size - 1)
    return np.asarray(sorted_ids[at] == ids)


def _kept(ids: np.ndarray, scores: np.ndarray, keep: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each interest's first ``n`` candidates that ``keep`` admits, in order (padded)."""
    if keep.all():
        return ids[:, :n], scores[:, :n]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :n]
    kept = np.take_along_axis(keep, order, axis=1)
    ids = np.where(kept, np.take_along_axis(ids, order, axis=1), PAD_ID)
    scores = np.where(kept, np.take_along_axis(scores, order, axis=1), -np.inf)
    return ids, scores


class RecallEngine:
    """``answer(requests) -> replies`` (same order, same length); thread-compatible, not thread-safe."""

    def __init__(
        self,
        live: Live,
        store: Searcher,
        history: HistorySource | None = None,
        *,
        higher_is_better: bool = True,
        categories: ItemCatalogue | None = None,
        budget: Budget | None = None,
        breaker: CircuitBreaker | None = None,
        wall_clock: Callable[[], float] = time.time,
        view: CatalogueView | None = None,
        popular: PopularItems | None = None,
        filtering: Filtering | None = None,
    ) -> None:
        """``budget``, ``breaker`` and ``filtering`` default to the ``recall.*`` settings' defaults: pass
        ``Budget.from_settings(settings.recall)``, ``CircuitBreaker.from_settings(settings.recall)`` and
        ``Filtering.from_settings(settings.recall)`` to follow the configuration. ``wall_clock`` (epoch
        seconds) is what deadlines are compared with. ``view``: the catalogue (availability, the
        filters' metadata for the fallback and old collections, the streamed categories of the
        ``diversity`` merge); ``popular``: the fallback's counts. None (both): as before issue 32, every
        item available and ``fallback`` answered with an empty list."""
        self.live = live
        self.store = store
        self.history = history
        self.categories = categories  # by external id, for the `diversity` merge; None = item vectors only
        self.view = view
        self.popular = popular
        self.filtering = Filtering.from_settings() if filtering is None else filtering
        self._sign = 1.0 if higher_is_better else -1.0
        self.budget = Budget.from_settings() if budget is None else budget
        self.breaker = CircuitBreaker.from_settings() if breaker is None else breaker
        self._wall_clock = wall_clock
        self._availability = _NOTHING_WITHDRAWN
        self._filters_in_search = isinstance(store, FilteringSearcher)  # else everything is left out after it
        self.last_version: str | None = None  # version that answered the last served batch

    def availability(self) -> _Availability:
        """The withdrawn items now (one read of the view), with their expression (rebuilt on change)."""
        gone = self.view.unavailable if self.view is not None else frozenset()
        held = self._availability
        if held.unavailable is gone or held.unavailable == gone:
            return held
        if self._filters_in_search and len(gone) <= self.filtering.unavailable_in_search:
            held = _Availability(gone, availability_expression(gone), _EMPTY, 0)
        else:
            after = np.sort(np.fromiter(gone, dtype=np.int64, count=len(gone)))
            held = _Availability(gone, "", after, min(len(gone), self.filtering.post_filter_overfetch))
        self._availability = held
        return held

    def search_expression(self, filters: RecallFilters | None = None) -> str:
        """The filter a search for a request with ``filters`` runs with now (availability included);
        ``""`` when none. For a caller searching beside the engine (the page's interest tags)."""
        return join([self.availability().expression, filter_expression(filters)])

    def warm_up(self) -> str | None:
        """Resolve the live model and run its tower once (first Paddle calls are slow); its version."""
        try:
            served = self.live.current(force=True)
            if served is not None:
                served.tower.interests([[1]])
        except Exception as exc:
            log.warning("warm-up failed (will retry per batch): %s", exc)
            return None
        if served is None:
            log.warning("no live model yet: requests get 'unavailable' until the alias exists")
            return None
        return served.version

    def answer(
        self,
        requests: Sequence[RecallRequest],
        started: float | None = None,
        *,
        stages: StageTimes | None = None,
        deadlines: Sequence[int | None] | None = None,
    ) -> list[Reply]:
        """One reply per request, in order. ``started`` (``time.perf_counter()``): when the batch was
        received; ``stages``, when given, receives the call's stage times (:class:`StageTimes`);
        ``deadlines``, when given, one per request: epoch milliseconds after which its caller no longer
        waits (``None``: no deadline)."""
        started = time.perf_counter() if started is None else started
        stages = StageTimes() if stages is None else stages
        if deadlines is not None and len(deadlines) != len(requests):
            raise ValueError(f"{len(deadlines)} deadlines for {len(requests)} requests")
        replies: list[Reply | None] = [None] * len(requests)
        admitted: list[int] = []
        for index, request in enumerate(requests):
            too_large = self.budget.refusal(request)
            if too_large is None:
                admitted.append(index)
            else:
                replies[index] = _error(ErrorCode.TOO_LARGE, too_large)
        if admitted:
            gone = self.availability()
            self._answer(requests, admitted, replies, started, stages, deadlines or [None] * len(requests), gone)
        return [r if r is not None else _error(ErrorCode.INTERNAL, "no answer computed") for r in replies]

    def _answer(
        self,
        requests: Sequence[RecallRequest],
        admitted: list[int],
        replies: list[Reply | None],
        started: float,
        stages: StageTimes,
        deadlines: Sequence[int | None],
        gone: _Availability,
    ) -> None:
        """Fill ``replies[i]`` for every ``i`` in ``admitted``: one live model, searched sub-batch by sub-batch."""
        refused = self.breaker.refusal()
        if refused is not None:
            _fill(replies, admitted, _error(ErrorCode.UNAVAILABLE, refused))
            return
        try:
            served = self.live.current()
        except Exception as exc:
            log.warning("cannot resolve the live model: %s", exc)
            self.breaker.failed(exc)  # resolving the alias asks Milvus
            _fill(replies, admitted, _error(ErrorCode.UNAVAILABLE, f"live model unavailable: {exc}"))
            return
        if served is None:
            _fill(replies, admitted, _error(ErrorCode.UNAVAILABLE, "no live model: the alias points at no model yet"))
            return
        shapes: list[tuple[int, int]] = []
        searched: list[int] = []
        for index in admitted:
            users, k = requests[index].n_users, self._search_k(requests[index], served.tower.maxlen, gone)
            if k > requests[index].top_k and users * k > self.budget.max_batch_cost:  # the exclusions made it so
                replies[index] = _error(
                    ErrorCode.TOO_LARGE,
                    f"its search ({users} users x {k} candidates: top_k and what is left out after the search) "
                    f"exceeds recall.max_batch_cost {self.budget.max_batch_cost}: ask for fewer users, a smaller "
                    "top_k or fewer exclusions",
                )
                continue
            shapes.append((users, k))
            searched.append(index)
        batches = [[searched[j] for j in part] for part in self.budget.split(shapes)]
        try:
            self._serve_all(served, requests, batches, replies, started, stages, deadlines, gone, may_retry=True)
        except _AliasMoved as moved:  # every reply of the call on the new model, those already built too
            self._serve_all(moved.served, requests, batches, replies, started, stages, deadlines, gone, may_retry=False)

    def _search_k(self, request: RecallRequest, maxlen: int, gone: _Availability) -> int:
        """The most candidates per interest a search for ``request`` may ask (its budget's ``top_k``)."""
        k = request.top_k + gone.overfetch
        if request.filters is not None and request.filters.exclude_items:
            k += len(request.filters.exclude_items)
        if request.exclude_seen:
            seen = maxlen if request.hist_item is None else max(len(set(h)) for h in request.hist_item)
            k += seen
        return min(k, MAX_TOP_K)

    def _serve_all(
        self,
        served: ServedModel,
        requests: Sequence[RecallRequest],
        batches: list[list[int]],
        replies: list[Reply | None],
        started: float,
        stages: StageTimes,
        deadlines: Sequence[int | None],
        gone: _Availability,
        *,
        may_retry: bool,
    ) -> None:
        """Each sub-batch (request indices) searched on ``served``; raises :class:`_AliasMoved` when a
        failure revealed a swap (only if ``may_retry``)."""
        for batch in batches:
            refused = self.breaker.refusal()  # a previous sub-batch's search may have opened it
            if refused is not None:
                _fill(replies, batch, _error(ErrorCode.UNAVAILABLE, refused))
                continue
            now_ms = self._now_ms()
            todo: list[int] = []
            for index in batch:
                late = _late_ms(deadlines[index], now_ms)
                if late is None:
                    todo.append(index)
                else:
                    replies[index] = _timeout(late, "before its search; not searched")
            if not todo:
                continue
            try:
                answers = self._serve(
                    served, [requests[i] for i in todo], started, stages, [deadlines[i] for i in todo], gone
                )
            except CircuitOpen as exc:
                _fill(replies, todo, _error(ErrorCode.UNAVAILABLE, str(exc)))
                continue
            except Exception as exc:
                cause, opened = (exc.cause, exc.opened) if isinstance(exc, _SearchFailed) else (exc, False)
                if opened:
                    log.error("recall search on %s failed, Milvus circuit open: %s", served.collection, cause)
                elif may_retry and (fresh := self._after_failure(served, cause)) is not None:
                    raise _AliasMoved(fresh) from cause
                _fill(replies, todo, _failure(cause))
                continue
            for index, reply in zip(todo, answers, strict=True):
                replies[index] = reply
        self.last_version = served.version

    def _after_failure(self, served: ServedModel, exc: Exception) -> ServedModel | None:
        """The model to retry with when the alias moved since ``served`` was read, else None."""
        try:
            fresh = self.live.current(force=True)
        except Exception:
            return None
        if fresh is None or fresh.collection == served.collection:
            log.error("recall search on %s failed: %s", served.collection, exc)
            return None
        log.info("search on %s failed (%s); alias moved to %s: retrying", served.collection, exc, fresh.collection)
        return fresh

    def _now_ms(self) -> int:
        return int(self._wall_clock() * 1000)

    def _histories(self, request: RecallRequest, maxlen: int, stages: StageTimes) -> list[list[int]]:
        if request.hist_item is not None:
            return [list(h) for h in request.hist_item]
        if self.history is None:
            raise _RequestError(ErrorCode.BAD_REQUEST, "user_ids need a history source: send hist_item")
        began = time.perf_counter()
        try:
            return [self.history.history(user, maxlen) for user in request.user_ids or ()]
        except Exception as exc:
            log.exception("history lookup failed")
            raise _RequestError(ErrorCode.INTERNAL, f"history lookup failed: {exc}") from exc
        finally:
            stages.history = _plus(stages.history, time.perf_counter() - began)

    def _serve(
        self,
        served: ServedModel,
        requests: Sequence[RecallRequest],
        started: float,
        stages: StageTimes,
        deadlines: Sequence[int | None],
        gone: _Availability,
    ) -> list[Reply]:
        """One sub-batch: its histories, one tower pass, one search per distinct filter, each request's merge."""
        tower = served.tower
        replies: list[Reply | None] = [None] * len(requests)
        spans: list[tuple[int, int, int]] = []  # (request index, first user row, user count)
        histories: list[list[int]] = []
        for index, request in enumerate(requests):
            try:
                users = self._histories(request, tower.maxlen, stages)
            except _RequestError as err:
                replies[index] = err.reply
                continue
            spans.append((index, len(histories), len(users)))
            histories.extend(users)
        if spans:
            filtered = any(has_metadata_conditions(requests[i].filters) for i, _, _ in spans)
            inside = not filtered or self._filters_inside(served.collection)
            plans = [
                self._plan(requests[index], histories[user], gone, inside)
                for index, lo, n in spans
                for user in range(lo, lo + n)
            ]
            found = self._search(served, histories, plans, gone, stages)
            for index, lo, n in spans:
                late = _late_ms(deadlines[index], self._now_ms())
                if late is not None:
                    replies[index] = _timeout(late, "before its merge; not merged")
                    continue
                request = requests[index]
                pool = self._popular_pool(
                    request, [plans[u] for u in range(lo, lo + n) if found.lists[u] is None], gone
                )
                answered = [
                    self._user_reply(tower, found, user, plans[user], request, gone, pool) for user in range(lo, lo + n)
                ]
                replies[index] = RecallReply(
                    items=[ids for ids, _, _ in answered],
                    scores=[scores for _, scores, _ in answered],
                    model_version=served.version,
                    generation=served.generation,
                    collection=served.collection,
                    took_ms=(time.perf_counter() - started) * 1000,
                    source=[source for _, _, source in answered] if request.fallback is not None else None,
                )
            stages.merge = _plus(stages.merge, time.perf_counter() - found.returned)
        return [r for r in replies if r is not None]

    def _filters_inside(self, collection: str) -> bool:
        """Whether segment and category filters can run inside a search of ``collection`` (it has the
        metadata fields); else they are checked after it, item by item, on the catalogue view."""
        return isinstance(self.store, FilteringSearcher) and self.store.has_metadata(collection)  # cached there

    def _plan(self, request: RecallRequest, history: list[int], gone: _Availability, inside: bool) -> _UserPlan:
        """What one user's search filters and what its merge leaves out (see the module doc)."""
        filters = request.filters
        excluded: set[int] = set(filters.exclude_items) if filters is not None and filters.exclude_items else set()
        if request.exclude_seen:
            excluded.update(history)
        admit = None
        expression = filter_expression(filters)
        if expression and not inside:
            admit, expression = self._admits(filters), ""
        limit = request.top_k + len(excluded) + gone.overfetch
        if admit is not None:
            limit += self.filtering.post_filter_overfetch
        ids = np.sort(np.fromiter(excluded, dtype=np.int64, count=len(excluded))) if excluded else _EMPTY
        return _UserPlan(expression, ids, admit, min(limit, MAX_TOP_K))

    def _admits(self, filters: RecallFilters | None) -> Callable[[int], bool] | None:
        """The filters as a test of one item on the catalogue view (None: no filters)."""
        if filters is None:
            return None
        view = self.view

        def admits(item_id: int) -> bool:
            state = view.get(item_id) if view is not None else None
            segment, categories = (state.segment, state.categories) if state is not None else (None, ())
            return filters.admits(segment, categories, item_id)

        return admits

    def _search(
        self,
        served: ServedModel,
        histories: list[list[int]],
        plans: list[_UserPlan],
        gone: _Availability,
        stages: StageTimes,
    ) -> _Candidates:
        """The tower over ``histories``, then one search per distinct filter expression of the users with
        an interest (each interest asks for the largest ``limit`` among them)."""
        began = time.perf_counter()
        try:
            interests = np.asarray(served.tower.interests(histories), dtype=np.float32)  # [U, K, dim]
        finally:
            returned = time.perf_counter()
            stages.tower = _plus(stages.tower, returned - began)
        users, k, dim = interests.shape
        live = np.any(interests != 0, axis=-1)  # [U, K]: interests switched off retrieve nothing
        lists: list[tuple[np.ndarray, np.ndarray] | None] = [None] * users
        groups: dict[str, list[int]] = {}
        for user in np.flatnonzero(live.any(axis=1)).tolist():
            groups.setdefault(plans[user].expression, []).append(user)
        for expression, members in groups.items():
            limit = max(plans[user].limit for user in members)
            where = join([gone.expression, expression])
            result, returned = self._one_search(served, interests[members].reshape(-1, dim), limit, where, stages)
            ids = result.ids.reshape(len(members), k, -1)
            signed = result.scores.reshape(len(members), k, -1) * self._sign
            silent = ~live[members]
            if silent.any():
                ids = np.where(silent[..., None], PAD_ID, ids)
                signed = np.where(silent[..., None], -np.inf, signed)
            for row, user in enumerate(members):
                lists[user] = (ids[row], signed[row])
        return _Candidates(lists, returned)

    def _one_search(
        self, served: ServedModel, queries: np.ndarray, limit: int, where: str, stages: StageTimes
    ) -> tuple[SearchResult, float]:
        """One Milvus search through the breaker; the result and when it returned."""
        self.breaker.check()
        searching = time.perf_counter()
        try:
            if where:
                if not isinstance(self.store, FilteringSearcher):
                    raise TypeError(f"{type(self.store).__name__} cannot filter inside a search")
                result = self.store.search(
                    served.collection,
                    queries,
                    limit,
                    with_versions=False,
                    max_generation=served.max_generation,
                    filter=where,
                )
            else:
                result = self.store.search(
                    served.collection, queries, limit, with_versions=False, max_generation=served.max_generation
                )
        except Exception as exc:
            raise _SearchFailed(exc, self.breaker.failed(exc)) from exc
        finally:
            returned = time.perf_counter()
            stages.search = _plus(stages.search, returned - searching)
        self.breaker.succeeded()
        return result, returned

    def _user_reply(
        self,
        tower: Tower,
        found: _Candidates,
        user: int,
        plan: _UserPlan,
        request: RecallRequest,
        gone: _Availability,
        pool: list[tuple[int, float]] | None,
    ) -> tuple[list[int], list[float], RecallSource]:
        """User ``user``'s ``top_k`` items, their scores and what answered: its ``K`` lists without what
        the plan leaves out, merged by score or diverse; for a user nobody searched, the request's
        popular ``pool`` without the user's exclusions (None: no fallback)."""
        lists = found.lists[user]
        if lists is None:
            if pool is None:
                return [], [], "model"
            excluded = set(plan.excluded.tolist())
            picked = [(item, count) for item, count in pool if item not in excluded][: request.top_k]
            return [item for item, _ in picked], [count for _, count in picked], "popular"
        ids, scores = lists
        keep = ids != PAD_ID
        if plan.excluded.size:
            keep &= ~np.isin(ids, plan.excluded)
        if gone.after.size:
            keep &= ~_contains(gone.after, ids)
        if plan.admit is not None:
            admit = plan.admit
            keep &= np.vectorize(lambda item: item == PAD_ID or admit(int(item)), otypes=[bool])(ids)
        ids, scores = _kept(ids, scores, keep, request.top_k)
        lam = request.diversity or 0.0
        if lam > 0:
            items, best = self.diverse_merge(tower, ids, scores, request.top_k, lam)
        else:
            items, best = merge_scored(ids, scores, request.top_k)
        return items, [s * self._sign for s in best], "model"

    def _popular_pool(
        self, request: RecallRequest, plans: list[_UserPlan], gone: _Availability
    ) -> list[tuple[int, float]] | None:
        """The popular items the fallback answers ``request``'s unsearched users (``plans``) from: the
        ``top_k`` + most any of them leaves out, available and passing the filters, found in one walk of
        the counts per request (not per user); None when there is no fallback to give."""
        if request.fallback != "popular" or self.popular is None or not plans:
            return None
        filters = request.filters
        common = set(filters.exclude_items) if filters is not None and filters.exclude_items else set()
        extra = max(plan.excluded.size for plan in plans) - len(common)
        return self.popular.top(request.top_k + max(extra, 0), exclude=common, allowed=self._allowed(request, gone))

    def _allowed(self, request: RecallRequest, gone: _Availability) -> Callable[[int], bool]:
        """Which items the fallback may return: available (as this call sees it) and passing the filters."""
        admits = self._admits(request.filters)
        unavailable = gone.unavailable
        return lambda item: item not in unavailable and (admits is None or admits(item))

    def diverse_merge(
        self, tower: Tower, ids: np.ndarray, scores: np.ndarray, top_n: int, lam: float
    ) -> tuple[list[int], list[float]]:
        """One user's ``K x n`` candidates -> ``top_n`` ids picked by ComiRec's greedy rule (higher scores
        better), with their scores, in pick order."""
        cand, cand_scores, _ = merge_candidates(ids, scores)
        source: CategoryMatrix | None = self.categories
        if self.view is not None:
            source = ViewCategories(self.view, self.categories)
        categories = source.matrix(cand) if source is not None else None
        vectors = None  # only needed for the pairs the catalogue cannot compare
        if (categories is None or not categories.any(axis=1).all()) and isinstance(tower, VectorTower):
            vectors = tower.item_vectors(cand)
        sim = Similarity(ItemFeatures(categories, vectors), cand.shape[0])
        pick = greedy_select(cand_scores, sim, top_n, lam)
        return cand[pick].tolist(), cand_scores[pick].tolist()


def _error(code: ErrorCode, message: str) -> ErrorReply:
    return ErrorReply(code=code, message=message)


def _fill(replies: list[Reply | None], indices: Sequence[int], reply: Reply) -> None:
    for index in indices:
        replies[index] = reply


def _late_ms(deadline_ms: int | None, now_ms: int) -> int | None:
    """Milliseconds past ``deadline_ms`` (> 0), or None when there is none or it has not passed."""
    if deadline_ms is None or now_ms <= deadline_ms:
        return None
    return now_ms - deadline_ms


def _timeout(late_ms: int, where: str) -> ErrorReply:
    return _error(ErrorCode.TIMEOUT, f"deadline passed {late_ms} ms {where}")


def _failure(exc: Exception) -> ErrorReply:
    code = ErrorCode.UNAVAILABLE if is_transient(exc) else ErrorCode.INTERNAL
    return _error(code, f"recall failed: {type(exc).__name__}: {exc}")
