"""A lean keep-alive HTTP/1.1 client for load generation (asyncio streams, a fixed connection pool).

Why not httpx: on 2 cores an ``httpx.AsyncClient`` spent ~10 ms of CPU per request, so the load
generator saturated one core at ~90 req/s and was measured instead of the gateway (the gateway sat at
35% CPU). This client writes one pre-encoded request and reads one ``Content-Length`` response per
call; it does not follow redirects, decompress or handle chunked bodies (uvicorn sends
``Content-Length`` for JSON responses).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import urlsplit


class HttpError(RuntimeError):
    pass


class Response:
    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self, raw: bytes) -> Response:
        self.writer.write(raw)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise HttpError(f"bad status line {lines[0]!r}")
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None:
            raise HttpError("response without Content-Length")
        return Response(int(parts[1]), await self.reader.readexactly(length))

    def close(self) -> None:
        self.writer.close()


class HttpPool:
    """``async with HttpPool(url, size) as pool: await pool.post_json(path, body)``."""

    def __init__(self, base_url: str, size: int, timeout_s: float = 10.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"need an http:// URL, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.size = size
        self.timeout_s = timeout_s
        self._idle: asyncio.Queue[_Connection | None] = asyncio.Queue()

    async def __aenter__(self) -> HttpPool:
        for _ in range(self.size):
            self._idle.put_nowait(None)  # opened lazily
        return self

    async def __aexit__(self, *exc: object) -> None:
        while not self._idle.empty():
            conn = self._idle.get_nowait()
            if conn is not None:
                conn.close()

    def encode(self, path: str, body: Any) -> bytes:
        payload = json.dumps(body, separators=(",", ":")).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: keep-alive\r\n\r\n"
        )
        return head.encode("latin-1") + payload

    async def send(self, raw: bytes) -> Response:
        """Send a request made by :meth:`encode` on a pooled connection (waits for a free one)."""
        conn = await self._idle.get()
        try:
            if conn is None:
                conn = _Connection(*await asyncio.open_connection(self.host, self.port))
            response = await asyncio.wait_for(conn.request(raw), self.timeout_s)
        except BaseException:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            self._idle.put_nowait(None)  # a broken or timed-out connection is replaced
            raise
        self._idle.put_nowait(conn)
        return response

    async def post_json(self, path: str, body: Any) -> Response:
        return await self.send(self.encode(path, body))
