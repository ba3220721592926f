"""Your own data: a directory in the PaddleRec/ComiRec formats, or a CSV/TSV interaction log.

* A **directory** holds ``train.txt`` + ``valid.txt`` (+ ``test.txt``), or folders ``train/``,
  ``valid/`` (+ ``test/``) whose files are read in name order: training lines
  ``user_id,item_id,position`` and evaluation lines ``user_id:U target_item:0 hist_item:... eval_item:...``
  as in PaddleRec's AmazonBook. Without a test part, the evaluation users are split 50/50 (seeded)
  into valid and test.
* A **file** (``.csv``, ``.tsv`` or ``.txt``) is an interaction log with a header naming the columns
  ``user_id``, ``item_id`` and ``timestamp`` (any order, other columns ignored; comma or tab
  separated, as the header shows). It is split with ComiRec's protocol (k-core, users 80/10/10 by a
  seeded shuffle, history / truth cut), as MovieLens is.

An optional item file (``items.csv`` / ``items.tsv`` in the directory, or ``DataSettings.items``) with
the columns ``item_id`` and ``category`` gives the items' categories (:mod:`model.data.items`).

Ids may be sparse 64-bit numbers (item ids 1..2^63-1): the item vocabulary maps them to rows. A bad
line raises :class:`~model.data.errors.DataFormatError` naming the file and the line.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from model.data.amazonbook import heldout_dataset, read_eval_lines, read_train_lines
from model.data.errors import DataFormatError
from model.data.items import find_item_file, read_item_file
from model.data.movielens import RawClicks, comirec_split
from model.data.types import Dataset, HeldOut, Sequences

LOG_COLUMNS = ("user_id", "item_id", "timestamp")
MAX_ID = (1 << 63) - 1


def dataset_name(path: Path) -> str:
    """A checkpoint-directory-safe name for the data at ``path`` (``custom-<stem>``)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", path.resolve().stem or path.resolve().name).strip("-")
    return f"custom-{stem or 'data'}"


def load_path(path: Path | str, *, seed: int, core: int, history_share: float, items: Path | None = None) -> Dataset:
    """A directory in PaddleRec formats or an interaction log file (see the module docstring), with the
    item file ``items`` (``item_id``, ``category``; default: ``items.csv`` / ``items.tsv`` inside a
    data directory, none for a log file) as the data set's item metadata when there is one."""
    path = Path(path)
    if items is None and path.is_dir():
        items = find_item_file(path)
    catalogue = read_item_file(items) if items is not None else None
    if path.is_dir():
        return replace(load_paddlerec_dir(path, seed=seed), items=catalogue)
    if path.is_file():
        raw = read_interaction_log(path)
        return comirec_split(
            raw, core=core, seed=seed, history_share=history_share, name=dataset_name(path), items=catalogue
        )
    raise FileNotFoundError(f"no data at {path}: give a directory (train/valid[/test]) or a CSV/TSV log")


def _part(directory: Path, name: str) -> list[Path]:
    """The files of one part: ``<name>.txt`` or every file in ``<name>/`` (name order)."""
    single = directory / f"{name}.txt"
    if single.is_file():
        return [single]
    folder = directory / name
    if folder.is_dir():
        return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return []


def _train(files: list[Path]) -> Sequences:
    parts = [read_train_lines(f)[0] for f in files]
    if len(parts) == 1:
        return parts[0]
    users = np.concatenate([p.user_ids for p in parts])
    if np.unique(users).size != users.size:
        raise DataFormatError(files[-1], 1, "a user's training lines are split across files")
    offsets = np.concatenate([[0], np.cumsum(np.concatenate([np.diff(p.offsets) for p in parts]))])
    items = np.concatenate([p.items for p in parts])
    return Sequences(users, offsets.astype(np.int64), items, max(p.item_count for p in parts))


def _held(files: list[Path]) -> HeldOut:
    parts = [read_eval_lines(f)[0] for f in files]
    return HeldOut(
        np.concatenate([p.user_ids for p in parts]) if parts else np.zeros(0, dtype=np.int64),
        [h for p in parts for h in p.histories],
        [t for p in parts for t in p.truths],
        parts[0].truth_protocol if parts else "all eval items",
    )


def load_paddlerec_dir(directory: Path, *, seed: int) -> Dataset:
    """``train`` + ``valid`` (+ ``test``) in PaddleRec's formats, through an item vocabulary."""
    train_files, valid_files, test_files = (_part(directory, n) for n in ("train", "valid", "test"))
    if not train_files or not valid_files:
        raise FileNotFoundError(f"{directory}: needs train.txt (or train/) and valid.txt (or valid/)")
    test = _held(test_files) if test_files else None
    return heldout_dataset(dataset_name(directory), _train(train_files), _held(valid_files), test, seed=seed)


def read_interaction_log(path: Path) -> RawClicks:
    """``user_id``, ``item_id``, ``timestamp`` columns of a CSV/TSV file with a header."""
    with path.open(encoding="utf-8") as fh:
        header = fh.readline()
        sep = "\t" if "\t" in header else ","
        names = [n.strip().strip('"') for n in header.rstrip("\r\n").split(sep)]
        missing = [c for c in LOG_COLUMNS if c not in names]
        if missing:
            raise DataFormatError(path, 1, f"header lacks {missing} (got {names}); columns: {', '.join(LOG_COLUMNS)}")
        at = [names.index(c) for c in LOG_COLUMNS]
        users: list[int] = []
        items: list[int] = []
        times: list[int] = []
        for line_no, line in enumerate(fh, start=2):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split(sep)
            if len(fields) != len(names):
                raise DataFormatError(path, line_no, f"{len(fields)} fields, the header has {len(names)}")
            try:
                user, item, ts = (int(fields[i].strip().strip('"')) for i in at)
            except ValueError as exc:
                raise DataFormatError(path, line_no, f"user_id, item_id and timestamp must be integers: {exc}") from exc
            if not 0 <= user <= MAX_ID:
                raise DataFormatError(path, line_no, f"user_id {user} outside 0..2^63-1")
            if not 1 <= item <= MAX_ID:
                raise DataFormatError(path, line_no, f"item_id {item} outside 1..2^63-1 (0 is padding)")
            users.append(user)
            items.append(item)
            times.append(ts)
    if not users:
        raise DataFormatError(path, 2, "no interactions")
    return RawClicks(np.array(users, dtype=np.int64), np.array(items, dtype=np.int64), np.array(times, dtype=np.int64))
