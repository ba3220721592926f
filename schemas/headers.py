"""Kafka header names and helpers shared by producers, workers and clients."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

HeaderValue = str | bytes | None
Headers = Sequence[tuple[str, HeaderValue]] | Mapping[str, HeaderValue]

CORRELATION_ID: Final = "correlation_id"
REPLY_TO: Final = "reply_to"
# Optional, on recall requests: when the caller stops waiting, epoch milliseconds (decimal ASCII).
# A worker that picks the request up later answers TIMEOUT at once instead of searching for nobody:
# under overload, stale requests are shed instead of delaying the fresh ones behind them.
DEADLINE_MS: Final = "deadline_ms"


def _text(value: HeaderValue) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.decode("utf-8", errors="replace")


def get_header(headers: Headers | None, name: str) -> str | None:
    """The last value of header ``name`` as text (Kafka allows repeats), or None when absent."""
    if not headers:
        return None
    if isinstance(headers, Mapping):
        return _text(headers.get(name))
    found: HeaderValue = None
    for key, value in headers:
        if key == name:
            found = value
    return _text(found)


def header_list(headers: Headers | None) -> list[tuple[str, HeaderValue]]:
    """Headers as confluent-kafka's list of pairs (the form a consumed message carries)."""
    if not headers:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)
