"""Decoding a consumed batch of the items topic: events, tombstones and why the others are rejected."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE, Message

from schemas.codec import DecodeError
from workers.catalogue.batch import BAD_TOMBSTONE, KEY_MISMATCH, decode_message, item_id_of_key, split_items
from workers.catalogue.store import ItemRecord, Tombstone


def _msg(
    key: bytes | None, value: bytes | None, offset: int = 0, partition: int = 0, ts: int | None = 1_700_000_000_000
) -> Message:
    stamp = (TIMESTAMP_CREATE_TIME, ts) if ts is not None else (TIMESTAMP_NOT_AVAILABLE, 0)
    return Message(topic="items", partition=partition, offset=offset, key=key, value=value, timestamp=stamp)


NOW = 1_800_000_000_000
SKEW = 600_000


def _event(item: int, **body: object) -> bytes:
    return json.dumps({"item_id": item, "ts": 5, "available": True, **body}).encode()


@pytest.mark.parametrize(
    ("key", "want"),
    [
        (b"1", 1),
        (b"9223372036854775807", 2**63 - 1),
        (b"9223372036854775808", None),
        (b"0", None),
        (b"007", None),  # not canonical: another key than the item's
        (b"-1", None),
        (b"1.0", None),
        (b" 1", None),
        (b"", None),
        (None, None),
        (b"\xd9\xa1", None),  # an Arabic-Indic digit one: not ASCII
    ],
)
def test_item_id_of_key(key: bytes | None, want: int | None) -> None:
    assert item_id_of_key(key) == want


def test_an_event_keyed_by_its_item() -> None:
    got = decode_message(_msg(b"42", _event(42, title="T", categories=["A", "A"], segment="de")), NOW, SKEW)
    assert got == ItemRecord(42, 5, True, "T", ("A",), "de")


def test_a_tombstone_takes_the_records_time() -> None:
    assert decode_message(_msg(b"42", None, ts=123), NOW, SKEW) == Tombstone(42, 123)
    assert decode_message(_msg(b"42", None, ts=None), NOW, SKEW) == Tombstone(42, 0)
    assert decode_message(_msg(b"42", None, ts=NOW + 10**9), NOW, SKEW) == Tombstone(42, NOW)  # not after now


def test_an_event_from_the_future_is_rejected_within_the_skew_accepted() -> None:
    assert decode_message(_msg(b"42", _event(42, ts=NOW + SKEW)), NOW, SKEW) == ItemRecord(42, NOW + SKEW, True)
    late = decode_message(_msg(b"42", _event(42, ts=2**63 - 1)), NOW, SKEW)
    assert isinstance(late, DecodeError) and late.reason == f"ts: more than {SKEW} ms ahead of the catalogue's clock"


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b"41", _event(42), KEY_MISMATCH),
        (None, _event(42), KEY_MISMATCH),
        (b"042", _event(42), KEY_MISMATCH),
        (b"x", None, BAD_TOMBSTONE),
        (None, None, BAD_TOMBSTONE),
        (b"42", b'{"item_id": 42', "malformed JSON"),
        (b"42", _event(42, price=3), "price: Extra inputs are not permitted"),
        (b"42", b'{"item_id": 42, "ts": 5}', "available: Field required"),
    ],
)
def test_rejected_messages_say_why(key: bytes | None, value: bytes | None, reason: str) -> None:
    got = decode_message(_msg(key, value), NOW, SKEW)
    assert isinstance(got, DecodeError) and got.reason.startswith(reason)


def test_split_keeps_offset_order_per_partition_and_the_last_offset() -> None:
    messages = [
        _msg(b"1", _event(1), offset=10),
        _msg(b"2", b"junk", offset=11),
        _msg(b"1", None, offset=12),
        _msg(b"3", _event(3), offset=4, partition=1),
        _msg(b"9", b"junk", offset=5, partition=1),  # the partition's last offset is a rejected one
    ]
    batch = split_items(messages, SKEW, now_ms=NOW)
    assert batch.consumed == 5 and batch.valid == 3 and len(batch.rejected) == 2
    p0, p1 = batch.partitions[("items", 0)], batch.partitions[("items", 1)]
    assert p0.changes == [ItemRecord(1, 5, True), Tombstone(1, 1_700_000_000_000)] and p0.last_offset == 12
    assert p1.changes == [ItemRecord(3, 5, True)] and p1.last_offset == 5
