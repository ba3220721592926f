"""Your own data: PaddleRec-format directories and CSV/TSV interaction logs with sparse 64-bit ids."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from model.data import AMAZONBOOK_DEMO_DIR, load_amazonbook_demo
from model.data.custom import dataset_name, load_path
from model.data.errors import DataFormatError

BIG = (1 << 62) + 3


def _log(path: Path, sep: str = ",", users: int = 30, extra_column: bool = False) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(0)
    rows = []
    for user in range(users):
        for n in range(8):
            item = BIG + int(rng.integers(0, 12)) * 1_000_003  # sparse 64-bit ids
            rows.append((10**12 + user, item, 1_700_000_000 + user * 100 + n))
    header = ["timestamp", "item_id", "user_id"] + (["rating"] if extra_column else [])
    lines = [sep.join(header)]
    lines += [sep.join([str(t), str(i), str(u)] + (["5"] if extra_column else [])) for u, i, t in rows]
    path.write_text("\n".join(lines) + "\n")
    return rows


def test_csv_log_with_sparse_ids_is_split_as_comirec(tmp_path: Path) -> None:
    rows = _log(tmp_path / "clicks.csv")
    data = load_path(tmp_path / "clicks.csv", seed=1, core=1, history_share=0.8)
    assert data.name == "custom-clicks" == dataset_name(tmp_path / "clicks.csv")
    distinct = sorted({i for _, i, _ in rows})
    assert sorted(data.vocab.ids[1:].tolist()) == distinct and data.item_count == len(distinct) + 1
    users = data.train.num_users + data.valid.num_users + data.test.num_users
    assert users == 30
    # every held-out user's history + truth are that user's clicks in time order, as external ids
    by_user: dict[int, list[int]] = {}
    for u, i, _ in sorted(rows, key=lambda r: (r[0], r[2])):
        by_user.setdefault(u, []).append(i)
    for held in (data.valid, data.test):
        for user, hist, truth in zip(held.user_ids.tolist(), held.histories, held.truths, strict=True):
            assert data.vocab.external(np.concatenate([hist, truth])).tolist() == by_user[user]


def test_tsv_log_with_extra_columns(tmp_path: Path) -> None:
    _log(tmp_path / "log.tsv", sep="\t", extra_column=True)
    data = load_path(tmp_path / "log.tsv", seed=1, core=1, history_share=0.8)
    assert data.vocab.items == 12


@pytest.mark.parametrize(
    ("body", "line", "reason"),
    [
        ("user_id,item_id\n1,2\n", 1, "header lacks"),
        ("user_id,item_id,timestamp\n1,2,3\n1,x,4\n", 3, "integers"),
        ("user_id,item_id,timestamp\n1,0,3\n", 2, "0 is padding"),
        ("user_id,item_id,timestamp\n1,9223372036854775808,3\n", 2, "outside"),
        ("user_id,item_id,timestamp\n1,2\n", 2, "fields"),
        ("user_id,item_id,timestamp\n", 2, "no interactions"),
    ],
)
def test_bad_log_lines_name_file_and_line(tmp_path: Path, body: str, line: int, reason: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(DataFormatError, match=reason) as err:
        load_path(path, seed=1, core=1, history_share=0.8)
    assert f"{path.name}:{line}:" in str(err.value)


def test_paddlerec_directory_with_txt_files_equals_the_demo(tmp_path: Path) -> None:
    for name in ("train.txt", "valid.txt"):
        shutil.copy(AMAZONBOOK_DEMO_DIR / name, tmp_path / name)
    mine = load_path(tmp_path, seed=2026, core=5, history_share=0.8)
    demo = load_amazonbook_demo(AMAZONBOOK_DEMO_DIR, seed=2026)
    assert mine.vocab.ids.tolist() == demo.vocab.ids.tolist()
    assert np.array_equal(mine.valid.user_ids, demo.valid.user_ids)
    assert np.array_equal(mine.train.items, demo.train.items)


def test_paddlerec_directory_with_folders_and_a_test_part(tmp_path: Path) -> None:
    lines = (AMAZONBOOK_DEMO_DIR / "valid.txt").read_text().splitlines()
    train = (AMAZONBOOK_DEMO_DIR / "train.txt").read_text().splitlines()
    users = sorted({int(r.split(",")[0]) for r in train})
    first = {u for u in users[: len(users) // 2]}
    for part in ("train", "valid", "test"):
        (tmp_path / part).mkdir()
    (tmp_path / "train" / "a.txt").write_text("\n".join(r for r in train if int(r.split(",")[0]) in first) + "\n")
    (tmp_path / "train" / "b.txt").write_text("\n".join(r for r in train if int(r.split(",")[0]) not in first) + "\n")
    (tmp_path / "valid" / "part-0").write_text("\n".join(lines[:100]) + "\n")
    (tmp_path / "test" / "part-0").write_text("\n".join(lines[100:]) + "\n")
    data = load_path(tmp_path, seed=1, core=5, history_share=0.8)
    assert data.train.num_events == len(train)
    assert (data.valid.num_users, data.test.num_users) == (100, len(lines) - 100)  # no 50/50 split


def test_missing_parts_are_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("1,2,0\n")
    with pytest.raises(FileNotFoundError, match="valid"):
        load_path(tmp_path, seed=1, core=5, history_share=0.8)
    with pytest.raises(FileNotFoundError, match="no data"):
        load_path(tmp_path / "nothing.csv", seed=1, core=5, history_share=0.8)
