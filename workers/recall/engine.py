"""Recall logic without Kafka: a micro-batch of requests -> one Milvus search -> one reply per request.

Per batch: the live model is read ONCE (``live.current()``), so every reply of the batch names the
same ``model_version``, ``generation`` and ``collection``, all of its users were embedded by that
version's tower, and the search saw exactly the rows of that version up to that generation.
All users of all requests go into one search (``nq = K x users``, ``top_k`` = the batch's largest);
each user's ``K`` lists are then merged with its own request's ``top_k``. Merging the top-``N`` lists
down to ``n <= N`` gives exactly what a search with ``top_k = n`` would have given.

Choices:

* ``hist_item`` is used as given (the tower keeps the last ``maxlen`` clicks and ignores ids it does
  not know); ``user_ids`` are resolved through a :class:`HistorySource`.
* A user with no usable history (unknown user, or only unknown items) gets an **empty list**, not an
  error: it is a valid question with no personalised answer (callers fall back to popular items).
* An :class:`ErrorReply` is only for requests that cannot be served: ``user_ids`` without a history
  source or a failing one (``bad_request`` / ``internal``), no live model or Milvus down
  (``unavailable``), anything else (``internal``).
* If the search fails, the alias is re-resolved at once (``current(force=True)``); when it now points
  elsewhere (a swap dropped the collection we held), the whole batch is recomputed once on the new
  model. Otherwise the error stands.
* ``diversity`` (lambda > 0) replaces a request's merge by score with ComiRec's greedy selection
  (:mod:`model.diversity`) over its users' ``K x top_k`` candidates (each interest's list cut to the
  request's own ``top_k`` first, so the reply does not depend on the batch it shared): similarities
  by the catalogue's categories where both items have them, by the served version's item vectors
  otherwise. Absent or 0 takes the plain merge, unchanged. Scores in such a reply are the items' search
  scores, in pick order (no longer sorted).
* An interest that is all zero (beyond a user's dynamic interest count) retrieves nothing.

Stage timing: ``answer(..., stages=StageTimes())`` fills in the seconds the batch spent reading
histories, in the tower, in the Milvus search and merging (:class:`StageTimes`; ``perf_counter``
pairs only, replies unchanged). The callers put them into ``mindstream_recall_stage_seconds``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from model.data.items import ItemCatalogue
from model.diversity import ItemFeatures, Similarity, greedy_select, merge_candidates
from schemas.messages import ErrorCode, ErrorReply, RecallReply, RecallRequest
from workers.infra.vector_store import PAD_ID, SearchResult, is_transient

__all__ = ["HistorySource", "RecallEngine", "Reply", "StageTimes", "merge_scored"]

log = logging.getLogger(__name__)

Reply = RecallReply | ErrorReply


class HistorySource(Protocol):
    def history(self, user_id: int, maxlen: int) -> list[int]: ...


class Tower(Protocol):
    @property
    def maxlen(self) -> int: ...

    def interests(self, histories: Sequence[Sequence[int]]) -> np.ndarray: ...


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
    ) -> None:
        self.live = live
        self.store = store
        self.history = history
        self.categories = categories  # by external id, for the `diversity` merge; None = item vectors only
        self._sign = 1.0 if higher_is_better else -1.0
        self.last_version: str | None = None  # version that answered the last served batch

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
        self, requests: Sequence[RecallRequest], started: float | None = None, *, stages: StageTimes | None = None
    ) -> list[Reply]:
        """One reply per request; ``started`` (``time.perf_counter()``) is when the batch was received;
        ``stages``, when given, receives the batch's stage times (:class:`StageTimes`)."""
        started = time.perf_counter() if started is None else started
        stages = StageTimes() if stages is None else stages
        if not requests:
            return []
        try:
            served = self.live.current()
        except Exception as exc:
            log.warning("cannot resolve the live model: %s", exc)
            return [_error(ErrorCode.UNAVAILABLE, f"live model unavailable: {exc}")] * len(requests)
        if served is None:
            return [_error(ErrorCode.UNAVAILABLE, "no live model: the alias points at no model yet")] * len(requests)
        try:
            return self._serve(served, requests, started, stages)
        except Exception as first:
            retry = self._after_failure(served, first)
            if retry is None:
                return [_failure(first)] * len(requests)
            try:
                return self._serve(retry, requests, started, stages)
            except Exception as second:
                return [_failure(second)] * len(requests)

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
        self, served: ServedModel, requests: Sequence[RecallRequest], started: float, stages: StageTimes
    ) -> list[Reply]:
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
            top_k = max(requests[i].top_k for i, _, _ in spans)
            lambdas, cuts = [0.0] * len(histories), [0] * len(histories)
            for index, lo, n in spans:
                lambdas[lo : lo + n] = [requests[index].diversity or 0.0] * n
                cuts[lo : lo + n] = [requests[index].top_k] * n
            items, scores = self._search(served, histories, top_k, stages, lambdas, cuts)
            merged = time.perf_counter()
            took_ms = (merged - started) * 1000
            for index, lo, n in spans:
                cut = requests[index].top_k
                replies[index] = RecallReply(
                    items=[i[:cut] for i in items[lo : lo + n]],
                    scores=[s[:cut] for s in scores[lo : lo + n]],
                    model_version=served.version,
                    generation=served.generation,
                    collection=served.collection,
                    took_ms=took_ms,
                )
            stages.merge = _plus(stages.merge, time.perf_counter() - merged)  # the reply objects
        self.last_version = served.version
        return [r for r in replies if r is not None]

    def _search(
        self,
        served: ServedModel,
        histories: list[list[int]],
        top_k: int,
        stages: StageTimes,
        lambdas: Sequence[float] | None = None,
        cuts: Sequence[int] | None = None,
    ) -> tuple[list[list[int]], list[list[float]]]:
        """Merged candidates (up to ``top_k``; ``cuts[u]`` with ``lambdas[u]`` > 0) per user; empty lists
        for users without history."""
        began = time.perf_counter()
        try:
            interests = np.asarray(served.tower.interests(histories), dtype=np.float32)  # [U, K, dim]
        finally:
            searching = time.perf_counter()
            stages.tower = _plus(stages.tower, searching - began)
        users, k, dim = interests.shape
        active = np.flatnonzero(np.any(interests.reshape(users, -1) != 0, axis=1))
        items: list[list[int]] = [[] for _ in range(users)]
        scores: list[list[float]] = [[] for _ in range(users)]
        if active.size == 0:
            stages.merge = _plus(stages.merge, time.perf_counter() - searching)
            return items, scores
        queries = interests[active].reshape(-1, dim)
        searching = time.perf_counter()
        try:
            result = self.store.search(
                served.collection, queries, top_k, with_versions=False, max_generation=served.max_generation
            )
        finally:
            merging = time.perf_counter()
            stages.search = _plus(stages.search, merging - searching)
        ids = result.ids.reshape(active.size, k, -1)
        signed = result.scores.reshape(active.size, k, -1) * self._sign
        silent = ~np.any(interests[active] != 0, axis=-1)  # [users, K]: interests switched off
        if silent.any():
            ids = np.where(silent[..., None], PAD_ID, ids)
            signed = np.where(silent[..., None], -np.inf, signed)
        for row, user in enumerate(active.tolist()):
            lam = lambdas[user] if lambdas is not None else 0.0
            if lam > 0:
                cut = cuts[user] if cuts is not None else top_k
                tower = served.tower
                got_ids, got_scores = self.diverse_merge(tower, ids[row, :, :cut], signed[row, :, :cut], cut, lam)
            else:
                got_ids, got_scores = merge_scored(ids[row], signed[row], top_k)
            items[user] = got_ids
            scores[user] = [s * self._sign for s in got_scores]
        stages.merge = _plus(stages.merge, time.perf_counter() - merging)
        return items, scores

    def diverse_merge(
        self, tower: Tower, ids: np.ndarray, scores: np.ndarray, top_n: int, lam: float
    ) -> tuple[list[int], list[float]]:
        """One user's ``K x n`` candidates -> ``top_n`` ids picked by ComiRec's greedy rule (higher scores
        better), with their scores, in pick order."""
        cand, cand_scores, _ = merge_candidates(ids, scores)
        categories = self.categories.matrix(cand) if self.categories is not None else None
        vectors = None  # only needed for the pairs the catalogue cannot compare
        if (categories is None or not categories.any(axis=1).all()) and isinstance(tower, VectorTower):
            vectors = tower.item_vectors(cand)
        sim = Similarity(ItemFeatures(categories, vectors), cand.shape[0])
        pick = greedy_select(cand_scores, sim, top_n, lam)
        return cand[pick].tolist(), cand_scores[pick].tolist()


def _error(code: ErrorCode, message: str) -> ErrorReply:
    return ErrorReply(code=code, message=message)


def _failure(exc: Exception) -> ErrorReply:
    code = ErrorCode.UNAVAILABLE if is_transient(exc) else ErrorCode.INTERNAL
    return _error(code, f"recall failed: {type(exc).__name__}: {exc}")
