"""Header helpers and the dead-letter header conventions."""

from __future__ import annotations

from schemas.codec import get_header
from schemas.dlq import DLQ_OFFSET, DLQ_PARTITION, DLQ_REASON, DLQ_TOPIC, DeadLetter
from schemas.headers import CORRELATION_ID, REPLY_TO


def test_get_header_handles_every_shape() -> None:
    assert get_header(None, CORRELATION_ID) is None
    assert get_header([], CORRELATION_ID) is None
    headers = [(CORRELATION_ID, b"abc"), (REPLY_TO, b"recall.replies"), ("empty", None)]
    assert get_header(headers, CORRELATION_ID) == "abc"
    assert get_header(headers, REPLY_TO) == "recall.replies"
    assert get_header(headers, "empty") is None
    assert get_header(headers, "absent") is None
    assert get_header([("k", b"1"), ("k", b"2")], "k") == "2"  # the last one wins
    assert get_header({"k": "text"}, "k") == "text"
    assert get_header([("k", b"\xff")], "k") == "\ufffd"


def test_dead_letter_keeps_original_headers_and_adds_its_own() -> None:
    original = [("trace", b"t1"), (DLQ_REASON, b"older failure"), ("trace", b"t2")]
    letter = DeadLetter(reason="user_id: Input should be a valid integer", topic="clicks", partition=3, offset=41)
    headers = letter.headers(original)
    assert headers[:2] == [("trace", b"t1"), ("trace", b"t2")]
    assert dict(headers[2:]) == {
        DLQ_REASON: b"user_id: Input should be a valid integer",
        DLQ_TOPIC: b"clicks",
        DLQ_PARTITION: b"3",
        DLQ_OFFSET: b"41",
    }
    assert DeadLetter.from_headers(headers) == letter


def test_dead_letter_reason_is_bounded() -> None:
    headers = DeadLetter(reason="r" * 10_000, topic="t", partition=0, offset=0).headers(None)
    assert len(get_header(headers, DLQ_REASON) or "") <= 500


def test_from_headers_without_dlq_headers() -> None:
    assert DeadLetter.from_headers([("trace", b"t")]) is None
    assert DeadLetter.from_headers(None) is None
