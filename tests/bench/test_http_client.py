"""The benchmark's keep-alive HTTP client against a tiny local asyncio server (no gateway needed)."""

from __future__ import annotations

import asyncio
import json

import pytest

from bench.http_client import HttpError, HttpPool


async def _serve(connections: list[int], bad: bool = False) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            lines = head.split(b"\r\n")
            length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"Content-Length"))
            body = json.loads(await reader.readexactly(length))
            status = 422 if body.get("bad") else 200
            reply = json.dumps({"echo": body}).encode()
            if bad:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            else:
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(reply)}\r\n\r\n".encode() + reply)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_keep_alive_pool_round_trips_and_reuses_connections() -> None:
    async def scenario() -> None:
        connections: list[int] = []
        server = await _serve(connections)
        port = server.sockets[0].getsockname()[1]
        async with HttpPool(f"http://127.0.0.1:{port}", size=2) as pool:
            replies = await asyncio.gather(*(pool.post_json("/x", {"n": n}) for n in range(20)))
            bad = await pool.post_json("/x", {"bad": True})
        server.close()
        assert [r.json()["echo"]["n"] for r in replies] == list(range(20))
        assert all(r.status == 200 for r in replies) and bad.status == 422
        assert len(connections) == 2, "20 requests over a pool of 2 keep-alive connections"

    asyncio.run(scenario())


def test_a_response_without_content_length_is_an_error() -> None:
    async def scenario() -> None:
        server = await _serve([], bad=True)
        port = server.sockets[0].getsockname()[1]
        async with HttpPool(f"http://127.0.0.1:{port}", size=1) as pool:
            with pytest.raises(HttpError, match="Content-Length"):
                await pool.post_json("/x", {})
        server.close()

    asyncio.run(scenario())


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="http://"):
        HttpPool("https://example.org", 1)
