"""The in-memory event-id digest set that de-duplicates ingest (pure logic, checked against a Python set)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.ingest.digest_set import DIGEST_BYTES, DigestSet, DigestWindow, digest, split_digests


def test_digest_is_stable_and_16_bytes() -> None:
    assert digest("e1") == digest("e1")
    assert digest("e1") != digest("e2")
    assert len(digest("é-ü")) == DIGEST_BYTES
    # Pinned: the digests are stored in state files, so the function must never change silently.
    assert digest("abc").hex() == "cf4ab791c62b8d2b2109c90275287816"


def test_split_rejects_partial_digest() -> None:
    with pytest.raises(ValueError, match="whole number"):
        split_digests(b"x" * 17)


def test_membership_after_adds_and_merges() -> None:
    seen = DigestSet(digest(f"old-{n}") for n in range(100))
    for batch in range(20):
        ids = [f"b{batch}-{n}" for n in range(batch + 1)]
        assert not seen.contains([digest(i) for i in ids]).any()
        seen.add([digest(i) for i in ids])
    assert len(seen) == 100 + sum(range(1, 21))
    assert seen.runs <= 8, "runs are merged, not piled up"
    probe = ["old-5", "b3-2", "b19-19", "new", "b3-9"]
    assert seen.contains([digest(i) for i in probe]).tolist() == [True, True, True, False, False]


def test_same_high_half_different_low_half_is_not_a_member() -> None:
    high = (7).to_bytes(8, "little")
    seen = DigestSet([high + (1).to_bytes(8, "little"), high + (3).to_bytes(8, "little")])
    probe = [high + (n).to_bytes(8, "little") for n in (1, 2, 3, 4)]
    assert seen.contains(probe).tolist() == [True, False, True, False]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.text(min_size=1, max_size=6), max_size=30), max_size=12))
def test_matches_a_python_set(batches: list[list[str]]) -> None:
    seen, model = DigestSet(), set[str]()
    for ids in batches:
        unique = list(dict.fromkeys(ids))
        found = seen.contains([digest(i) for i in unique]).tolist()
        assert found == [i in model for i in unique]
        seen.add([digest(i) for i, dup in zip(unique, found, strict=True) if not dup])
        model.update(unique)
        assert len(seen) == len(model)


def test_window_remembers_recent_digests_and_stays_bounded() -> None:
    window = DigestWindow(100)
    for n in range(0, 1000, 10):
        batch = [digest(f"e{i}") for i in range(n, n + 10)]
        assert not window.contains(batch).any()
        window.add(batch)
        assert len(window) <= 2 * 100  # bounded however long the stream
        recent = [digest(f"e{i}") for i in range(max(0, n + 10 - 100), n + 10)]
        assert window.contains(recent).all()  # the last `size` additions are always remembered
    assert not window.contains([digest("e0"), digest("e500")]).any()  # long gone
    with pytest.raises(ValueError):
        DigestWindow(0)
