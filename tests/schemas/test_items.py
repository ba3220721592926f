"""The catalogue's ``ItemEvent`` through the codec: good and bad events, bounds, the Kafka key."""

from __future__ import annotations

import json

import pytest

from schemas.codec import DecodeError, decode_item, encode
from schemas.messages import (
    MAX_CATEGORIES_PER_ITEM,
    MAX_CATEGORY_LENGTH,
    MAX_TITLE_LENGTH,
    ErrorCode,
    ItemEvent,
)

ITEM = {"item_id": 42, "ts": 1_700_000_000_000, "available": True}


def _raw(**body: object) -> bytes:
    return json.dumps(body).encode()


def test_item_round_trip_and_key() -> None:
    categories = ["Animation", "Children's"]
    event = ItemEvent(item_id=42, ts=5, available=False, title="Toy Story (1995)", categories=categories, segment="en")
    assert decode_item(encode(event)) == event
    assert event.kafka_key() == b"42"
    assert event.schema_version == 1


def test_minimal_item_has_no_metadata() -> None:
    event = decode_item(_raw(**ITEM))
    assert (event.title, event.categories, event.segment) == (None, None, None)
    assert event.available is True


def test_repeated_categories_are_dropped_in_order() -> None:
    event = decode_item(_raw(**ITEM, categories=["b", "a", "b", "a", "c"]))
    assert event.categories == ["b", "a", "c"]
    assert decode_item(encode(event)) == event


@pytest.mark.parametrize(
    "category", ["Action", "Children's", "Sci-Fi", "Film Noir", "Élégance", "科幻", "a&b/c", "x" * MAX_CATEGORY_LENGTH]
)
def test_printable_categories_pass(category: str) -> None:
    assert decode_item(_raw(**ITEM, categories=[category])).categories == [category]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"available": None}, "available"),
        ({"available": "false"}, "available"),  # strict: no string coercion
        ({"available": 0}, "available"),
        ({"item_id": 0}, "item_id"),
        ({"item_id": "42"}, "item_id"),
        ({"ts": -1}, "ts"),
        ({"title": ""}, "title"),
        ({"title": "line\nbreak"}, "title"),
        ({"categories": [""]}, "categories.0"),
        ({"categories": [" padded"]}, "categories.0"),
        ({"categories": ["padded "]}, "categories.0"),
        ({"categories": ['quo"te']}, "categories.0"),
        ({"categories": ["back\\slash"]}, "categories.0"),
        ({"categories": ["tab\there"]}, "categories.0"),
        ({"categories": [3]}, "categories.0"),
        ({"categories": "Action"}, "categories"),
        ({"segment": "../etc"}, "segment"),
        ({"schema_version": 2}, "schema_version"),
        ({"price": 3}, "price"),
    ],
)
def test_bad_items_are_rejected_with_the_field_named(change: dict[str, object], where: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_item(_raw(**{**ITEM, **change}))
    assert info.value.reason.startswith(where)
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_available_is_required() -> None:
    with pytest.raises(DecodeError, match="available: Field required"):
        decode_item(_raw(item_id=1, ts=1))


@pytest.mark.parametrize(
    ("change", "reason", "code"),
    [
        ({"title": "t" * (MAX_TITLE_LENGTH + 1)}, "title: String should have at most 256", ErrorCode.BAD_REQUEST),
        (
            {"categories": [f"c{n}" for n in range(MAX_CATEGORIES_PER_ITEM + 1)]},
            "categories: List should have at most",
            ErrorCode.TOO_LARGE,  # lists over their bound are too_large, long strings bad_request (as for clicks)
        ),
        (
            {"categories": ["x" * (MAX_CATEGORY_LENGTH + 1)]},
            "categories.0: String should have at most 64",
            ErrorCode.BAD_REQUEST,
        ),
    ],
)
def test_items_over_the_bounds_are_refused(change: dict[str, object], reason: str, code: ErrorCode) -> None:
    with pytest.raises(DecodeError, match=reason) as info:
        decode_item(_raw(**{**ITEM, **change}))
    assert info.value.code is code


def test_items_at_the_bounds_pass() -> None:
    body = {
        **ITEM,
        "title": "t" * MAX_TITLE_LENGTH,
        "categories": [f"{n:0{MAX_CATEGORY_LENGTH}d}" for n in range(MAX_CATEGORIES_PER_ITEM)],
    }
    event = decode_item(_raw(**body))
    assert len(event.categories or ()) == MAX_CATEGORIES_PER_ITEM


@pytest.mark.parametrize(("raw", "reason"), [(None, "empty message"), (b"{", "malformed JSON"), (b"\xff", "not UTF-8")])
def test_malformed_item_bytes(raw: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_item(raw)
