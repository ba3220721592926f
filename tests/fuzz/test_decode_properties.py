"""Properties of the wire codec and of ingest's batch split under hostile input (pure, no broker).

* ``decode_click`` / ``decode_request`` raise nothing but ``DecodeError``, whatever the bytes;
* a ``DecodeError`` reason is short (at most ``MAX_REASON_LENGTH``) and never echoes the payload;
* generated valid messages round-trip ``encode -> decode``;
* ``split_batch`` puts every consumed message either among the valid events or among the dead
  letters (with a reason), conserves counts, and agrees message by message with ``decode_click``,
  including on batches built to fool its one-JSON-array fast path.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message
from hypothesis import given
from hypothesis import strategies as st

from schemas.codec import MAX_PAYLOAD_BYTES, MAX_REASON_LENGTH, DecodeError, decode_click, decode_request, encode
from schemas.dlq import DLQ_REASON, DeadLetter
from schemas.headers import get_header
from schemas.messages import (
    MAX_EVENT_ID_LENGTH,
    MAX_ID,
    MAX_SEGMENT_LENGTH,
    MAX_SEQUENCE_LENGTH,
    MAX_TOP_K,
    MAX_USERS_PER_REQUEST,
    ClickEvent,
    ErrorCode,
    RecallRequest,
)
from workers.ingest_batch import decode_values, reason_category, split_batch

from . import fuzz

CATEGORIES = {"too_large", "malformed_json", "not_utf8", "empty", "invalid_field"}
ECHO_MIN = 24  # shorter payloads may legitimately appear inside a reason ("1", "[]")

# ---------------------------------------------------------------------------------------- strategies

ids = st.one_of(st.integers(1, 1000), st.integers(1, MAX_ID), st.just(MAX_ID))  # "unknown" ids are valid ids
bad_ids = st.one_of(
    st.just(0), st.integers(max_value=0), st.integers(MAX_ID + 1, 2**80), st.just(-(2**63)), st.just(2**64)
)
event_ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=MAX_EVENT_ID_LENGTH)
plain_event_ids = st.text(string.ascii_letters + string.digits + "-_.:", min_size=1, max_size=16)
segments = st.none() | st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=MAX_SEGMENT_LENGTH)
clicks = st.builds(
    ClickEvent, event_id=event_ids, user_id=ids, item_id=ids, ts=st.integers(0, MAX_ID), segment=segments
)
simple_clicks = st.builds(ClickEvent, event_id=plain_event_ids, user_id=ids, item_id=ids, ts=st.integers(0, 2**41))

sequences = st.lists(ids, min_size=1, max_size=8)
requests = st.one_of(
    st.builds(
        RecallRequest, hist_item=st.lists(sequences, min_size=1, max_size=4), top_k=st.integers(1, MAX_TOP_K)
    ),
    st.builds(RecallRequest, user_ids=st.lists(ids, min_size=1, max_size=8), top_k=st.integers(1, MAX_TOP_K)),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
NON_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1.0", b"1e2", b"true", b"null"]
BAD_UTF8 = [b"\xff", b"\xfe\xff", b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80"]


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8")


def _click_dict(event: ClickEvent) -> dict[str, Any]:
    return dict(json.loads(encode(event)))


@st.composite
def wrong_field(draw: st.DrawFn, model: st.SearchStrategy[Any]) -> bytes:
    """A valid message with one field replaced by any JSON value (wrong types, nulls, nested)."""
    body = json.loads(encode(draw(model)))
    field = draw(st.sampled_from(sorted(body)))
    body[field] = draw(json_values)
    return _dumps(body)


@st.composite
def bad_id_click(draw: st.DrawFn) -> bytes:
    body = _click_dict(draw(clicks))
    body[draw(st.sampled_from(["user_id", "item_id", "ts"]))] = draw(bad_ids.filter(lambda i: i < 0 or i > MAX_ID))
    return _dumps(body)


@st.composite
def non_finite_click(draw: st.DrawFn) -> bytes:
    """NaN / Infinity / floats / booleans written where an integer must be (raw JSON tokens)."""
    field = draw(st.sampled_from(["user_id", "item_id", "ts", "schema_version"]))
    body = {"event_id": "e1", "user_id": 1, "item_id": 2, "ts": 3}
    text = json.dumps({**body, field: "__TOKEN__"}).encode()
    return text.replace(b'"__TOKEN__"', draw(st.sampled_from(NON_FINITE)))


@st.composite
def truncated(draw: st.DrawFn, model: st.SearchStrategy[Any]) -> bytes:
    raw = encode(draw(model))
    return raw[: draw(st.integers(0, len(raw) - 1))]


@st.composite
def non_utf8(draw: st.DrawFn, model: st.SearchStrategy[Any]) -> bytes:
    raw = encode(draw(model))
    at = draw(st.integers(0, len(raw)))
    return raw[:at] + draw(st.sampled_from(BAD_UTF8)) + raw[at:]


@st.composite
def deeply_nested(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(1, 5000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    inner = opener * depth + b"1" + closer * draw(st.sampled_from([depth, 0, depth // 2]))
    return draw(st.sampled_from([inner, b'{"hist_item": ' + inner + b"}", b'{"event_id": ' + inner + b"}"]))


@st.composite
def duplicate_keys(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A click object with repeated keys, and the same object with only each key's last value."""
    pairs = list(_click_dict(draw(clicks)).items())
    extra = draw(st.lists(st.tuples(st.sampled_from([k for k, _ in pairs]), json_scalars | ids), max_size=4))
    mixed = draw(st.permutations(pairs + extra))
    raw = b"{" + b",".join(_dumps(k) + b":" + _dumps(v) for k, v in mixed) + b"}"
    return raw, _dumps(dict(mixed))


@st.composite
def huge_request(draw: st.DrawFn) -> bytes:
    """Valid in every respect except one array over its limit (users or one sequence)."""
    kind = draw(st.sampled_from(["users", "user_ids", "sequence"]))
    if kind == "users":
        body: dict[str, Any] = {"hist_item": [[1]] * draw(st.integers(MAX_USERS_PER_REQUEST + 1, 400))}
    elif kind == "user_ids":
        body = {"user_ids": list(range(1, draw(st.integers(MAX_USERS_PER_REQUEST + 2, 2000))))}
    else:
        body = {"hist_item": [[7] * draw(st.integers(MAX_SEQUENCE_LENGTH + 1, 3 * MAX_SEQUENCE_LENGTH))]}
    return _dumps(body)


@st.composite
def bad_request_shape(draw: st.DrawFn) -> bytes:
    """Requests wrong whatever their ``top_k``: no source, both, empty lists, bad ids, unknown keys."""
    source = draw(
        st.sampled_from(
            [
                {},
                {"hist_item": [[1]], "user_ids": [1]},
                {"hist_item": []},
                {"hist_item": [[]]},
                {"user_ids": []},
                {"hist_item": None, "user_ids": None},
                {"hist_item": [[1, 2]], "user_id": [1]},
            ]
        )
        | st.builds(lambda i: {"hist_item": [[1, i]]}, bad_ids)
        | st.builds(lambda i: {"user_ids": [i]}, bad_ids)
    )
    top_k = draw(st.none() | st.integers(MAX_TOP_K + 1, 2**70) | st.integers(-(2**70), 0) | json_scalars)
    return _dumps(source if top_k is None else {**source, "top_k": top_k})


garbage = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    json_values.map(_dumps),
    deeply_nested(),
    st.sampled_from([b"", b" ", b"null", b"[]", b"{}", b"\xef\xbb\xbf{}", b'"\\ud800"', b"1" * 5000]),
)
bad_clicks = st.one_of(
    garbage,
    wrong_field(clicks),
    bad_id_click(),
    non_finite_click(),
    truncated(clicks),
    non_utf8(clicks),
    duplicate_keys().map(lambda pair: pair[0]),
)
bad_requests = st.one_of(
    garbage, wrong_field(requests), truncated(requests), non_utf8(requests), huge_request(), bad_request_shape()
)


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
@given(raw=bad_clicks | st.none())
def test_decode_click_raises_only_decode_error_with_a_short_reason(raw: bytes | None) -> None:
    result = _outcome(decode_click, raw)
    if isinstance(result, DecodeError):
        _check_reason(result, raw)
        assert reason_category(result) in CATEGORIES
    else:
        assert isinstance(result, ClickEvent)  # e.g. duplicate keys: the last value wins, as in json.loads


@fuzz(300)
@given(raw=bad_requests | st.none())
def test_decode_request_raises_only_decode_error_with_a_short_reason(raw: bytes | None) -> None:
    result = _outcome(decode_request, raw)
    if isinstance(result, DecodeError):
        _check_reason(result, raw)
    else:
        assert isinstance(result, RecallRequest)


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
    got, expected = _outcome(decode_click, raw), _outcome(decode_click, last_wins)
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
