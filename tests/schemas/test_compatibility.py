"""The fields added to ``RecallRequest`` / ``RecallReply`` and the compatibility policy of
docs/wire-protocol.md: old bodies still decode, new fields are left out while unset (an older reader gets
the bytes it knows), requests stay strict, clients read replies leniently."""

from __future__ import annotations

import json

import pytest

from schemas.codec import DecodeError, decode_reply, decode_request, encode
from schemas.messages import (
    MAX_EXCLUDE_ITEMS,
    MAX_FILTER_CATEGORIES,
    MAX_FILTER_SEGMENTS,
    ErrorCode,
    ErrorReply,
    RecallFilters,
    RecallReply,
    RecallRequest,
)

# Bodies exactly as the previous release wrote them (its encode: every field, nulls included).
OLD_REQUEST = b'{"schema_version":1,"hist_item":null,"user_ids":[7,8],"top_k":20,"diversity":null}'
OLD_REPLY = (
    b'{"schema_version":1,"items":[[3,1],[]],"scores":[[0.9,0.5],[]],"model_version":"v3","generation":2,'
    b'"collection":"mindstream_items_v3","took_ms":4.5}'
)


def _raw(**body: object) -> bytes:
    return json.dumps(body).encode()


# -- old bodies, new code ---------------------------------------------------------------------------


def test_an_old_request_decodes_with_the_additions_absent() -> None:
    request = decode_request(OLD_REQUEST)
    assert request.user_ids == [7, 8] and request.top_k == 20
    assert (request.exclude_seen, request.filters, request.fallback) == (None, None, None)


def test_a_request_without_additions_encodes_to_the_old_bytes() -> None:
    assert encode(decode_request(OLD_REQUEST)) == OLD_REQUEST  # an older worker accepts what a newer client sends


def test_an_old_reply_decodes_strictly_and_leniently() -> None:
    for lenient in (False, True):
        reply = decode_reply(OLD_REPLY, lenient=lenient)
        assert isinstance(reply, RecallReply)
        assert reply.items == [[3, 1], []] and reply.generation == 2 and reply.source is None


def test_a_reply_without_source_encodes_to_the_old_bytes() -> None:
    assert encode(decode_reply(OLD_REPLY)) == OLD_REPLY  # an older client's strict decode still reads it


# -- the additions ----------------------------------------------------------------------------------


def test_request_with_every_addition_round_trips() -> None:
    filters = RecallFilters(
        include_segments=["de", "at"],
        exclude_segments=["ch"],
        include_categories=["Comedy"],
        exclude_categories=["Horror", "Children's"],
        exclude_items=[5, 6],
    )
    request = RecallRequest(user_ids=[1], exclude_seen=True, filters=filters, fallback="popular")
    assert decode_request(encode(request)) == request
    body = json.loads(encode(request))
    assert body["exclude_seen"] is True and body["fallback"] == "popular"
    assert body["filters"]["exclude_items"] == [5, 6]


def test_exclude_seen_false_is_sent_as_given() -> None:
    assert json.loads(encode(RecallRequest(hist_item=[[1]], exclude_seen=False)))["exclude_seen"] is False


def test_empty_filters_are_no_filter() -> None:
    filters = decode_request(_raw(user_ids=[1], filters={})).filters
    assert filters == RecallFilters()
    assert filters is not None and filters.admits(None, ())


@pytest.mark.parametrize(
    ("filters", "reason"),
    [
        ({"include_segments": []}, "filters.include_segments: List should have at least 1 item"),
        ({"include_categories": []}, "filters.include_categories: List should have at least 1 item"),
        ({"include_segments": ["a b"]}, "filters.include_segments.0: String should match pattern"),
        ({"exclude_categories": ['x"y']}, "filters.exclude_categories.0: String should match pattern"),
        ({"exclude_items": [0]}, "filters.exclude_items.0: Input should be greater than or equal to 1"),
        ({"exclude_items": ["5"]}, "filters.exclude_items.0: Input should be a valid integer"),
        ({"include_segments": ["de"], "exclude_segments": ["de"]}, "segment 'de' is both included and excluded"),
        ({"include_categories": ["A"], "exclude_categories": ["A"]}, "category 'A' is both included and excluded"),
        ({"region": "eu"}, "filters.region: Extra inputs are not permitted"),
    ],
)
def test_bad_filters_are_named(filters: dict[str, object], reason: str) -> None:
    with pytest.raises(DecodeError, match=reason) as info:
        decode_request(_raw(user_ids=[1], filters=filters))
    assert info.value.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    ("filters", "reason"),
    [
        ({"exclude_items": list(range(1, MAX_EXCLUDE_ITEMS + 2))}, "filters.exclude_items: List should have at most"),
        ({"include_segments": [f"s{n}" for n in range(MAX_FILTER_SEGMENTS + 1)]}, "filters.include_segments: List"),
        ({"exclude_categories": [f"c{n}" for n in range(MAX_FILTER_CATEGORIES + 1)]}, "filters.exclude_categories"),
    ],
)
def test_filters_over_the_bounds_are_too_large(filters: dict[str, object], reason: str) -> None:
    with pytest.raises(DecodeError, match=reason) as info:
        decode_request(_raw(user_ids=[1], filters=filters))
    assert info.value.code is ErrorCode.TOO_LARGE


def test_filters_at_the_bounds_pass() -> None:
    filters = {"exclude_items": list(range(1, MAX_EXCLUDE_ITEMS + 1))}
    assert len(decode_request(_raw(user_ids=[1], filters=filters)).filters.exclude_items or ()) == MAX_EXCLUDE_ITEMS  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"exclude_seen": "yes"}, "exclude_seen: Input should be a valid boolean"),
        ({"exclude_seen": 1}, "exclude_seen: Input should be a valid boolean"),
        ({"fallback": "trending"}, "fallback: Input should be 'popular'"),
    ],
)
def test_bad_additions_are_named(body: dict[str, object], reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_request(_raw(user_ids=[1], **body))


def test_filters_meaning() -> None:
    f = RecallFilters(include_segments=["de"], exclude_categories=["Horror"], exclude_items=[9])
    assert f.admits("de", ("Comedy",), 1)
    assert not f.admits("fr", ("Comedy",), 1)  # not an included segment
    assert not f.admits(None, (), 1)  # no segment is no included segment
    assert not f.admits("de", ("Comedy", "Horror"), 1)  # one excluded category is enough
    assert not f.admits("de", (), 9)  # an excluded item
    g = RecallFilters(include_categories=["A", "B"], exclude_segments=["x"])
    assert g.admits(None, ("B",)) and g.admits("y", ("A", "C"))
    assert not g.admits(None, ("C",))  # none of the included categories
    assert not g.admits(None, ())
    assert not g.admits("x", ("A",))


def test_reply_source_per_user() -> None:
    reply = RecallReply(
        items=[[3], [7, 8]],
        scores=[[0.5], [4.0, 2.0]],
        model_version="v1",
        collection="c",
        took_ms=1.0,
        source=["model", "popular"],
    )
    assert decode_reply(encode(reply)) == reply
    assert json.loads(encode(reply))["source"] == ["model", "popular"]
    with pytest.raises(ValueError, match="one entry per user"):
        RecallReply(items=[[1]], scores=[[1.0]], model_version="v", collection="c", took_ms=0, source=[])
    with pytest.raises(DecodeError, match=r"source\.0"):
        decode_reply(OLD_REPLY.replace(b"}", b',"source":["cache","model"]}'))


# -- the policy: strict requests, lenient replies ----------------------------------------------------


def test_a_request_from_a_newer_writer_is_refused_naming_the_field() -> None:
    with pytest.raises(DecodeError, match="boost: Extra inputs are not permitted") as info:
        decode_request(OLD_REQUEST.replace(b"}", b',"boost":2}'))
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_a_reply_from_a_newer_writer_decodes_leniently_and_not_strictly() -> None:
    newer = OLD_REPLY.replace(b"}", b',"source":["model","popular"],"cache_hit":true,"trace":{"a":[1]}}')
    reply = decode_reply(newer, lenient=True)
    assert isinstance(reply, RecallReply) and type(reply) is RecallReply
    assert reply.source == ["model", "popular"] and reply.items == [[3, 1], []]
    with pytest.raises(DecodeError, match="cache_hit"):
        decode_reply(newer)


def test_lenient_replies_still_check_what_they_know() -> None:
    for bad in (
        OLD_REPLY.replace(b'"schema_version":1', b'"schema_version":2'),  # a breaking change: refused
        OLD_REPLY.replace(b"[[0.9,0.5],[]]", b"[[0.9],[]]"),  # shapes
        OLD_REPLY.replace(b'"took_ms":4.5', b'"took_ms":"4.5"'),  # types
    ):
        with pytest.raises(DecodeError):
            decode_reply(bad, lenient=True)


def test_an_unknown_error_code_reads_as_internal() -> None:
    newer = _raw(code="throttled", message="slow down", retry_after_ms=200)
    reply = decode_reply(newer, lenient=True)
    assert reply == ErrorReply(code=ErrorCode.INTERNAL, message="throttled: slow down")
    known = decode_reply(_raw(code="timeout", message="late", extra=1), lenient=True)
    assert known == ErrorReply(code=ErrorCode.TIMEOUT, message="late")
    with pytest.raises(DecodeError):
        decode_reply(newer)
