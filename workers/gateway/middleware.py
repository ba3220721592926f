"""ASGI middleware of the gateway: request metrics, the Host check, security headers, a body size limit.

All plain ASGI (no ``BaseHTTPMiddleware``): no extra task per request, streaming untouched.
Metric labels are the matched *route template* (``/rec/recall``), never the raw path, query or
headers, and the method is one of :data:`METHODS` or ``other`` (h11 accepts any token as a method),
so neither secrets nor unbounded label values reach Prometheus.

* :class:`HostCheckMiddleware`: a request whose ``Host`` (port stripped) is a name not in
  ``http.allowed_hosts`` gets 400, so a web page cannot talk to a loopback gateway through a DNS name
  of its own (DNS rebinding) and read what it answers; ``["*"]`` turns the check off. An IP address
  is always answered (as Vite's and webpack-dev-server's checks do): a browser sends one only for a
  page whose origin is that address, never for an attacker's page, and Prometheus' DNS discovery,
  Kubernetes probes and clients on the LAN address a gateway bound to 0.0.0.0 by IP.
* :class:`SecurityHeadersMiddleware`: ``Content-Security-Policy`` (:data:`CSP`: the page's own files
  only, unless the response set its own, as ``/docs`` does), ``X-Content-Type-Options: nosniff`` and
  ``Referrer-Policy: no-referrer`` on every response that passes through the middleware stack.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.messages import ErrorCode, ErrorReply
from workers.recall.metrics import LATENCY_BUCKETS

__all__ = [
    "CSP",
    "METHODS",
    "SECURITY_HEADERS",
    "BodyLimitMiddleware",
    "HostCheckMiddleware",
    "HttpMetrics",
    "MetricsMiddleware",
    "SecurityHeadersMiddleware",
    "content_security_policy",
]

log = logging.getLogger(__name__)

UNMATCHED: Final = "unmatched"
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
OTHER_METHOD: Final = "other"


def content_security_policy(*scripts: str) -> str:
    """The gateway's policy: everything from this origin only (``data:`` images for icons), no plugins, no
    framing; ``scripts`` adds script sources (``'sha256-...'`` of an inline script a page needs)."""
    script_src = " ".join(("'self'", *scripts))
    return (
        f"default-src 'self'; script-src {script_src}; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


CSP: Final = content_security_policy()
SECURITY_HEADERS: Final = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
BAD_HOST: Final = (
    "this gateway does not answer to that Host name: it is not in http.allowed_hosts (MINDSTREAM_HTTP__ALLOWED_HOSTS)"
)


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


def _method(scope: Scope) -> str:
    """The request's method if it is a standard one, else ``other``: a bounded label."""
    method = scope.get("method")
    return method if method in METHODS else OTHER_METHOD


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
            endpoint, method = _endpoint(scope), _method(scope)
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
        await send_error(send, 413, reply)


async def send_error(send: Send, status: int, reply: ErrorReply, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer ``reply`` as JSON with ``status`` (and ``headers``) straight on the ASGI ``send``."""
    payload = json.dumps(reply.model_dump(mode="json")).encode("utf-8")
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": payload})


def _host_name(value: str) -> str:
    """A Host name as compared: lower case, without a trailing dot."""
    return value.strip().lower().rstrip(".")


def request_host(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The ``Host`` header's name without its port (``[::1]`` keeps its brackets); None when there is no
    Host, several, or one that is not ``name[:port]``."""
    values = [value for name, value in headers if name == b"host"]
    if len(values) != 1:
        return None
    host = values[0].decode("latin-1").strip()
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[: end + 1], host[end + 1 :]
        if end < 0:
            return None
    else:
        name, colon, port = host.partition(":")
        rest = colon + port
    if rest and not (rest.startswith(":") and rest[1:].isdigit() and rest[1:].isascii()):
        return None
    name = _host_name(name)
    return name or None


def _is_address(host: str) -> bool:
    """``host`` is an IP address as a Host header writes it (``127.0.0.1``, ``[::1]``), not a name."""
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    except ValueError:
        return False
    return True


class HostCheckMiddleware:
    """400 (an ``ErrorReply``, code ``bad_request``) to a request whose Host is a name not in ``allowed``:
    exact names, ``*.example.com`` for its subdomains, ``*`` for any; IP addresses always pass."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str]) -> None:
        self.app = app
        names = {_host_name(name) for name in allowed}
        self.any = "*" in names
        self.exact = frozenset(name for name in names if not name.startswith("*."))
        self.suffixes = tuple(name[1:] for name in names if name.startswith("*."))  # ".example.com"

    def allows(self, host: str | None) -> bool:
        if self.any:
            return True
        if host is None:
            return False
        return host in self.exact or (bool(self.suffixes) and host.endswith(self.suffixes)) or _is_address(host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allows(request_host(scope.get("headers", ()))):
            await self.app(scope, receive, send)
            return
        log.debug("refused a request for a Host not in http.allowed_hosts")
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send_error(send, 400, ErrorReply(code=ErrorCode.BAD_REQUEST, message=BAD_HOST))


class SecurityHeadersMiddleware:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response; a header the response set itself is kept."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
