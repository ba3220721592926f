"""The AmazonBook readers on PaddleRec's real demo files (read in place, never copied)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.data.amazonbook import (
    AMAZONBOOK_DEMO_DIR,
    _fast_train,
    load_amazonbook_demo,
    read_eval_lines,
    read_train_lines,
)
from model.data.errors import DataFormatError

DEMO = AMAZONBOOK_DEMO_DIR
TRAIN, VALID = DEMO / "train.txt", DEMO / "valid.txt"


def _plain_train() -> list[tuple[int, int, int]]:
    with TRAIN.open() as f:
        return [(int(a), int(b), int(c)) for a, b, c in (line.strip().split(",") for line in f)]


def _plain_eval_items() -> list[int]:
    with VALID.open() as f:
        return [
            int(tok.split(":")[1])
            for line in f
            for tok in line.split()
            if tok.split(":")[0] != "user_id" and tok.split(":")[0] != "target_item"
        ]


def test_train_counts_and_order() -> None:
    seqs, report = read_train_lines(TRAIN)  # how fast: bench, not here
    rows = _plain_train()
    assert report.lines_read == 20000 and report.lines_skipped == 0
    assert seqs.num_events == 20000
    assert seqs.num_users == 1467
    assert np.unique(seqs.items).size == 17049
    assert seqs.item_count == max(r[1] for r in rows) + 1
    assert seqs.sequence(0)[:3].tolist() == [17978, 901, 97224]
    # every user's sequence is their items sorted by position
    by_user: dict[int, list[tuple[int, int]]] = {}
    for user, item, pos in rows:
        by_user.setdefault(user, []).append((pos, item))
    assert seqs.user_ids.tolist() == sorted(by_user)
    for i, user in enumerate(seqs.user_ids.tolist()):
        assert seqs.sequence(i).tolist() == [item for _, item in sorted(by_user[user])]


def test_clean_files_take_the_vectorised_path() -> None:
    triples = _fast_train(TRAIN.read_bytes())
    assert triples is not None and triples.shape == (20000, 3)
    assert _fast_train(b"1,2,3\n\n4,5,6\n") is None  # blank line: line-by-line path
    assert _fast_train(b"1,2,3\n4,0,6\n") is None  # padding id: line-by-line path names it


def test_eval_lines() -> None:
    held, report = read_eval_lines(VALID)
    lines = [line for line in VALID.read_text().splitlines() if line.strip()]
    # `wc -l` says 498: the last line has no trailing newline, so there are 499 users
    assert len(lines) == 499 == held.num_users == report.lines_read
    assert held.truth_protocol == "all eval items"
    first = lines[0].split()
    assert held.user_ids[0] == int(first[0].split(":")[1]) == 482936
    assert held.histories[0].tolist() == [int(t.split(":")[1]) for t in first if t.startswith("hist_item:")]
    assert held.truths[0].tolist() == [57177, 22266, 61335, 126551]
    assert all(h.size > 0 for h in held.histories) and all(t.size > 0 for t in held.truths)
    n_items = sum(h.size for h in held.histories) + sum(t.size for t in held.truths)
    assert n_items == len(_plain_eval_items())

    limited, _ = read_eval_lines(VALID, truth_limit=2)
    assert limited.truth_protocol == "first 2 eval items (PaddleRec reader)"
    assert max(t.size for t in limited.truths) == 2
    assert [t.tolist() for t in limited.truths] == [t[:2].tolist() for t in held.truths]


def _plain_eval_users() -> dict[int, tuple[list[int], list[int]]]:
    out = {}
    with VALID.open() as f:
        for line in f:
            toks = [t.split(":") for t in line.split()]
            user = int(toks[0][1])
            out[user] = ([int(v) for k, v in toks if k == "hist_item"], [int(v) for k, v in toks if k == "eval_item"])
    return out


def test_load_demo() -> None:
    data = load_amazonbook_demo(DEMO, seed=2026)
    train_items = [r[1] for r in _plain_train()]
    evals = _plain_eval_users()
    readable = set(train_items) | {i for hist, _ in evals.values() for i in hist}
    # a row per item the model can learn or read, not one per id up to the largest (367,891)
    assert data.item_count == len(readable) + 1 == data.vocab.items + 1 < max(train_items)
    assert data.train.item_count == data.item_count
    assert data.vocab.external(data.train.items).tolist() == train_items  # rows map back to the file's ids
    for held in (data.valid, data.test):
        for user, hist, truth in zip(held.user_ids.tolist(), held.histories, held.truths, strict=True):
            want_hist, want_truth = evals[user]
            assert data.vocab.external(hist).tolist() == want_hist
            assert truth.size == len(want_truth)  # |truth| keeps items the model never saw ...
            unknown = [i for i in want_truth if i not in readable]
            assert int((truth < 0).sum()) == len(unknown)  # ... as ids no recommendation can hit
            assert data.vocab.external(truth[truth > 0]).tolist() == [i for i in want_truth if i in readable]
    assert (data.valid.num_users, data.test.num_users) == (249, 250)
    all_users = set(data.valid.user_ids.tolist()) | set(data.test.user_ids.tolist())
    assert len(all_users) == 499
    again = load_amazonbook_demo(DEMO, seed=2026)
    other = load_amazonbook_demo(DEMO, seed=7)
    assert np.array_equal(again.valid.user_ids, data.valid.user_ids)
    assert not np.array_equal(other.valid.user_ids, data.valid.user_ids)


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("abc", "expected 'user,item,position', got 'abc'"),
        ("1,2", "expected 'user,item,position'"),
        ("1,0,3", "item id must be >= 1"),
        ("1,-4,3", "item id must be >= 1"),
        ("1,x,3", "expected 'user,item,position'"),
    ],
)
def test_bad_train_line(tmp_path: Path, line: str, needle: str) -> None:
    path = tmp_path / "train.txt"
    path.write_text(f"0,5,0\n0,6,1\n{line}\n1,7,0\n")
    with pytest.raises(DataFormatError) as info:
        read_train_lines(path)
    assert info.value.line_no == 3
    assert str(info.value).startswith("train.txt:3: ")
    assert needle in str(info.value)

    seqs, report = read_train_lines(path, skip_bad=True)
    assert (report.lines_read, report.lines_skipped) == (4, 1)
    assert report.reasons == [str(info.value)]
    assert seqs.user_ids.tolist() == [0, 1] and seqs.items.tolist() == [5, 6, 7]


def test_train_orders_by_position_and_tolerates_blank_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("2,9,1\r\n2,8,0\r\n\r\n1,3,5\r\n1,4,2")
    seqs, report = read_train_lines(path)
    assert report.lines_read == 4
    assert seqs.user_ids.tolist() == [1, 2]
    assert seqs.items.tolist() == [4, 3, 8, 9]
    assert seqs.offsets.tolist() == [0, 2, 4]


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("user_id:5 target_item:0 eval_item:3", "no hist_item"),
        ("user_id:5 target_item:0 hist_item:3", "no eval_item"),
        ("user_id:5 hist_item:0 eval_item:3", "item id must be >= 1"),
        ("uid:5 hist_item:1 eval_item:3", "expected 'user_id:U"),
        ("user_id:5 hist_item:1 foo:2 eval_item:3", "unknown field"),
        ("user_id:1 hist_item:1 eval_item:3", "already listed on line 1"),
    ],
)
def test_bad_eval_line(tmp_path: Path, line: str, needle: str) -> None:
    path = tmp_path / "valid.txt"
    path.write_text(f"user_id:1 target_item:0 hist_item:4 eval_item:5\n{line}\n")
    with pytest.raises(DataFormatError, match=needle) as info:
        read_eval_lines(path)
    assert info.value.line_no == 2 and str(info.value).startswith("valid.txt:2: ")
    held, report = read_eval_lines(path, skip_bad=True)
    assert held.num_users == 1 and report.lines_skipped == 1 and len(report.reasons) == 1
