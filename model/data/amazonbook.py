"""Readers for PaddleRec's AmazonBook formats (ComiRec's Books as processed by PaddleRec).

* training lines ``user_id,item_id,position`` (position = the user's chronological index);
* evaluation lines ``user_id:U target_item:0 hist_item:I1 ... eval_item:J1 ...``.

Item id 0 is padding, so an item id below 1 makes a line bad. Bad lines raise
:class:`DataFormatError` (file and line named) or, with ``skip_bad=True``, are skipped and
counted in the :class:`ReadReport`. Blank lines are ignored.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from model.data.errors import DataFormatError, ReadReport
from model.data.types import Dataset, HeldOut, IntArray, Sequences
from model.vocab import ItemVocab, map_truth

TRAIN_FORMAT = "user,item,position"
#: PaddleRec's demo slice, shipped with the package (Apache-2.0, see its NOTICE).
AMAZONBOOK_DEMO_DIR = Path(__file__).resolve().parent / "files" / "amazonbook-demo"
_EVAL_KEYS = ("target_item", "hist_item", "eval_item")


def _shown(line: str, limit: int = 80) -> str:
    return repr(line if len(line) <= limit else line[:limit] + "...")


def read_train_lines(path: Path | str, *, skip_bad: bool = False) -> tuple[Sequences, ReadReport]:
    """Read ``user,item,position`` lines into per-user sequences ordered by position.

    Users come out in ascending id order; clicks with equal positions keep their file order.
    A vectorised parser handles clean files (millions of lines per second); anything it does
    not accept goes through the line-by-line parser, which names the bad line.
    """
    path = Path(path)
    raw = path.read_bytes()
    report = ReadReport(path)
    triples = _fast_train(raw)
    if triples is None:
        triples = _slow_train(raw.decode("utf-8", errors="replace"), path, skip_bad, report)
    else:
        report.lines_read = int(triples.shape[0])
    return _group(triples), report


def _fast_train(raw: bytes) -> IntArray | None:
    """Parse a clean file (digits, commas, newlines; two commas per line) or return None."""
    if not raw:
        return None
    if not raw.endswith(b"\n"):
        raw += b"\n"
    b = np.frombuffer(raw, dtype=np.uint8)
    is_comma = b == ord(",")
    is_nl = b == ord("\n")
    if not np.all(is_comma | is_nl | ((b >= ord("0")) & (b <= ord("9")))):
        return None
    nl_pos = np.flatnonzero(is_nl)
    n = int(nl_pos.size)
    commas_per_line = np.bincount(np.searchsorted(nl_pos, np.flatnonzero(is_comma)), minlength=n)
    if np.any(commas_per_line != 2):
        return None  # blank lines, missing or extra fields
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            values = np.fromstring(raw.replace(b",", b" ").decode("ascii"), dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning, OverflowError):
            return None
    if values.size != 3 * n:
        return None  # empty fields
    triples = values.reshape(n, 3)
    if np.any(triples[:, 1] < 1):
        return None
    return triples


def _parse_train_line(line: str, path: Path, line_no: int) -> tuple[int, int, int]:
    parts = line.split(",")
    try:
        if len(parts) != 3:
            raise ValueError
        user, item, position = (int(p) for p in parts)
    except ValueError:
        raise DataFormatError(path, line_no, f"expected '{TRAIN_FORMAT}', got {_shown(line)}") from None
    if item < 1:
        raise DataFormatError(path, line_no, f"item id must be >= 1 (0 is padding), got {_shown(line)}")
    if user < 0 or position < 0:
        raise DataFormatError(path, line_no, f"user id and position must be >= 0, got {_shown(line)}")
    return user, item, position


def _slow_train(text: str, path: Path, skip_bad: bool, report: ReadReport) -> IntArray:
    rows: list[tuple[int, int, int]] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        report.lines_read += 1
        try:
            rows.append(_parse_train_line(stripped, path, line_no))
        except DataFormatError as error:
            if not skip_bad:
                raise
            report.skip(error)
    return np.array(rows, dtype=np.int64).reshape(len(rows), 3)


def _group(triples: IntArray) -> Sequences:
    """CSR sequences from (user, item, position) rows: users ascending, clicks by position (stable)."""
    order = np.lexsort((triples[:, 2], triples[:, 0]))
    users = triples[order, 0]
    items = np.ascontiguousarray(triples[order, 1])
    user_ids, starts = np.unique(users, return_index=True)
    offsets = np.append(starts, users.size).astype(np.int64)
    item_count = int(items.max()) + 1 if items.size else 1
    return Sequences(user_ids.astype(np.int64), offsets, items, item_count)


def _parse_eval_line(line: str, path: Path, line_no: int) -> tuple[int, list[int], list[int]]:
    tokens = line.split()
    key, _, value = tokens[0].partition(":")
    try:
        if key != "user_id":
            raise ValueError
        user = int(value)
    except ValueError:
        raise DataFormatError(path, line_no, f"expected 'user_id:U ...', got {_shown(line)}") from None
    hist: list[int] = []
    truth: list[int] = []
    for token in tokens[1:]:
        key, sep, value = token.partition(":")
        if key not in _EVAL_KEYS or not sep:
            raise DataFormatError(path, line_no, f"unknown field {token!r} in {_shown(line)}")
        try:
            number = int(value)
        except ValueError:
            raise DataFormatError(path, line_no, f"{key} is not an integer: {token!r}") from None
        if key == "target_item":
            continue
        if number < 1:
            raise DataFormatError(path, line_no, f"item id must be >= 1 (0 is padding), got {token!r}")
        (hist if key == "hist_item" else truth).append(number)
    if not hist:
        raise DataFormatError(path, line_no, f"no hist_item in {_shown(line)}")
    if not truth:
        raise DataFormatError(path, line_no, f"no eval_item in {_shown(line)}")
    return user, hist, truth


def truth_protocol(truth_limit: int | None) -> str:
    if truth_limit is None:
        return "all eval items"
    return f"first {truth_limit} eval items (PaddleRec reader)"


def read_eval_lines(
    path: Path | str, *, skip_bad: bool = False, truth_limit: int | None = None
) -> tuple[HeldOut, ReadReport]:
    """Read evaluation lines: history = the hist_items, truth = the eval_items (or the first
    ``truth_limit`` of them, as PaddleRec's infer reader does). Users keep their file order;
    a user listed twice is a bad line."""
    if truth_limit is not None and truth_limit < 1:
        raise ValueError("truth_limit must be >= 1 or None")
    path = Path(path)
    report = ReadReport(path)
    users: list[int] = []
    histories: list[IntArray] = []
    truths: list[IntArray] = []
    first_line: dict[int, int] = {}
    text = path.read_text(encoding="utf-8", errors="replace")
    for line_no, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        report.lines_read += 1
        try:
            user, hist, truth = _parse_eval_line(stripped, path, line_no)
            if user in first_line:
                raise DataFormatError(path, line_no, f"user {user} already listed on line {first_line[user]}")
        except DataFormatError as error:
            if not skip_bad:
                raise
            report.skip(error)
            continue
        first_line[user] = line_no
        users.append(user)
        histories.append(np.array(hist, dtype=np.int64))
        truths.append(np.array(truth[:truth_limit], dtype=np.int64))
    held = HeldOut(np.array(users, dtype=np.int64), histories, truths, truth_protocol(truth_limit))
    return held, report


def _subset(held: HeldOut, idx: IntArray, truth_limit: int | None) -> HeldOut:
    return HeldOut(
        held.user_ids[idx],
        [held.histories[i] for i in idx],
        [held.truths[i][:truth_limit] for i in idx],
        truth_protocol(truth_limit),
    )


def load_amazonbook_demo(directory: Path | str, *, seed: int, truth_limit: int | None = None) -> Dataset:
    """Train from ``train.txt``; the users of ``valid.txt`` split 50/50 (seeded shuffle) into
    valid and test (see :func:`heldout_dataset`)."""
    directory = Path(directory)
    train, _ = read_train_lines(directory / "train.txt")
    held, _ = read_eval_lines(directory / "valid.txt")
    return heldout_dataset("amazonbook-demo", train, held, None, seed=seed, truth_limit=truth_limit)


def heldout_dataset(
    name: str, train: Sequences, valid: HeldOut, test: HeldOut | None, *, seed: int, truth_limit: int | None = None
) -> Dataset:
    """A data set from item-id sequences and held-out users; without ``test`` the ``valid`` users
    split 50/50 (seeded shuffle).

    The vocabulary holds the items that occur in training or in a held-out history (first
    appearance order): the table has a row per item the model can learn or read, never one per id
    up to the largest. Truth items outside it stay in the truth sets (they count in |truth|) but can
    never be recalled, as for any item the model has not seen."""
    parts = [valid] if test is None else [valid, test]
    vocab = ItemVocab.from_ids(np.concatenate([train.items, *(h for p in parts for h in p.histories)]))
    train = Sequences(train.user_ids, train.offsets, vocab.rows(train.items), len(vocab))

    def mapped(held: HeldOut) -> HeldOut:
        return HeldOut(
            held.user_ids,
            [vocab.rows(h) for h in held.histories],
            [map_truth(vocab, t) for t in held.truths],
            held.truth_protocol,
        )

    if test is None:
        held = mapped(valid)
        perm = np.random.default_rng(seed).permutation(held.num_users)
        half = held.num_users // 2
        valid_part = _subset(held, np.sort(perm[:half]), truth_limit)
        test_part = _subset(held, np.sort(perm[half:]), truth_limit)
    else:
        every = np.arange(valid.num_users)
        valid_part = _subset(mapped(valid), every, truth_limit)
        test_part = _subset(mapped(test), np.arange(test.num_users), truth_limit)
    return Dataset(name, train, valid_part, test_part, len(vocab), vocab)
