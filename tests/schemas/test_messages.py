"""Validation of the wire models through the codec: good and bad clicks, requests and replies."""

from __future__ import annotations

import json

import pytest

from schemas.codec import DecodeError, decode_click, decode_reply, decode_request, encode
from schemas.messages import (
    MAX_SEQUENCE_LENGTH,
    MAX_USERS_PER_REQUEST,
    ClickEvent,
    ErrorCode,
    ErrorReply,
    RecallReply,
    RecallRequest,
)


def _raw(**body: object) -> bytes:
    return json.dumps(body).encode()


CLICK = {"event_id": "e-1", "user_id": 7, "item_id": 42, "ts": 1_700_000_000_000}


def test_click_round_trip_and_key() -> None:
    event = ClickEvent(event_id="e-1", user_id=7, item_id=42, ts=5, segment="en-US")
    assert decode_click(encode(event)) == event
    assert event.kafka_key() == b"7"
    assert event.schema_version == 1
    assert b" " not in encode(event)


def test_click_minimal_body_gets_defaults() -> None:
    event = decode_click(_raw(**CLICK))
    assert event.segment is None and event.schema_version == 1


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"user_id": 0}, "user_id"),
        ({"item_id": -3}, "item_id"),
        ({"user_id": "7"}, "user_id"),  # strict: no string coercion
        ({"user_id": 7.5}, "user_id"),
        ({"user_id": True}, "user_id"),
        ({"ts": -1}, "ts"),
        ({"event_id": ""}, "event_id"),
        ({"event_id": "has space"}, "event_id"),
        ({"event_id": "x" * 129}, "event_id"),
        ({"segment": "../etc"}, "segment"),
        ({"segment": "x" * 33}, "segment"),
        ({"schema_version": 2}, "schema_version"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_clicks_are_rejected_with_the_field_named(change: dict[str, object], where: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_click(_raw(**{**CLICK, **change}))
    assert info.value.reason.startswith(where)
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_missing_fields_are_listed() -> None:
    with pytest.raises(DecodeError, match="event_id: Field required"):
        decode_click(b"{}")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "body: Input should be an object"),
        (None, "empty message"),
    ],
)
def test_malformed_bytes(raw: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_click(raw)


def test_reason_is_short_and_does_not_echo_the_payload() -> None:
    secret = "S3CR3T" * 50
    body = {"event_id": secret + " ", "user_id": secret, "item_id": secret, "ts": secret, "segment": secret}
    with pytest.raises(DecodeError) as info:
        decode_click(_raw(**body))
    assert "S3CR3T" not in info.value.reason
    assert len(info.value.reason) <= 300
    assert "more)" in info.value.reason


def test_request_with_sequences_and_defaults() -> None:
    request = decode_request(_raw(hist_item=[[43, 23, 65], [675, 3456]]))
    assert request.top_k == 50 and request.user_ids is None and request.n_users == 2
    assert decode_request(encode(request)) == request


def test_request_with_user_ids() -> None:
    request = decode_request(_raw(user_ids=[1, 2, 3], top_k=10))
    assert request.user_ids == [1, 2, 3] and request.hist_item is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "exactly one of hist_item or user_ids"),
        ({"hist_item": [[1]], "user_ids": [1]}, "exactly one of hist_item or user_ids"),
        ({"hist_item": []}, "hist_item: List should have at least 1 item"),
        ({"hist_item": [[1], []]}, "hist_item.1: List should have at least 1 item"),
        ({"hist_item": [[1, 0]]}, "hist_item.0.1: Input should be greater than or equal to 1"),
        ({"user_ids": [1], "top_k": 0}, "top_k"),
        ({"user_ids": [1], "top_k": 1001}, "top_k: Input should be less than or equal to 1000"),
        ({"user_ids": [1], "correlation_id": "abc"}, "correlation_id: Extra inputs are not permitted"),
    ],
)
def test_bad_requests(body: dict[str, object], reason: str) -> None:
    with pytest.raises(DecodeError, match=reason) as info:
        decode_request(_raw(**body))
    assert info.value.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"user_ids": list(range(1, MAX_USERS_PER_REQUEST + 2))}, "user_ids: List should have at most 256"),
        ({"hist_item": [[1]] * (MAX_USERS_PER_REQUEST + 1)}, "hist_item: List should have at most 256"),
        ({"hist_item": [[1] * (MAX_SEQUENCE_LENGTH + 1)]}, "hist_item.0: List should have at most 1000"),
    ],
)
def test_requests_over_the_limits_are_too_large(body: dict[str, object], reason: str) -> None:
    with pytest.raises(DecodeError, match=reason) as info:
        decode_request(_raw(**body))
    assert info.value.code is ErrorCode.TOO_LARGE


def test_requests_at_the_limits_pass() -> None:
    body = {"hist_item": [[1] * MAX_SEQUENCE_LENGTH] * MAX_USERS_PER_REQUEST, "top_k": 1000}
    assert decode_request(_raw(**body)).n_users == MAX_USERS_PER_REQUEST


def test_replies_decode_to_the_right_kind() -> None:
    reply = RecallReply(items=[[3, 1]], scores=[[0.9, 0.5]], model_version="m1", collection="c1", took_ms=2.5)
    error = ErrorReply(code=ErrorCode.TIMEOUT, message="search took too long")
    assert decode_reply(encode(reply)) == reply
    assert decode_reply(encode(error)) == error
    assert json.loads(encode(error))["code"] == "timeout"


def test_reply_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="same shape"):
        RecallReply(items=[[1, 2]], scores=[[0.1]], model_version="m", collection="c", took_ms=0)


def test_long_error_messages_are_truncated() -> None:
    error = ErrorReply(code=ErrorCode.INTERNAL, message="x" * 5000)
    assert len(error.message) == 1000 and error.message.endswith("…")


def test_models_are_frozen() -> None:
    request = RecallRequest(user_ids=[1])
    with pytest.raises(ValueError, match="frozen"):
        setattr(request, "top_k", 3)  # noqa: B010
