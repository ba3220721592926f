"""The item vocabulary against plain-Python oracles: ids of any size, rows in first-appearance order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.vocab import MAX_ITEM_ID, ItemVocab, map_truth

ids = st.integers(1, MAX_ITEM_ID)


@given(st.lists(ids, max_size=60), st.lists(ids, max_size=60))
def test_rows_follow_first_appearance_and_growth_keeps_rows(first: list[int], second: list[int]) -> None:
    oracle: dict[int, int] = {}
    for i in first:
        oracle.setdefault(i, len(oracle) + 1)
    vocab = ItemVocab.from_ids(np.array(first, dtype=np.int64))
    assert len(vocab) == len(oracle) + 1 and vocab.items == len(oracle)
    assert vocab.rows(list(oracle)).tolist() == list(oracle.values())
    for i in second:
        oracle.setdefault(i, len(oracle) + 1)
    grown = vocab.extend(np.array(second, dtype=np.int64))
    assert grown.rows(list(oracle)).tolist() == list(oracle.values())  # old rows kept, new ones appended
    assert grown.external(np.array(list(oracle.values()), dtype=np.int64)).tolist() == list(oracle)


def test_unknown_ids_map_to_padding() -> None:
    vocab = ItemVocab.from_ids([MAX_ITEM_ID, 10**12 + 7, (1 << 62) + 3])
    got = vocab.rows([7, (1 << 62) + 3, MAX_ITEM_ID, 0, -5, MAX_ITEM_ID - 1])
    assert got.tolist() == [0, 3, 1, 0, 0, 0]
    assert ItemVocab.empty().rows([1, 2]).tolist() == [0, 0]


def test_memory_follows_items_not_id_magnitude() -> None:
    vocab = ItemVocab.from_ids([MAX_ITEM_ID, 1])
    assert vocab.ids.nbytes == 3 * 8  # padding + two items, whatever the ids


def test_bad_ids_are_refused() -> None:
    with pytest.raises(ValueError, match=r"1\.\.2"):
        ItemVocab.empty().extend([0])
    with pytest.raises(ValueError, match="twice"):
        ItemVocab(np.array([0, 5, 5]), np.zeros(3))
    with pytest.raises(ValueError, match="padding"):
        ItemVocab(np.array([3, 5]), np.zeros(2))


def test_identity_is_what_dense_checkpoints_meant() -> None:
    vocab = ItemVocab.identity(6)
    assert vocab.rows([1, 5, 6]).tolist() == [1, 5, 0]


def test_touch_expiry_and_compaction() -> None:
    vocab = ItemVocab.from_ids([100, 200, 300, 400], seen_at=10.0)
    vocab = vocab.touch(np.array([300, 999, 300]), np.array([50.0, 60.0, 40.0]))  # 999 unknown: ignored
    assert vocab.last_seen.tolist() == [0.0, 10.0, 10.0, 50.0, 10.0]
    assert vocab.active_rows(now=55.0, ttl_s=None).tolist() == [1, 2, 3, 4]
    assert vocab.active_rows(now=55.0, ttl_s=20.0).tolist() == [3]
    compact, mapping = vocab.compact(np.array([3, 1]))
    assert compact.ids.tolist() == [0, 300, 100]
    assert mapping.tolist() == [0, 2, 0, 1, 0]


def test_save_load_round_trip(tmp_path: Path) -> None:
    vocab = ItemVocab.from_ids([MAX_ITEM_ID, 3, 10**12 + 7], seen_at=1.5)
    vocab.save(tmp_path / "items.npz")
    back = ItemVocab.load(tmp_path / "items.npz")
    assert back.ids.tolist() == vocab.ids.tolist() and back.last_seen.tolist() == vocab.last_seen.tolist()
    assert back.rows([10**12 + 7]).tolist() == [3]


def test_unknown_truth_items_count_but_cannot_be_hit() -> None:
    vocab = ItemVocab.from_ids([5, 6])
    truth = map_truth(vocab, np.array([6, 77, 5, 88]))
    assert truth.tolist() == [2, -1, 1, -2]
    assert len(set(truth.tolist())) == 4


@given(st.lists(st.integers(1, 30), max_size=80), st.lists(st.integers(1, 30), max_size=20), st.integers(0, 12))
def test_a_capped_growth_takes_the_first_new_ids_and_the_longest_prefix_within_the_cap(
    log: list[int], known: list[int], cap: int
) -> None:
    vocab = ItemVocab.from_ids(known)
    oracle_new = list(dict.fromkeys(i for i in log if i not in set(known)))
    assert vocab.new_ids(np.array(log, dtype=np.int64)).tolist() == oracle_new
    grown = vocab.extend(np.array(log, dtype=np.int64), limit=cap)
    assert grown.items == vocab.items + min(cap, len(oracle_new))
    assert grown.contains(oracle_new[:cap]).all() and not grown.contains(oracle_new[cap:]).any()
    # the prefix: as long as possible, never more than cap distinct new ids
    cut = vocab.prefix_within(np.array(log, dtype=np.int64), cap)
    assert len(set(log[:cut]) - set(known)) <= cap
    assert cut == len(log) or len(set(log[: cut + 1]) - set(known)) == cap + 1


def test_a_flood_of_new_ids_is_cut_where_the_cap_is_reached() -> None:
    vocab = ItemVocab.from_ids([1, 2, 3])
    log = np.array([1, 50, 2, 50, 60, 3, 70, 60, 80], dtype=np.int64)
    assert vocab.prefix_within(log, 2) == 6  # 50 and 60; the click on 70 waits, and everything after it
    assert vocab.prefix_within(log, 0) == 1  # not even one new item: the known click before it only
    assert vocab.prefix_within(log, 4) == len(log)
    assert vocab.extend(log, limit=2).ids.tolist() == [0, 1, 2, 3, 50, 60]
