"""Properties of the wire codec and of ingest's batch split under hostile input (pure, no broker).

* ``decode_click`` / ``decode_request`` raise nothing but ``DecodeError``, whatever the bytes, and
  accept exactly what the independent oracle (``tests.fuzz.oracle``) calls valid;
* a ``DecodeError`` reason is short (at most ``MAX_REASON_LENGTH``) and never echoes the payload;
* generated valid messages round-trip ``encode -> decode``;
* ``split_batch`` puts every consumed message either among the valid events or among the dead
  letters (with a reason), conserves counts, and agrees message by message with ``decode_click``,
  including on batches built to fool its one-JSON-array fast path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message
from hypothesis import given
from hypothesis import strategies as st

from schemas.codec import MAX_PAYLOAD_BYTES, MAX_REASON_LENGTH, DecodeError, decode_click, decode_request, encode
from schemas.dlq import DLQ_REASON, DeadLetter
from schemas.headers import get_header
from schemas.messages import ClickEvent, ErrorCode, RecallRequest
from workers.ingest.batch import decode_values, reason_category, split_batch

from . import (
    bad_clicks,
    bad_id_click,
    bad_request_shape,
    bad_requests,
    clicks,
    deeply_nested,
    duplicate_keys,
    fuzz,
    huge_array_click,
    huge_request,
    non_finite_click,
    non_utf8,
    oracle,
    requests,
    simple_clicks,
    truncated,
)

CATEGORIES = {"too_large", "malformed_json", "not_utf8", "empty", "invalid_field"}
ECHO_MIN = 24  # shorter payloads may legitimately appear inside a reason ("1", "[]")

# ---------------------------------------------------------------------------------------- helpers


def _outcome(decoder: Callable[[bytes | None], Any], raw: bytes | None) -> Any:
    """The model, or the ``DecodeError``; anything else escapes and fails the test."""
    try:
        return decoder(raw)
    except DecodeError as exc:
        return exc


def _check_reason(error: DecodeError, raw: bytes | None) -> None:
    assert isinstance(error.code, ErrorCode) and error.code in (ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE)
    assert error.reason and error.reason == str(error)
    assert len(error.reason) <= MAX_REASON_LENGTH, len(error.reason)
    if raw is not None and len(raw) >= ECHO_MIN:
        assert raw.decode("utf-8", "replace") not in error.reason
        assert raw.decode("latin-1") not in error.reason


def _norm(result: ClickEvent | DecodeError) -> tuple[str, Any, Any]:
    if isinstance(result, DecodeError):
        return ("dead", result.reason, result.code)
    return ("valid", result, None)


# ---------------------------------------------------------------------------------------- codec


@fuzz(300)
@given(raw=bad_clicks | huge_array_click() | st.none())
def test_decode_click_raises_only_decode_error_with_a_short_reason(raw: bytes | None) -> None:
    assert not oracle.valid_click(raw)
    result = _outcome(decode_click, raw)
    assert isinstance(result, DecodeError), (raw[:200] if raw else raw, result)
    _check_reason(result, raw)
    assert reason_category(result) in CATEGORIES


@fuzz(300)
@given(raw=bad_requests | st.none())
def test_decode_request_raises_only_decode_error_with_a_short_reason(raw: bytes | None) -> None:
    assert not oracle.valid_request(raw)
    result = _outcome(decode_request, raw)
    assert isinstance(result, DecodeError), (raw[:200] if raw else raw, result)
    _check_reason(result, raw)


@fuzz(300)
@given(raw=bad_clicks | clicks.map(encode) | simple_clicks.map(encode) | duplicate_keys().map(lambda p: p[0]))
def test_decode_click_accepts_exactly_what_the_oracle_calls_valid(raw: bytes) -> None:
    result = _outcome(decode_click, raw)
    assert isinstance(result, ClickEvent) == oracle.valid_click(raw), (raw[:200], result)
    if isinstance(result, ClickEvent):  # and it holds the values the body says (the last of repeated keys)
        body = json.loads(raw)
        assert (result.event_id, result.user_id, result.item_id, result.ts, result.segment) == (
            body["event_id"],
            body["user_id"],
            body["item_id"],
            body["ts"],
            body.get("segment"),
        )


@fuzz(300)
@given(raw=bad_requests | requests.map(encode))
def test_decode_request_accepts_exactly_what_the_oracle_calls_valid(raw: bytes) -> None:
    result = _outcome(decode_request, raw)
    assert isinstance(result, RecallRequest) == oracle.valid_request(raw), (raw[:200], result)
    if isinstance(result, RecallRequest):
        body = json.loads(raw)
        assert (result.hist_item, result.user_ids) == (body.get("hist_item"), body.get("user_ids"))
        assert result.top_k == body.get("top_k", 50)


@fuzz(60)
@given(raw=bad_requests.filter(lambda r: len(r) > 0) | bad_clicks)
def test_both_decoders_agree_on_bytes_that_are_not_json(raw: bytes) -> None:
    """Failures before validation (size, UTF-8, syntax) do not depend on the model."""
    click, request = _outcome(decode_click, raw), _outcome(decode_request, raw)
    if isinstance(click, DecodeError) and click.reason.startswith(("malformed JSON", "not UTF-8")):
        assert isinstance(request, DecodeError) and request.reason == click.reason


@fuzz(40)
@given(raw=huge_request())
def test_arrays_over_their_limit_are_too_large(raw: bytes) -> None:
    error = _outcome(decode_request, raw)
    assert isinstance(error, DecodeError) and error.code is ErrorCode.TOO_LARGE, error
    _check_reason(error, raw)


@fuzz(60)
@given(raw=bad_request_shape())
def test_structurally_wrong_requests_are_rejected(raw: bytes) -> None:
    error = _outcome(decode_request, raw)
    assert isinstance(error, DecodeError), raw
    _check_reason(error, raw)


@fuzz(60)
@given(raw=non_utf8(clicks) | non_utf8(requests))
def test_non_utf8_is_named_as_such(raw: bytes) -> None:
    for decoder in (decode_click, decode_request):
        error = _outcome(decoder, raw)
        assert isinstance(error, DecodeError) and error.reason.startswith("not UTF-8"), error


@fuzz(80)
@given(raw=truncated(clicks) | truncated(requests) | deeply_nested())
def test_truncated_or_deep_json_is_malformed(raw: bytes) -> None:
    error = _outcome(decode_click, raw)
    assert isinstance(error, DecodeError), raw[:80]
    _check_reason(error, raw)


@fuzz(80)
@given(raw=non_finite_click() | bad_id_click())
def test_non_integers_and_out_of_range_ids_are_invalid_fields(raw: bytes) -> None:
    error = _outcome(decode_click, raw)
    assert isinstance(error, DecodeError) and reason_category(error) == "invalid_field", (raw, error)


@fuzz(80)
@given(pair=duplicate_keys())
def test_duplicate_keys_mean_the_last_value(pair: tuple[bytes, bytes]) -> None:
    raw, last_wins = pair
    assert raw.count(b'":') > last_wins.count(b'":'), "no key was repeated"
    got, expected = _outcome(decode_click, raw), _outcome(decode_click, last_wins)
    assert isinstance(got, ClickEvent) == oracle.valid_click(last_wins)
    assert type(got) is type(expected)
    if isinstance(got, ClickEvent):
        assert got == expected


def test_oversized_and_empty_payloads() -> None:
    big = b" " * (MAX_PAYLOAD_BYTES + 1)
    for decoder in (decode_click, decode_request):
        error = _outcome(decoder, big)
        assert isinstance(error, DecodeError) and error.code is ErrorCode.TOO_LARGE
        assert len(error.reason) <= MAX_REASON_LENGTH
        for empty in (None, b""):
            assert isinstance(_outcome(decoder, empty), DecodeError)


@fuzz(200)
@given(event=clicks)
def test_clicks_round_trip(event: ClickEvent) -> None:
    raw = encode(event)
    assert decode_click(raw) == event
    assert encode(decode_click(raw)) == raw
    assert event.kafka_key() == str(event.user_id).encode()


@fuzz(150)
@given(request=requests)
def test_requests_round_trip(request: RecallRequest) -> None:
    raw = encode(request)
    assert decode_request(raw) == request
    assert encode(decode_request(raw)) == raw


@fuzz(100)
@given(
    reason=st.text(max_size=800),
    original=st.lists(st.tuples(st.sampled_from(["trace", DLQ_REASON, "x"]), st.binary(max_size=8)), max_size=4),
    partition=st.integers(0, 2**31 - 1),
    offset=st.integers(0, 2**63 - 1),
)
def test_dead_letter_headers_round_trip(
    reason: str, original: list[tuple[str, bytes]], partition: int, offset: int
) -> None:
    headers = DeadLetter(reason, "clicks", partition, offset).headers(original)
    letter = DeadLetter.from_headers(headers)
    assert letter is not None and (letter.topic, letter.partition, letter.offset) == ("clicks", partition, offset)
    assert [k for k, _ in headers].count(DLQ_REASON) == 1  # an earlier reason is replaced, not repeated
    assert get_header(headers, "trace") == get_header(original, "trace")


# ---------------------------------------------------------------------------------------- batch split


@st.composite
def resplit(draw: st.DrawFn) -> list[bytes]:
    """Valid events joined by ',' and cut again at other commas: each piece alone is not an event,
    yet ``b"[" + b",".join(pieces) + b"]"`` is the JSON array of the original events."""
    events = draw(st.lists(simple_clicks | clicks, min_size=2, max_size=6))
    joined = b",".join(encode(e) for e in events)
    commas = [i for i, c in enumerate(joined) if c == ord(",")]
    cuts = sorted(draw(st.permutations(commas))[: len(events) - 1])
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(joined[start:cut])
        start = cut + 1
    pieces.append(joined[start:])
    return pieces


good_values = st.one_of(simple_clicks, clicks).map(encode)
batch_values = st.lists(st.one_of(good_values, good_values, bad_clicks, st.none()), max_size=40)


def _messages(values: list[bytes | None], partitions: list[int], eofs: int) -> list[Message]:
    messages, next_offset = [], dict.fromkeys(range(3), 0)
    for value, partition in zip(values, partitions, strict=True):
        messages.append(Message(topic="clicks", partition=partition, offset=next_offset[partition], value=value))
        next_offset[partition] += 1 + partition  # gaps, as compacted or transactional logs have
    eof = KafkaError(KafkaError._PARTITION_EOF)
    messages += [Message(topic="clicks", partition=p % 3, offset=-1, error=eof) for p in range(eofs)]
    return messages


@fuzz(150)
@given(data=st.data(), values=batch_values | resplit().map(list), eofs=st.integers(0, 2))
def test_split_batch_classifies_every_message_and_conserves_counts(
    data: st.DataObject, values: list[bytes | None], eofs: int
) -> None:
    partitions = data.draw(st.lists(st.integers(0, 2), min_size=len(values), max_size=len(values)))
    messages = _messages(values, partitions, eofs)
    batch = split_batch(messages)

    assert batch.consumed == len(values)  # partition-EOF events are not messages
    assert batch.valid + len(batch.rejected) == batch.consumed
    expected_events: dict[int, list[ClickEvent]] = {}
    expected_dead: list[tuple[int, int, str]] = []
    for msg in messages[: len(values)]:
        result = _outcome(decode_click, msg.value())
        if isinstance(result, DecodeError):
            expected_dead.append((msg.partition() or 0, msg.offset() or 0, result.reason))
        else:
            expected_events.setdefault(msg.partition() or 0, []).append(result)
    got_events = {p: part.events for (_, p), part in batch.partitions.items() if part.events}
    assert got_events == expected_events
    assert [(m.partition(), m.offset(), e.reason) for m, e in batch.rejected] == expected_dead
    for _, error in batch.rejected:
        assert error.reason and reason_category(error) in CATEGORIES
    for (_, p), part in batch.partitions.items():
        assert part.last_offset == max(m.offset() or 0 for m in messages[: len(values)] if m.partition() == p)


@fuzz(150)
@given(values=resplit() | batch_values | st.lists(good_values, min_size=1, max_size=30))
def test_fast_path_agrees_with_decoding_each_message(values: list[bytes | None]) -> None:
    assert [_norm(r) for r in decode_values(values)] == [_norm(_outcome(decode_click, v)) for v in values]


def test_a_piece_of_an_event_is_never_an_event() -> None:
    """The case the fuzzer found: a value ending inside an object makes the join comma a field separator."""
    first, second = (ClickEvent(event_id=f"e{i}", user_id=1, item_id=2, ts=3) for i in (1, 2))
    joined = encode(first) + b"," + encode(second)
    cut = joined.index(b",")  # after "schema_version":1
    values: list[bytes | None] = [joined[:cut], joined[cut + 1 :]]
    assert all(isinstance(r, DecodeError) for r in decode_values(values))
    batch = split_batch(_messages(values, [0, 0], 0))
    assert batch.valid == 0 and len(batch.rejected) == 2


def test_empty_batches() -> None:
    assert decode_values([]) == []
    batch = split_batch([])
    assert (batch.consumed, batch.valid, batch.rejected, batch.partitions) == (0, 0, [], {})
    only_eof = split_batch(_messages([], [], 3))
    assert (only_eof.consumed, only_eof.valid, only_eof.rejected) == (0, 0, [])
