"""The hot path of ``POST /rec/recall`` as plain ASGI, in front of the FastAPI route.

Profiled at 300 req/s, the gateway's own CPU went mostly to the framework around the recall: FastAPI's
routing and dependency solving, ``json.loads`` then pydantic validation of the parsed dict, the
response object. This middleware answers a *valid* recall body directly: one
``RecallRequest.model_validate_json`` (pydantic-core parses and validates in one pass), the
micro-batcher (:meth:`RecallService.answer_async`), one ``model_dump_json``. Anything else — other
paths and methods, another content type, a body that does not validate — is handed to the FastAPI app
unchanged (the body replayed), so error answers (422 with FastAPI's field details, 400, 413) and the
OpenAPI schema stay exactly FastAPI's. It sits inside the metrics and body-limit middlewares, which
therefore still see every request. Once the response is sent it observes the request's ``reply``
stage (:meth:`RecallService.observe_reply`: reply ready -> event loop hand-off -> encoded -> sent).

A body with ``user_ids`` asks for users' histories: without the read (or admin) token it is refused
here, as the route refuses it (:class:`HistoryGuard`). A full batcher queue is answered 503 with
``Retry-After`` (:class:`QueueFull`); while the request waits, the client's disconnect abandons it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.messages import RecallRequest
from workers.gateway.auth import HistoryGuard
from workers.gateway.middleware import send_error
from workers.gateway.recall import QueueFull, RecallService

__all__ = ["FastRecallMiddleware"]

PATH: Final = "/rec/recall"
_JSON: Final = b"application/json"


@dataclass(frozen=True)
class _Route:
    path: str  # what the metrics middleware reads from ``scope["route"]`` (the router is skipped here)


_ROUTE: Final = _Route(PATH)


class FastRecallMiddleware:
    def __init__(self, app: ASGIApp, service: RecallService, guard: HistoryGuard | None = None) -> None:
        """``guard``: who may send ``user_ids``; none given = nobody (every ``user_ids`` body is refused)."""
        self.app = app
        self.service = service
        self.guard = guard if guard is not None else HistoryGuard(None, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            request = RecallRequest.model_validate_json(body)
        except (ValidationError, ValueError):
            await self.app(scope, _replay(body, receive), send)  # FastAPI answers with its own details
            return
        scope["route"] = _ROUTE
        if request.user_ids is not None and (refusal := self.guard.refuse_scope(scope.get("headers", []))):
            await send_error(send, refusal.status, refusal.reply, _encoded(refusal.headers))
            return
        try:
            status, reply, ready = await self.service.answer_timed(request, receive)
        except QueueFull as full:
            await send_error(send, 503, full.reply, _encoded(full.headers))
            return
        payload = reply.model_dump_json().encode()
        headers = [(b"content-type", _JSON), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        self.service.observe_reply(ready)


def _encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == _JSON)
    return False


def _replay(body: bytes, receive: Receive) -> Receive:
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
