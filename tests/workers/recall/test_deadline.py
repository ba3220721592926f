"""Deadline shedding in the recall worker's request parsing (pure: confluent-kafka Messages built in memory)."""

from __future__ import annotations

import pytest
from confluent_kafka import Message

from schemas.headers import CORRELATION_ID, DEADLINE_MS, REPLY_TO
from schemas.messages import ErrorCode, ErrorReply
from workers.recall.replies import ReplyPolicy
from workers.recall.worker import _parse

BODY = b'{"hist_item": [[1, 2]], "top_k": 5}'
NOW_MS = 1_800_000_000_000

POLICY = ReplyPolicy.for_stack("recall.replies", ["recall.requests"], None, 256)


def _msg(deadline: bytes | None) -> Message:
    headers = [(CORRELATION_ID, b"c1"), (REPLY_TO, b"recall.replies.me")]
    if deadline is not None:
        headers.append((DEADLINE_MS, deadline))
    return Message(topic="recall.requests", value=BODY, headers=headers)


def test_no_deadline_or_a_future_one_is_served() -> None:
    for deadline in (None, str(NOW_MS).encode(), str(NOW_MS + 5000).encode()):
        pending = _parse(_msg(deadline), "recall.replies", POLICY, now_ms=NOW_MS)
        assert pending.request is not None and pending.reply is None, deadline
        assert (pending.topic, pending.correlation_id) == ("recall.replies.me", "c1")


def test_a_passed_deadline_is_answered_timeout_without_searching() -> None:
    pending = _parse(_msg(str(NOW_MS - 1500).encode()), "recall.replies", POLICY, now_ms=NOW_MS)
    assert pending.request is None, "an expired request must not reach the engine"
    assert isinstance(pending.reply, ErrorReply) and pending.reply.code is ErrorCode.TIMEOUT
    assert "1500 ms" in pending.reply.message
    assert (pending.topic, pending.correlation_id) == ("recall.replies.me", "c1")


@pytest.mark.parametrize("bad", [b"soon", b"-5", b"1.5e12", b"\xff\xfe", b"9" * 17, b""])
def test_a_malformed_deadline_is_a_bad_request(bad: bytes) -> None:
    pending = _parse(_msg(bad), "recall.replies", POLICY, now_ms=NOW_MS)
    assert isinstance(pending.reply, ErrorReply) and pending.reply.code is ErrorCode.BAD_REQUEST
    assert "deadline_ms" in pending.reply.message
