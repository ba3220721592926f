"""Fuzz and property tests: bad input of every shape must end as a typed error, never a crash.

``FUZZ`` is the hypothesis profile of this package: derandomized (the same examples on every run, so
CI is stable), no deadline (the machine is shared), no example database, a modest example budget.
The strategies below are shared by the pure property tests and the broker / HTTP tests, which draw
one dataset each with :func:`generate` instead of running a broker round trip per example.
"""

from __future__ import annotations

import json
import string
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from schemas.codec import encode
from schemas.messages import (
    MAX_DIVERSITY,
    MAX_EVENT_ID_LENGTH,
    MAX_ID,
    MAX_SEGMENT_LENGTH,
    MAX_SEQUENCE_LENGTH,
    MAX_TOP_K,
    MAX_USERS_PER_REQUEST,
    ClickEvent,
    RecallRequest,
)

from . import oracle

T = TypeVar("T")

_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large]  # filter_too_much stays on: filters must not starve
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=_CHECKS, database=None)


def fuzz(max_examples: int) -> settings:
    """``FUZZ`` with another example budget."""
    return settings(FUZZ, max_examples=max_examples)


def generate(strategy: st.SearchStrategy[T], n: int, seed_: int = 2026) -> list[T]:
    """Up to ``n`` examples of ``strategy``, the same on every run (one dataset for a broker test).

    Hypothesis's generation phase alone: early examples are simple, later ones wilder, no shrinking.
    """
    drawn: list[T] = []

    @seed(seed_)
    @settings(FUZZ, max_examples=n, derandomize=False, phases=[Phase.generate])
    @given(strategy)
    def collect(example: T) -> None:
        drawn.append(example)

    collect()
    return drawn


ids = st.one_of(st.integers(1, 1000), st.integers(1, MAX_ID), st.just(MAX_ID))  # "unknown" ids are valid ids
bad_ids = st.one_of(  # for user and item ids, whose range starts at 1 (0 is the padding id)
    st.just(0), st.integers(max_value=0), st.integers(MAX_ID + 1, 2**80), st.just(-(2**63)), st.just(2**64)
)
bad_timestamps = st.one_of(  # ts starts at 0
    st.integers(max_value=-1), st.integers(MAX_ID + 1, 2**80), st.just(-(2**63)), st.just(2**64)
)
event_ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=MAX_EVENT_ID_LENGTH)
plain_event_ids = st.text(string.ascii_letters + string.digits + "-_.:", min_size=1, max_size=16)
segments = st.none() | st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=MAX_SEGMENT_LENGTH)
clicks = st.builds(
    ClickEvent, event_id=event_ids, user_id=ids, item_id=ids, ts=st.integers(0, MAX_ID), segment=segments
)
simple_clicks = st.builds(ClickEvent, event_id=plain_event_ids, user_id=ids, item_id=ids, ts=st.integers(0, 2**41))

sequences = st.lists(ids, min_size=1, max_size=8)
diversities = st.none() | st.just(0.0) | st.floats(0, MAX_DIVERSITY)
requests = st.one_of(
    st.builds(
        RecallRequest,
        hist_item=st.lists(sequences, min_size=1, max_size=4),
        top_k=st.integers(1, MAX_TOP_K),
        diversity=diversities,
    ),
    st.builds(
        RecallRequest,
        user_ids=st.lists(ids, min_size=1, max_size=8),
        top_k=st.integers(1, MAX_TOP_K),
        diversity=diversities,
    ),
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
    field = draw(st.sampled_from(["user_id", "item_id", "ts"]))
    body[field] = draw(bad_timestamps if field == "ts" else bad_ids)
    return _dumps(body)


@st.composite
def non_finite_click(draw: st.DrawFn) -> bytes:
    """NaN / Infinity / floats / booleans written where an integer must be (raw JSON tokens)."""
    field = draw(st.sampled_from(["user_id", "item_id", "ts"]))  # not schema_version: Literal[1] takes 1.0, true
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
    """A click object with at least one repeated key, and the same object with only each key's last value."""
    pairs = list(_click_dict(draw(clicks)).items())
    extra = draw(
        st.lists(st.tuples(st.sampled_from([k for k, _ in pairs]), json_scalars | ids), min_size=1, max_size=4)
    )
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
    body = source if top_k is None else {**source, "top_k": top_k}
    diversity = draw(st.none() | st.floats(max_value=-1e-9) | st.floats(min_value=1000.0001) | json_scalars)
    return _dumps(body if diversity is None else {**body, "diversity": diversity})


garbage = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    json_values.map(_dumps),
    deeply_nested(),
    st.sampled_from([b"", b" ", b"null", b"[]", b"{}", b"\xef\xbb\xbf{}", b'"\\ud800"', b"1" * 5000]),
)
# Only bodies the independent oracle (``tests.fuzz.oracle``) calls invalid: a generator that may draw
# a valid message (a field replaced by a valid value, repeated keys whose last value is fine) is
# filtered, so "bad" never depends on the codec under test.
bad_clicks = st.one_of(
    garbage,
    wrong_field(clicks),
    bad_id_click(),
    non_finite_click(),
    truncated(clicks),
    non_utf8(clicks),
    duplicate_keys().map(lambda pair: pair[0]),
).filter(lambda raw: not oracle.valid_click(raw))
bad_requests = st.one_of(
    garbage, wrong_field(requests), truncated(requests), non_utf8(requests), huge_request(), bad_request_shape()
).filter(lambda raw: not oracle.valid_request(raw))


@st.composite
def huge_array_click(draw: st.DrawFn) -> bytes:
    """A click whose id is a long array (tens of KiB): must be dead-lettered, not crash anything."""
    body = {"event_id": "huge", "user_id": 1, "item_id": 2, "ts": 3}
    field = draw(st.sampled_from(["user_id", "item_id", "event_id"]))
    body[field] = [draw(st.integers(1, 10**6))] * draw(st.integers(1_000, 30_000))  # <= 240 KB
    return _dumps(body)


__all__ = [
    "FUZZ",
    "bad_clicks",
    "bad_id_click",
    "bad_request_shape",
    "bad_requests",
    "clicks",
    "deeply_nested",
    "duplicate_keys",
    "fuzz",
    "generate",
    "huge_array_click",
    "huge_request",
    "ids",
    "non_finite_click",
    "non_utf8",
    "requests",
    "simple_clicks",
    "truncated",
]
