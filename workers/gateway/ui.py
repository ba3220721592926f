"""``/ui``: a page to look at the running system, served by the gateway (plain HTML + JS, no CDN).

* **Now** polls ``GET /ui/api/status`` (:mod:`workers.gateway.ui_status`: the workers' own metrics,
  sampled in the background, the last 15 minutes as small charts).
* **Explore** sends ``POST /ui/api/explore``: a user id (its history read as recall reads
  ``user_ids``: the state store's last ``maxlen`` clicks; like ``user_ids`` it needs the read token or
  the admin token, typed into the page and kept in ``sessionStorage``) or a list of item ids (open),
  and answers with the
  history and the recommended items with their titles and genres. The list comes from the gateway's
  :class:`RecallService`, the batcher and engine behind ``POST /rec/recall``, for the request
  ``{"hist_item": [history], "top_k": k}`` (with the page's ``exclude_seen``, ``filters`` and
  ``fallback`` when chosen): the same list, scores, version and generation that ``/rec/recall`` gives
  for that history. A user without history is sent as ``{"user_ids": [id]}``: with ``fallback``
  the reply's ``source`` shows the popular items answering. Items carry the items topic's title,
  categories and availability when the gateway follows the catalogue
  (:class:`~workers.gateway.catalogue.StreamedItems`; a withdrawn item shows in a history, never in
  a list). With K > 1 interests each item is tagged with the interest
  that retrieved it: the K interest vectors of the history (the served tower) are searched once more,
  one list per interest, on the same collection and generation, and each item takes the interest
  whose list holds it with the best score (the one the engine's merge by score kept). When an item
  of the reply is in none of those lists (the alias moved between the two searches), none is tagged.
* ``GET /ui/api/items?q=`` finds items by id or title in the data set's catalogue
  (:mod:`workers.gateway.catalogue`; ML-100K has titles, other data sets only ids).
* **Admin** buttons call ``POST /rec/refresh`` and ``POST /rec/rollback`` with the token typed into
  the page (kept in the browser's ``sessionStorage``): the API's own guarded endpoints.

The page runs under the gateway's Content-Security-Policy (``'self'`` only): no inline script or
style, in ``index.html``, ``ui.js`` or :data:`INDEX_HTML`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.messages import (
    MAX_DIVERSITY,
    MAX_SEQUENCE_LENGTH,
    MAX_TOP_K,
    ClickSequence,
    ErrorCode,
    ErrorReply,
    Id,
    RecallFilters,
    RecallRequest,
)
from workers.gateway.auth import HistoryGuard
from workers.gateway.catalogue import Catalogue, ItemInfo
from workers.gateway.recall import QueueFull, RecallService
from workers.gateway.ui_status import LiveView, StatusSampler
from workers.infra.vector_store import MAX_TOP_K as SEARCH_MAX_TOP_K
from workers.infra.vector_store import PAD_ID, VectorStore
from workers.recall.engine import RecallEngine, ServedModel
from workers.refresh.generations import announced_generation
from workers.refresh.registry import ModelRegistry

__all__ = ["UI_URL", "ExploreRequest", "LiveReader", "mount_ui", "ui_assets"]

log = logging.getLogger(__name__)

UI_URL: Final = "/ui"
STATIC_PREFIX: Final = "/ui/static"
_ASSETS: Final = ("index.html", "ui.js", "ui.css")
NO_MODEL: Final = (
    "no model is live yet: the refresh worker publishes the first one when it has started "
    "(after the first training, about a minute on ML-100K)"
)
INDEX_HTML: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mindstream</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="/ui/static/ui.css"></head>
<body><main>
<h1>mindstream gateway</h1>
<ul>
<li><a href="/ui">/ui</a>: the live system (versions, freshness, latency) and the recommendations by title</li>
<li><a href="/docs">/docs</a>: the HTTP API (Swagger UI)</li>
<li><a href="/metrics">/metrics</a>: the gateway's Prometheus metrics</li>
<li><a href="/readyz">/readyz</a>: is a model live</li>
</ul></main></body></html>
"""


def ui_assets() -> Path:
    """Directory of the page's files (package data); fails loudly if the package is incomplete."""
    directory = Path(str(resources.files("workers.gateway") / "ui"))
    missing = [name for name in _ASSETS if not (directory / name).is_file()]
    if missing:
        raise RuntimeError(f"the /ui page's files {missing} are missing under {directory}")
    return directory


class ExploreRequest(BaseModel):
    """A user id (its streamed history) or a list of item ids, newest last."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: Id | None = None
    items: ClickSequence | None = None
    top_k: int = Field(default=20, ge=1, le=MAX_TOP_K)
    diversity: float | None = Field(default=None, ge=0, le=MAX_DIVERSITY, allow_inf_nan=False)  # as RecallRequest
    exclude_seen: bool | None = None  # as RecallRequest's (issue 32)
    filters: RecallFilters | None = None
    fallback: Literal["popular"] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ExploreRequest:
        if (self.user_id is None) == (self.items is None):
            raise ValueError("give exactly one of user_id or items")
        return self


class LiveReader:
    """The live alias as Milvus resolves it, for the sampler, with the fast-path generation announced
    for its collection (what recall serves within ``recall.alias_check_s``); row counts are cached per
    collection and generation, model ages per version. It never touches the engine's live model, so
    sampling cannot delay or race a request's alias check."""

    def __init__(self, store: VectorStore, registry: ModelRegistry) -> None:
        self.store = store
        self.registry = registry
        self._rows: dict[tuple[str, int | None], int] = {}
        self._created: dict[str, float] = {}

    def __call__(self) -> LiveView:
        try:
            collection = self.store.resolve_alias(self.registry.alias)
        except Exception as exc:
            return LiveView("error", f"Milvus is not answering: {type(exc).__name__}: {exc}")
        if collection is None:
            return LiveView("none", NO_MODEL)
        version = self.registry.version_of(collection)
        generation: int | None
        try:
            generation = announced_generation(self.store, collection)
        except Exception as exc:
            log.debug("generation of %s unreadable: %s", collection, exc)
            generation = None
        return LiveView(
            "live",
            collection=collection,
            version=version,
            generation=generation,
            items=self._count(collection, generation),
            created_at=self._created_at(version),
        )

    def _count(self, collection: str, generation: int | None) -> int | None:
        key = (collection, generation)
        if key not in self._rows:
            try:
                self._rows = {key: self.store.count(collection)}  # one entry: the newest
            except Exception as exc:
                log.debug("count of %s failed: %s", collection, exc)
                return None
        return self._rows[key]

    def _created_at(self, version: str | None) -> float | None:
        if version is None:
            return None
        if version not in self._created:
            try:
                self._created[version] = float(self.registry.checkpoint(version).manifest.created_at)
            except Exception as exc:
                log.debug("manifest of %s unreadable: %s", version, exc)
                return None
        return self._created[version]


def _info(item_id: int, info: ItemInfo | None) -> dict[str, Any]:
    """An item for the page; ``key`` is the id as a string (ids past 2^53 lose digits as JS numbers);
    ``available`` only when the gateway follows the items topic."""
    if info is None:
        return {"id": item_id, "key": str(item_id), "title": None, "genres": []}
    out = {"id": item_id, "key": str(item_id), "title": info.title, "genres": list(info.genres)}
    if info.available is not None:
        out["available"] = info.available
    return out


def _infos(catalogue: Catalogue, item_ids: list[int]) -> list[dict[str, Any]]:
    return [_info(i, info) for i, info in zip(item_ids, catalogue.describe(item_ids), strict=True)]


def _error(status: int, code: ErrorCode, message: str) -> JSONResponse:
    return JSONResponse(ErrorReply(code=code, message=message).model_dump(mode="json"), status_code=status)


class Explorer:
    def __init__(self, engine: RecallEngine, recall: RecallService, catalogue: Catalogue, higher_is_better: bool):
        self.engine = engine
        self.recall = recall
        self.catalogue = catalogue
        self.sign = 1.0 if higher_is_better else -1.0

    def _history(self, user_id: int) -> list[int] | None:
        """The user's history as the engine reads it for ``user_ids``; None when nothing is live."""
        served = self.engine.live.current()
        if served is None:
            return None
        if self.engine.history is None:
            raise LookupError("this gateway has no history source: type items instead")
        return list(self.engine.history.history(user_id, served.tower.maxlen))

    def _interests(
        self, history: list[int], items: list[int], request: RecallRequest, version: str, generation: int
    ) -> tuple[int, list[int]]:
        """``(K, interest of each item)``; the tags are empty when they cannot be told (see the module doc).
        The search filters as the request's did and asks for as many more candidates as it left out."""
        served: ServedModel | None = self.engine.live.current()
        if served is None or served.version != version or served.generation != generation:
            return 0, []
        vectors = np.asarray(served.tower.interests([history]), dtype=np.float32)[0]  # [K, dim]
        k = int(vectors.shape[0])
        if k <= 1 or not items:
            return k, [0] * len(items) if k == 1 else []
        where = self.engine.search_expression(request.filters)
        left_out = len(history) if request.exclude_seen else 0
        if request.filters is not None and request.filters.exclude_items:
            left_out += len(request.filters.exclude_items)
        limit = min(request.top_k + left_out + self.engine.filtering.post_filter_overfetch, SEARCH_MAX_TOP_K)
        store: Any = self.engine.store
        extra = {"filter": where} if where else {}
        result = store.search(
            served.collection, vectors, limit, with_versions=False, max_generation=served.max_generation, **extra
        )
        ids = result.ids.reshape(k, -1)
        scores = result.scores.reshape(k, -1) * self.sign
        best: dict[int, tuple[float, int]] = {}
        for interest in np.flatnonzero(np.any(vectors != 0, axis=1)).tolist():  # an all-zero interest retrieves nothing
            for item, score in zip(ids[interest].tolist(), scores[interest].tolist(), strict=True):
                if item != PAD_ID and (item not in best or score > best[item][0]):
                    best[item] = (score, interest)
        if any(item not in best for item in items):
            return k, []
        return k, [best[item][1] for item in items]

    async def explore(self, body: ExploreRequest) -> Response:
        if body.user_id is not None:
            try:
                history = await run_in_threadpool(self._history, body.user_id)
            except LookupError as exc:
                return _error(400, ErrorCode.BAD_REQUEST, str(exc))
            except Exception as exc:
                log.warning("explore: history of user %s failed: %s", body.user_id, exc)
                return _error(503, ErrorCode.UNAVAILABLE, "the live model or the history store cannot be reached")
            if history is None:
                return _error(503, ErrorCode.UNAVAILABLE, NO_MODEL)
        else:
            history = list(body.items or [])
        out: dict[str, Any] = {
            "user_id": body.user_id,
            "history": await run_in_threadpool(_infos, self.catalogue, history),
            "request": None,
            "reply": None,
            "interests": 0,
            "items": [],
        }
        options: dict[str, Any] = {
            "top_k": body.top_k,
            "diversity": body.diversity,
            "exclude_seen": body.exclude_seen,
            "filters": body.filters,
            "fallback": body.fallback,
        }
        if not history and (body.user_id is None or body.fallback is None):
            out["message"] = f"user {body.user_id} has no clicks in the state recall reads"
            return JSONResponse(out)
        history = history[-MAX_SEQUENCE_LENGTH:]
        source: dict[str, Any] = {"hist_item": [history]} if history else {"user_ids": [body.user_id]}
        request = RecallRequest.model_validate({**source, **{k: v for k, v in options.items() if v is not None}})
        out["request"] = request.model_dump(mode="json", exclude_none=True)
        try:
            status, reply = await self.recall.answer_async(request)
        except QueueFull as full:
            return JSONResponse(full.reply.model_dump(mode="json"), status_code=503, headers=full.headers)
        if isinstance(reply, ErrorReply):
            return JSONResponse(reply.model_dump(mode="json"), status_code=status)
        out["reply"] = reply.model_dump(mode="json")
        items, scores = reply.items[0], reply.scores[0]
        popular = reply.source is not None and reply.source[0] == "popular"
        k = 0
        tags: list[int] = []  # the interest of each item (a popular list has none)
        if not popular:
            try:
                k, tags = await run_in_threadpool(
                    self._interests, history, items, request, reply.model_version, reply.generation
                )
            except Exception as exc:
                log.warning("explore: interest tags failed: %s", exc)
        out["interests"] = k
        described = await run_in_threadpool(_infos, self.catalogue, items)
        out["items"] = [
            {**info, "score": score, "interest": tags[n] if tags else None}
            for n, (info, score) in enumerate(zip(described, scores, strict=True))
        ]
        if popular:
            out["message"] = "no usable history: the popular items of the recent window answered (the fallback)"
        elif not items:
            out["message"] = "none of these items is known to the live model: nothing to recall from"
        return JSONResponse(out)


def mount_ui(
    app: FastAPI,
    *,
    engine: RecallEngine,
    recall: RecallService,
    guard: HistoryGuard,
    sampler: StatusSampler,
    catalogue: Catalogue,
    higher_is_better: bool,
    info: Callable[[], dict[str, Any]],
) -> None:
    """``/``, ``/ui``, its files and its JSON endpoints on ``app``; ``guard`` decides who may look up a
    user's history."""
    directory = ui_assets()
    page = (directory / "index.html").read_bytes()
    explorer = Explorer(engine, recall, catalogue, higher_is_better)
    app.mount(STATIC_PREFIX, StaticFiles(directory=directory), name="ui-static")

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(INDEX_HTML)

    @app.get(UI_URL, include_in_schema=False)
    async def ui_page() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})

    @app.get("/ui/api/status", include_in_schema=False)
    async def ui_status() -> Response:
        encoded = await run_in_threadpool(sampler.encoded)
        return Response(encoded, media_type="application/json", headers={"Cache-Control": "no-store"})

    @app.get("/ui/api/info", include_in_schema=False)
    async def ui_info() -> dict[str, Any]:
        return {**info(), "catalogue": catalogue.name, "items": len(catalogue), "titles": catalogue.titles}

    @app.get("/ui/api/items", include_in_schema=False)
    async def ui_items(
        q: str = Query("", max_length=200), limit: int = Query(20, ge=1, le=100)
    ) -> list[dict[str, Any]]:
        found = catalogue.search(q, limit)
        if not found and q.strip().isdigit() and int(q.strip()) > 0:
            found = [int(q.strip())]  # an id the catalogue does not know: still a valid item to send
        return await run_in_threadpool(_infos, catalogue, found)

    @app.post("/ui/api/explore", include_in_schema=False)
    async def ui_explore(body: ExploreRequest, raw: Request) -> Response:
        if body.user_id is not None and (refusal := guard.refuse(raw.headers.get("authorization"))):
            return JSONResponse(
                refusal.reply.model_dump(mode="json"), status_code=refusal.status, headers=refusal.headers
            )
        return await explorer.explore(body)
