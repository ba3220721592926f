"""MovieLens-100K (from the installed recbole package) and ComiRec's split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.data.movielens import RawClicks, comirec_split, load_ml100k, locate_ml100k, read_inter
from tests.required_tools import missing_tool


@pytest.fixture(scope="module")
def raw() -> RawClicks:
    try:
        path = locate_ml100k()
    except FileNotFoundError as error:  # skips on a bare checkout; fails where CI installed it
        missing_tool("ml-100k", str(error))
    return read_inter(path)


def test_locate_does_not_import_recbole() -> None:
    import sys

    try:
        path = locate_ml100k()
    except FileNotFoundError as error:
        assert "pip install --no-deps recbole==1.2.1" in str(error)
        return
    assert path.name == "ml-100k.inter" and path.is_file()
    assert "recbole" not in sys.modules


def test_raw_counts(raw: RawClicks) -> None:
    assert raw.num_events == 100_000
    assert np.unique(raw.user).size == 943
    assert np.unique(raw.item).size == 1682
    assert (raw.user[0], raw.item[0], raw.ts[0]) == (196, 242, 881250949)


def _filtered(raw: RawClicks, core: int) -> tuple[set[int], set[int], int]:
    """Independent one-pass k-core: items first, then users."""
    item_n: dict[int, int] = {}
    for i in raw.item.tolist():
        item_n[i] = item_n.get(i, 0) + 1
    rows = [(u, i) for u, i in zip(raw.user.tolist(), raw.item.tolist(), strict=True) if item_n[i] >= core]
    user_n: dict[int, int] = {}
    for u, _ in rows:
        user_n[u] = user_n.get(u, 0) + 1
    rows = [(u, i) for u, i in rows if user_n[u] >= core]
    return {u for u, _ in rows}, {i for _, i in rows}, len(rows)


def test_split_is_consistent(raw: RawClicks) -> None:
    data = comirec_split(raw, core=5, seed=2026)
    users, items, clicks = _filtered(raw, 5)
    parts = (data.train.num_users, data.valid.num_users, data.test.num_users)
    assert sum(parts) == len(users)
    assert parts == (len(users) - 2 * int(len(users) * 0.1), int(len(users) * 0.1), int(len(users) * 0.1))
    all_users = set(data.train.user_ids.tolist()) | set(data.valid.user_ids.tolist())
    all_users |= set(data.test.user_ids.tolist())
    assert all_users == users
    assert data.item_count - 1 == len(items)
    held = data.valid.histories + data.valid.truths + data.test.histories + data.test.truths
    assert data.train.num_events + sum(a.size for a in held) == clicks
    assert all(a.size > 0 for a in held)
    seen = np.concatenate([data.train.items, *held])
    assert seen.min() >= 1 and np.unique(seen).size == data.item_count - 1
    assert data.valid.truth_protocol == "all remaining items"
    for hist, truth in zip(data.test.histories, data.test.truths, strict=True):
        assert hist.size == max(1, int((hist.size + truth.size) * 0.8))


def test_determinism(raw: RawClicks) -> None:
    a = comirec_split(raw, seed=2026)
    b = comirec_split(raw, seed=2026)
    c = comirec_split(raw, seed=1)
    assert a.train.fingerprint() == b.train.fingerprint()
    assert np.array_equal(a.test.user_ids, b.test.user_ids)
    assert a.train.fingerprint() != c.train.fingerprint()
    assert not np.array_equal(a.test.user_ids, c.test.user_ids)


def test_load_ml100k_matches_split(raw: RawClicks) -> None:
    data = load_ml100k(seed=3, core=10, history_share=0.5)
    assert data.name == "ml-100k"
    assert data.train.fingerprint() == comirec_split(raw, core=10, seed=3, history_share=0.5).train.fingerprint()


def test_ties_broken_by_item_id_and_ids_remapped(tmp_path: Path) -> None:
    path = tmp_path / "tiny.inter"
    rows = [
        # user, item, rating, ts: user 1 clicks 30 and 10 at the same second, then 20
        (1, 30, 4, 100),
        (1, 10, 5, 100),
        (1, 20, 3, 50),
        (2, 20, 1, 7),
        (2, 99, 1, 8),  # item 99 has one click: dropped by core=2
        (2, 10, 2, 9),
        (3, 30, 2, 1),  # user 3 keeps one click after the item filter: dropped
    ]
    body = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)
    path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + body)
    raw = read_inter(path)
    assert raw.num_events == 7
    data = comirec_split(raw, core=2, seed=0, history_share=0.5, name="tiny")
    assert data.item_count == 4  # items 10, 20, 30 -> 1, 2, 3
    seqs = {}
    for part in (data.valid, data.test):
        for u, h, t in zip(part.user_ids.tolist(), part.histories, part.truths, strict=True):
            seqs[u] = np.concatenate([h, t]).tolist()
    for i, u in enumerate(data.train.user_ids.tolist()):
        seqs[u] = data.train.sequence(i).tolist()
    assert seqs == {1: [2, 1, 3], 2: [2, 1]}
