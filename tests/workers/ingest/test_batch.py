"""The batch decode fast path must equal decoding each message alone."""

from __future__ import annotations

import re

from schemas.codec import DecodeError
from schemas.messages import ClickEvent
from workers.ingest.batch import COMMA_STRING_FIELDS, decode_values, reason_category

GOOD = b'{"event_id": "a", "user_id": 1, "item_id": 2, "ts": 3}'


def test_comma_string_fields_cover_the_model() -> None:
    """If ClickEvent gains a string field whose pattern admits ',', the fast path's guard must know it."""
    admits_comma = []
    for name, info in ClickEvent.model_fields.items():
        patterns = [m.pattern for m in info.metadata if hasattr(m, "pattern") and m.pattern]
        if info.annotation in (str, str | None) and (not patterns or re.fullmatch(patterns[0], ",")):
            admits_comma.append(name)
    assert tuple(admits_comma) == COMMA_STRING_FIELDS


def test_a_value_cannot_swallow_its_neighbour() -> None:
    split_string = [b'{"event_id": "x', b'", "user_id": 1, "item_id": 2, "ts": 3}']
    two_in_one = b'{"event_id": "b", "user_id": 1, "item_id": 2, "ts": 3},' + GOOD
    results = decode_values([*split_string, two_in_one])
    assert all(isinstance(r, DecodeError) for r in results)


def test_fast_path_and_fallback_agree() -> None:
    values = [GOOD, b"{", None, b"\xff", b'{"event_id": "a", "user_id": 0, "item_id": 2, "ts": 3}']
    results = decode_values(values)
    assert isinstance(results[0], ClickEvent)
    assert [reason_category(r) for r in results[1:] if isinstance(r, DecodeError)] == [
        "malformed_json",
        "empty",
        "not_utf8",
        "invalid_field",
    ]
    assert decode_values([GOOD, GOOD]) == [results[0], results[0]]
