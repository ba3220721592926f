"""HTTP gateway (``mindstream gateway``): the baseline's candidate-generation API on FastAPI.

Endpoints (interactive docs at ``/docs``, served offline):

* ``POST /rec/recall`` — body :class:`RecallRequest` -> :class:`RecallReply` (200); 422 for invalid
  bodies (FastAPI's field details), 413 for bodies over ``MAX_PAYLOAD_BYTES``, 401/403 for ``user_ids``
  without the read (or admin) token, 400 for ``user_ids`` without a history source, 503 when nothing is
  live or the batcher's queue is full (then with ``Retry-After``), 500 (no internals) otherwise.
* ``POST /rec/count`` — rows of the live collection, its name and model version; 503 when nothing is live.
* ``POST /rec/insert_data`` — publish the registry's newest checkpoint and swap the alias (admin).
* ``POST /rec/drop`` — drop the live alias and our collections (admin); ``POST /qa/drop`` is the same
  endpoint under the seed's path (same guard, same answers).
* ``POST /rec/rollback`` — point the live alias back at the previous collection (admin), as
  ``mindstream rollback``; 409 when a publish runs or nothing is left to roll back to.
* ``POST /rec/refresh`` — ask the refresh loop for a round now (admin), as ``mindstream refresh --now``.
* ``GET /healthz`` (process up), ``GET /readyz`` (the live alias resolved at the last background check),
  ``GET /metrics`` (Prometheus). Both health endpoints run on the event loop and read cached state only:
  they answer while the batcher is blocked or Milvus hangs.
* ``GET /ui`` — the page to look at (:mod:`workers.gateway.ui`); ``GET /`` links it and ``/docs``.

Admin endpoints need ``Authorization: Bearer <settings.http.admin_token>``; a user's history
(``user_ids``, the page's ``user_id``) the read token or the admin token (:mod:`workers.gateway.auth`).
Every request passes the Host check (``http.allowed_hosts``) and every response carries the security
headers (:mod:`workers.gateway.middleware`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Final

import uvicorn
from fastapi import Body, Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from schemas.codec import MAX_PAYLOAD_BYTES
from schemas.messages import ErrorCode, ErrorReply, RecallReply, RecallRequest
from workers.gateway.admin import (
    Admin,
    Busy,
    CountResult,
    DropResult,
    InsertResult,
    NoModel,
    NothingToRollBack,
    NotLive,
    RefreshRequested,
    RollbackResult,
)
from workers.gateway.auth import HistoryGuard, admin_guard, bearer
from workers.gateway.catalogue import Catalogue, StreamedItems, catalogue_of
from workers.gateway.docs import mount_docs
from workers.gateway.fast_recall import FastRecallMiddleware
from workers.gateway.middleware import (
    SECURITY_HEADERS,
    BodyLimitMiddleware,
    HostCheckMiddleware,
    HttpMetrics,
    MetricsMiddleware,
    SecurityHeadersMiddleware,
)
from workers.gateway.recall import INTERNAL_MESSAGE, MILVUS_NOT_ANSWERING, QueueFull, RecallService
from workers.gateway.ui import LiveReader, mount_ui
from workers.gateway.ui_status import Source, StatusSampler, http_source, registry_source
from workers.infra.vector_store import VectorStore
from workers.metrics import GcPauses
from workers.recall.breaker import BreakerState, CircuitBreaker, register_breaker_metrics
from workers.recall.budget import Budget
from workers.recall.engine import RecallEngine
from workers.recall.metrics import RecallMetrics
from workers.settings import Settings

__all__ = ["create_app", "main"]

log = logging.getLogger(__name__)

TITLE: Final = "mindstream candidate generation"
GRACEFUL_SHUTDOWN_S: Final = 10
DESCRIPTION: Final = (
    "Candidate generation (recall) for the MIND model: item vectors in Milvus, live alias swapped on refresh.\n\n"
    "`/rec/insert_data` and `/rec/drop` need the admin token, `/rec/recall` with `user_ids` (a user's history) the "
    "read token or the admin token: use **Authorize** (HTTP Bearer)."
)
RECALL_EXAMPLE: Final = {"top_k": 10, "hist_item": [[43, 23, 65], [675, 3456]]}
_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    code: {"model": ErrorReply, "description": text}
    for code, text in {413: "Body too large", 500: "Internal error", 503: "No live collection"}.items()
}
_RECALL_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    **_ERRORS,
    400: {"model": ErrorReply, "description": "user_ids without a history source"},
    401: {"model": ErrorReply, "description": "user_ids without a bearer token"},
    403: {"model": ErrorReply, "description": "user_ids with a wrong token, or no read or admin token configured"},
    503: {"model": ErrorReply, "description": "No live collection, or the queue is full (Retry-After)"},
}


_ADMIN_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    **_ERRORS,
    401: {"description": "No bearer token"},
    403: {"description": "Wrong token, or no admin token configured"},
    409: {"model": ErrorReply, "description": "Another publish/drop is running, or no checkpoint to publish"},
}


def _error(status: int, code: ErrorCode, message: str) -> JSONResponse:
    return JSONResponse(ErrorReply(code=code, message=message).model_dump(mode="json"), status_code=status)


def _reply(status: int, reply: ErrorReply, headers: dict[str, str]) -> JSONResponse:
    return JSONResponse(reply.model_dump(mode="json"), status_code=status, headers=headers)


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 with its field details; an echoed ``input`` that strict JSON cannot carry (NaN,
    Infinity, non-UTF-8 bytes) is left out instead of failing the response with a 500."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    try:
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)
    except ValueError:  # UnicodeDecodeError included
        slim = [{k: v for k, v in e.items() if k != "input"} for e in errors]
        return JSONResponse({"detail": jsonable_encoder(slim)}, status_code=422)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    response = _error(500, ErrorCode.INTERNAL, INTERNAL_MESSAGE)
    # Starlette answers this one outside the middleware stack: the security headers are set here
    response.headers.update({name.decode(): value.decode() for name, value in SECURITY_HEADERS})
    return response


def _not_ready(recall: RecallService, engine: RecallEngine) -> str | None:
    """Why ``/readyz`` says not ready (a fixed text), or None."""
    state = recall.alias_state()
    if state.checked is None or time.monotonic() - state.checked > recall.stale_after_s():
        return MILVUS_NOT_ANSWERING
    if state.collection is None:
        return "no live collection"
    breaker = getattr(engine, "breaker", None)
    if isinstance(breaker, CircuitBreaker) and breaker.state is BreakerState.OPEN:
        return "Milvus circuit open: recalls are answered unavailable for now"
    return None


def worker_metrics_urls(settings: Settings) -> dict[str, str]:
    """The workers' ``/metrics`` the ``/ui`` status reads: ``http.ui_metrics``, else their configured ports."""
    urls = {
        worker: f"http://127.0.0.1:{port}/metrics"
        for worker in ("ingest", "refresh", "recall")
        if (port := getattr(settings, worker).metrics_port) is not None
    }
    for worker, url in settings.http.ui_metrics.items():
        urls[str(worker)] = url
    return urls


def create_app(
    settings: Settings,
    *,
    store: VectorStore,
    engine: RecallEngine,
    registry: CollectorRegistry | None = None,
    admin: Admin | None = None,
    sampler: StatusSampler | None = None,
    catalogue: Catalogue | None = None,
) -> FastAPI:
    """The gateway app on an open ``store`` and a ready ``engine``; metrics go to ``registry``.

    ``sampler`` feeds ``/ui``'s status (default: the workers of :func:`worker_metrics_urls` and this
    gateway's ``registry``, every ``http.ui_sample_s``, in a thread started with the app);
    ``catalogue`` names the items on the page (default: the configured data set's titles).
    """
    registry = registry if registry is not None else CollectorRegistry()
    admin = admin or Admin(settings, store)
    if sampler is None:
        urls = worker_metrics_urls(settings)
        sources: dict[str, Source] = {worker: http_source(url) for worker, url in urls.items()}
        sources["gateway"] = registry_source(registry)
        sampler = StatusSampler(
            sources,
            LiveReader(store, admin.registry),
            sample_s=settings.http.ui_sample_s,
            window_s=settings.stream.window_s,
            urls={**urls, "gateway": "/metrics"},
        )
    status = sampler
    gc_pauses = GcPauses(registry)
    if isinstance(getattr(engine, "breaker", None), CircuitBreaker):
        register_breaker_metrics(engine.breaker, registry)  # mindstream_recall_milvus_breaker_state
    recall = RecallService(
        engine,
        store,
        settings.milvus.alias,
        RecallMetrics(registry),
        max_batch=settings.recall.max_batch,
        timeout_s=settings.recall.client_timeout_s,
        max_queue=settings.http.max_queue,
        retry_after_s=settings.http.retry_after_s,
        check_every_s=settings.recall.alias_check_s,
    )
    guard = HistoryGuard(settings.http.read_token, settings.http.admin_token)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        recall.watch()  # the live model and the alias followed in the background, from here on
        status.start()
        gc_pauses.install()
        yield
        gc_pauses.uninstall()
        status.close()
        recall.close()

    require_admin = Depends(admin_guard(settings.http.admin_token))
    app = FastAPI(title=TITLE, docs_url=None, redoc_url=None, description=DESCRIPTION, lifespan=lifespan)
    mount_docs(app, TITLE)
    mount_ui(
        app,
        engine=engine,
        recall=recall,
        guard=guard,
        sampler=status,
        catalogue=catalogue if catalogue is not None else catalogue_of(settings),
        higher_is_better=settings.milvus.metric_type != "L2",
        info=lambda: {
            "alias": settings.milvus.alias,
            "dataset": settings.data.name,
            "admin": settings.http.admin_token is not None,
            "read": settings.http.read_token is not None,
        },
    )
    app.add_middleware(FastRecallMiddleware, service=recall, guard=guard)  # innermost: valid /rec/recall bodies
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_PAYLOAD_BYTES)
    app.add_middleware(HostCheckMiddleware, allowed=settings.http.allowed_hosts)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=HttpMetrics(registry))  # outermost: counts every answer
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _unhandled)

    # Depends(bearer): the OpenAPI document lists the token, so /docs' "Authorize" sends it with user_ids
    @app.post("/rec/recall", response_model=RecallReply, responses=_RECALL_ERRORS, dependencies=[Depends(bearer)])
    async def recall_items(request: Annotated[RecallRequest, Body(examples=[RECALL_EXAMPLE])], raw: Request) -> Any:
        """Top-``top_k`` item ids per user (one list per ``hist_item`` sequence or ``user_ids`` entry);
        ``user_ids`` (their histories) need the read token or the admin token."""
        if request.user_ids is not None and (refusal := guard.refuse(raw.headers.get("authorization"))):
            return _reply(refusal.status, refusal.reply, refusal.headers)
        # Awaited on the event loop (no thread-pool hop); encoded once by pydantic-core, without
        # FastAPI's re-validation of the reply and its jsonable_encoder pass.
        try:
            status, reply, ready = await recall.answer_timed(request, raw.receive)
        except QueueFull as full:
            return _reply(503, full.reply, full.headers)
        response = Response(reply.model_dump_json(), status_code=status, media_type="application/json")
        recall.observe_reply(ready)  # Starlette writes it after we return: that part is not measured here
        return response

    @app.post("/rec/count", response_model=CountResult, responses=_ERRORS)
    def count() -> Any:
        """Item vectors stored in the live collection."""
        try:
            return admin.count()
        except NotLive as exc:
            return _error(503, ErrorCode.UNAVAILABLE, f"no live collection: {exc}")

    @app.post("/rec/insert_data", response_model=InsertResult, dependencies=[require_admin], responses=_ADMIN_ERRORS)
    def insert_data() -> Any:
        """Publish the newest model's item vectors as ``<alias>_v<N>``, verify it, swap the live alias."""
        try:
            result = admin.insert_data()
        except (Busy, NoModel) as exc:
            return _error(409, ErrorCode.BAD_REQUEST, str(exc))
        recall.refresh_live()
        return result

    @app.post("/rec/drop", response_model=DropResult, dependencies=[require_admin], responses=_ADMIN_ERRORS)
    @app.post("/qa/drop", response_model=DropResult, dependencies=[require_admin], responses=_ADMIN_ERRORS)
    def drop() -> Any:
        """Drop the live alias and every ``<alias>_v<N>`` collection (destructive)."""
        try:
            result = admin.drop()
        except Busy as exc:
            return _error(409, ErrorCode.BAD_REQUEST, str(exc))
        recall.refresh_live()
        return result

    @app.post("/rec/rollback", response_model=RollbackResult, dependencies=[require_admin], responses=_ADMIN_ERRORS)
    def rollback() -> Any:
        """Point the live alias back at the most recently superseded collection (as ``mindstream rollback``)."""
        try:
            result = admin.rollback()
        except (Busy, NothingToRollBack) as exc:
            return _error(409, ErrorCode.BAD_REQUEST, str(exc))
        recall.refresh_live()
        status.sample()  # the page shows the new version at once
        return result

    @app.post("/rec/refresh", response_model=RefreshRequested, dependencies=[require_admin], responses=_ADMIN_ERRORS)
    def refresh() -> Any:
        """Ask the refresh loop for a round now (as ``mindstream refresh --now``); the round runs there."""
        try:
            return admin.refresh()
        except NotLive as exc:
            return _error(503, ErrorCode.UNAVAILABLE, f"no live collection: {exc}")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process answers (on the event loop: never behind the batcher or a Milvus call)."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "No live collection, Milvus not answering, circuit open"}})
    async def readyz() -> Any:
        """Cached state only (no Milvus call here): the live alias resolved to a collection at the
        background check, recently, and the engine's Milvus circuit breaker is not open."""
        reason = _not_ready(recall, engine)
        if reason is not None:
            return JSONResponse({"status": "not ready", "collection": None, "reason": reason}, status_code=503)
        return {"status": "ready", "collection": recall.alias_state().collection}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mindstream gateway", description="Serve recall over HTTP (FastAPI).")
    p.add_argument("--host", help="bind address (default: settings.http.host, loopback)")
    p.add_argument("--port", type=int, help="port (default: settings.http.port)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``mindstream gateway``: serve until SIGTERM/SIGINT (uvicorn finishes in-flight requests)."""
    from workers.catalogue.reader import CatalogueReader
    from workers.catalogue.row_metadata import CatalogueMetadata
    from workers.infra.milvus_server import open_milvus
    from workers.ingest.history_store import open_reader
    from workers.recall.item_filters import Filtering
    from workers.recall.live_model import LiveModel
    from workers.recall.serving_state import follow_serving_state
    from workers.refresh.registry import ModelRegistry
    from workers.runtime import StopFlag, configure_logging, stop_on_signals

    args = _parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    host, port = args.host or settings.http.host, args.port or settings.http.port
    with contextlib.ExitStack() as stack:
        uri = stack.enter_context(open_milvus(settings.milvus, settings.milvus_dir))
        # /rec/insert_data publishes through this store: its rows take the catalogue's metadata
        metadata = CatalogueMetadata.open(settings)
        stack.callback(metadata.close)
        store = stack.enter_context(VectorStore(uri, settings.milvus, serving=True, metadata=metadata))
        history = stack.enter_context(open_reader(settings.state, settings.state_dir, settings.kafka.clicks_topic))
        state = follow_serving_state(settings, stack)  # the catalogue and the popular counts, followed
        registry = ModelRegistry.from_settings(settings)
        live = LiveModel(store, registry, check_every_s=settings.recall.alias_check_s)
        items = settings.data.item_catalogue()  # read once: the `diversity` merge and the page's titles
        engine = RecallEngine(
            live,
            store,
            history,
            higher_is_better=settings.milvus.metric_type != "L2",
            categories=items,
            budget=Budget.from_settings(settings.recall),
            breaker=CircuitBreaker.from_settings(settings.recall),
            view=state.view,
            popular=state.popular,
            filtering=Filtering.from_settings(settings.recall),
        )
        engine.warm_up()
        page_reader = stack.enter_context(CatalogueReader(settings.state_dir, settings.kafka.items_topic))
        app = create_app(
            settings,
            store=store,
            engine=engine,
            admin=Admin(settings, store, registry),
            catalogue=Catalogue.from_items(items, settings.data.name).with_stream(
                StreamedItems(state.view, page_reader)
            ),
        )
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S
        )
        # uvicorn drains in-flight requests on SIGTERM/SIGINT, then re-raises the signal to the handler
        # it found: with the default one the process would die here and orphan the embedded Milvus.
        with stop_on_signals(StopFlag()) as stop:
            uvicorn.Server(config).run()
    log.info("gateway stopped (%s)", stop.reason)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
