"""An independent oracle of the wire contracts: is this body a valid click / recall request?

Written from the contract in ``schemas/messages.py``'s docstrings and the README, with Python's
``json`` and plain comparisons: no pydantic, no ``schemas.codec``. The fuzz tests decide "bad" with
it, so a codec that starts accepting bad input (or rejecting good input) disagrees with it and fails.

Two front ends, because the transports differ:

* :func:`wire_value` (Kafka): UTF-8 without BOM, at most ``MAX_PAYLOAD_BYTES``, JSON without lone
  surrogates; repeated keys keep the last value. ``NaN``/``Infinity`` parse (the codec's parser reads
  them too) to floats, which no field accepts: they only pass as the overwritten value of a repeated key.
* :func:`http_value` (the gateway): what ``json.loads`` accepts for a request body (it detects UTF-8,
  UTF-16 and UTF-32 and a UTF-8 BOM; ``NaN`` parses to a float, which no integer field accepts).

One deliberate leniency, documented where it comes from: ``schema_version`` equals 1 the way JSON
numbers compare (``1``, ``1.0``, ``true``), because pydantic's ``Literal[1]`` compares by equality.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
MAX_ID = 2**63 - 1
MAX_EVENT_ID_LENGTH = 128
MAX_SEGMENT_LENGTH = 32
MAX_USERS = 256
MAX_SEQUENCE = 1000
MAX_TOP_K = 1000
MAX_DIVERSITY = 1000

_EVENT_ID = re.compile(r"[!-~]+")
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class Invalid(Exception):
    """The body is not valid JSON for this transport."""


def _pairs_checked(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    for key, value in pairs:
        if _SURROGATE.search(key):
            raise Invalid("lone surrogate")
        _walk_strings(value)  # overwritten values too: the wire parser rejects them while parsing
    return dict(pairs)  # the last value of a repeated key wins


def _walk_strings(value: Any) -> None:
    if isinstance(value, str) and _SURROGATE.search(value):
        raise Invalid("lone surrogate")
    if isinstance(value, list):
        for item in value:
            _walk_strings(item)


def wire_value(raw: bytes | None) -> Any:
    """The JSON value of a Kafka message body, or :class:`Invalid`."""
    if raw is None or len(raw) > MAX_PAYLOAD_BYTES:
        raise Invalid("no value or too large")
    try:
        text = raw.decode("utf-8")  # strict: no BOM stripping ("utf-8-sig" would)
    except UnicodeDecodeError:
        raise Invalid("not UTF-8") from None
    try:
        value = json.loads(text, object_pairs_hook=_pairs_checked)
    except (ValueError, RecursionError):
        raise Invalid("not JSON") from None
    _walk_strings(value)
    return value


def http_value(raw: bytes) -> Any:
    """The JSON value of an HTTP request body as ``json.loads`` reads bytes, or :class:`Invalid`."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise Invalid("too large")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise Invalid("not JSON") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    return _is_int(value) and 1 <= value <= MAX_ID


def _version_ok(body: dict[str, Any]) -> bool:
    if "schema_version" not in body:
        return True
    version = body["schema_version"]
    return isinstance(version, int | float) and version == 1  # NaN and inf compare unequal


def click_fields_ok(body: Any) -> bool:
    """``ClickEvent``: event_id (1..128 printable ASCII, no space), user_id and item_id in 1..2^63-1,
    ts in 0..2^63-1, optional segment (null or 1..32 of ``[A-Za-z0-9_-]``), nothing else."""
    if not isinstance(body, dict):
        return False
    allowed = {"schema_version", "event_id", "user_id", "item_id", "ts", "segment"}
    required = {"event_id", "user_id", "item_id", "ts"}
    if not required <= set(body) <= allowed or not _version_ok(body):
        return False
    event_id, segment, ts = body["event_id"], body.get("segment"), body["ts"]
    return (
        isinstance(event_id, str)
        and 1 <= len(event_id) <= MAX_EVENT_ID_LENGTH
        and _EVENT_ID.fullmatch(event_id) is not None
        and _is_id(body["user_id"])
        and _is_id(body["item_id"])
        and _is_int(ts)
        and 0 <= ts <= MAX_ID
        and (
            segment is None
            or (
                isinstance(segment, str)
                and 1 <= len(segment) <= MAX_SEGMENT_LENGTH
                and _SEGMENT.fullmatch(segment) is not None
            )
        )
    )


def request_fields_ok(body: Any) -> bool:
    """``RecallRequest``: exactly one of hist_item (1..256 sequences of 1..1000 ids) or user_ids
    (1..256 ids), null meaning absent; optional top_k in 1..1000; optional diversity (null, or a finite
    number, not a boolean, in 0..1000); nothing else."""
    if not isinstance(body, dict):
        return False
    if not set(body) <= {"schema_version", "hist_item", "user_ids", "top_k", "diversity"} or not _version_ok(body):
        return False
    diversity = body.get("diversity")
    if diversity is not None and not (
        isinstance(diversity, int | float) and not isinstance(diversity, bool) and 0 <= diversity <= MAX_DIVERSITY
    ):  # NaN compares false, infinity is above the bound
        return False
    hist, users = body.get("hist_item"), body.get("user_ids")
    if (hist is None) == (users is None):
        return False
    if "top_k" in body and not (_is_int(body["top_k"]) and 1 <= body["top_k"] <= MAX_TOP_K):
        return False
    if hist is not None:
        return (
            isinstance(hist, list)
            and 1 <= len(hist) <= MAX_USERS
            and all(
                isinstance(seq, list) and 1 <= len(seq) <= MAX_SEQUENCE and all(_is_id(i) for i in seq) for seq in hist
            )
        )
    return isinstance(users, list) and 1 <= len(users) <= MAX_USERS and all(_is_id(u) for u in users)


def valid_click(raw: bytes | None) -> bool:
    """A click the ingest worker must apply (every other body must be dead-lettered)."""
    try:
        return click_fields_ok(wire_value(raw))
    except Invalid:
        return False


def valid_request(raw: bytes | None) -> bool:
    """A recall request body the worker must answer with candidates (given a history source)."""
    try:
        return request_fields_ok(wire_value(raw))
    except Invalid:
        return False


def valid_http_request(raw: bytes) -> bool:
    """A ``POST /rec/recall`` body the gateway must accept."""
    try:
        return request_fields_ok(http_value(raw))
    except Invalid:
        return False


def request_shape(raw: bytes, *, http: bool = False) -> tuple[int, int, bool]:
    """A valid request's ``(users, top_k, diversity > 0)`` (top_k's default is 50)."""
    body = http_value(raw) if http else wire_value(raw)
    assert isinstance(body, dict)
    users = body.get("hist_item") if body.get("hist_item") is not None else body.get("user_ids")
    return len(users or ()), int(body.get("top_k", 50)), float(body.get("diversity") or 0) > 0


def request_uses_history(raw: bytes, *, http: bool = False) -> bool:
    """A valid request that names ``user_ids`` (needs a history source) rather than ``hist_item``."""
    body = http_value(raw) if http else wire_value(raw)
    return isinstance(body, dict) and body.get("user_ids") is not None
