"""ASGI middleware of the gateway: request metrics and a request-body size limit.

Both are plain ASGI (no ``BaseHTTPMiddleware``): no extra task per request, streaming untouched.
Metric labels are the matched *route template* (``/rec/recall``), never the raw path, query or
headers, so neither secrets nor unbounded label values reach Prometheus.
"""

from __future__ import annotations

import json
import time
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.messages import ErrorCode, ErrorReply
from workers.recall.metrics import LATENCY_BUCKETS

__all__ = ["BodyLimitMiddleware", "HttpMetrics", "MetricsMiddleware"]

UNMATCHED: Final = "unmatched"


class HttpMetrics:
    """``mindstream_http_requests_total{endpoint,method,status}`` and the latency histogram."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "mindstream_http_requests",
            "HTTP requests answered by the gateway, by route template, method and status code",
            ["endpoint", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "mindstream_http_request_duration_seconds",
            "Time from receiving an HTTP request to the end of its response",
            ["endpoint", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


def _endpoint(scope: Scope) -> str:
    """The route template the router matched (FastAPI puts the route in the scope), else a constant."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the response started is answered 500 by Starlette

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            endpoint, method = _endpoint(scope), str(scope.get("method", ""))
            self.metrics.requests.labels(endpoint=endpoint, method=method, status=str(status)).inc()
            self.metrics.duration.labels(endpoint=endpoint, method=method).observe(time.perf_counter() - started)


class BodyLimitMiddleware:
    """Answer 413 (an ``ErrorReply`` with code ``too_large``) to bodies over ``max_bytes``.

    The body is read (up to ``max_bytes + 1``) before the app sees it and then replayed; every
    endpoint reads whole JSON bodies anyway, so buffering costs nothing extra. Works with and
    without ``Content-Length`` (chunked uploads).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # later calls: wait for the disconnect as the app expects
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        reply = ErrorReply(code=ErrorCode.TOO_LARGE, message=f"request body exceeds {self.max_bytes} bytes")
        payload = json.dumps(reply.model_dump(mode="json")).encode("utf-8")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
