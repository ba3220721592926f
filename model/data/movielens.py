"""MovieLens-100K from the PyPI package ``recbole==1.2.1`` (installed, never copied: its licence
forbids redistribution), split with ComiRec's protocol."""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.data.errors import DataFormatError
from model.data.items import ML100K_ITEM_FILE, ItemCatalogue, read_ml100k_items
from model.data.split import split_users
from model.data.types import Dataset, IntArray, Sequences
from model.vocab import ItemVocab

INSTALL_HINT = "pip install --no-deps recbole==1.2.1"
_INTER = Path("dataset_example") / "ml-100k" / "ml-100k.inter"
_COLUMNS = ("user_id", "item_id", "timestamp")


@dataclass(frozen=True)
class RawClicks:
    """One row per rating: user id, item id, timestamp (seconds), all as in the file."""

    user: IntArray
    item: IntArray
    ts: IntArray

    def __post_init__(self) -> None:
        if not (self.user.shape == self.item.shape == self.ts.shape):
            raise ValueError("user, item and ts must have the same shape")

    @property
    def num_events(self) -> int:
        return int(self.user.shape[0])


def locate_ml100k() -> Path:
    """Path of ``ml-100k.inter`` inside the installed recbole package (recbole is not imported)."""
    spec = importlib.util.find_spec("recbole")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / _INTER
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"MovieLens-100K not found (recbole/{_INTER.as_posix()}); run: {INSTALL_HINT}")


def read_inter(path: Path | str) -> RawClicks:
    """Read a RecBole ``.inter`` file: tab-separated, header ``user_id:token item_id:token ...``."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    header, _, body = text.partition("\n")
    names = [field.split(":")[0].strip() for field in header.split("\t")]
    missing = [c for c in _COLUMNS if c not in names]
    if missing:
        raise DataFormatError(path, 1, f"header lacks {missing}, got {header!r}")
    width = len(names)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            values = np.fromstring(body, dtype=np.float64, sep=" ")
        except (ValueError, DeprecationWarning):
            values = np.zeros(0)
    n_lines = sum(1 for line in body.splitlines() if line.strip())
    if values.size != n_lines * width:
        _raise_first_bad(path, body, width)
    table = values.reshape(n_lines, width)
    cols = [table[:, names.index(c)] for c in _COLUMNS]
    if any(np.any(c != np.round(c)) for c in cols):
        _raise_first_bad(path, body, width)
    user, item, ts = (c.astype(np.int64) for c in cols)
    return RawClicks(user, item, ts)


def _raise_first_bad(path: Path, body: str, width: int) -> None:
    for line_no, line in enumerate(body.splitlines(), start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            if len(fields) != width:
                raise ValueError
            for f in fields:
                if float(f) != round(float(f)):
                    raise ValueError
        except ValueError:
            reason = f"expected {width} numeric tab-separated fields, got {line!r}"
            raise DataFormatError(path, line_no, reason) from None
    raise DataFormatError(path, 0, "could not parse the file")


def comirec_split(
    raw: RawClicks,
    *,
    core: int = 5,
    seed: int,
    history_share: float = 0.8,
    name: str = "ml-100k",
    items: ItemCatalogue | None = None,
) -> Dataset:
    """ComiRec's protocol: every rating is a click.

    The k-core filter is ONE pass, as ComiRec does it: keep items with >= ``core`` clicks, then
    users with >= ``core`` clicks among what is left (an item may end below ``core`` afterwards).
    Surviving items become rows 1..N in ascending order of the original id (0 = padding); the
    data set's vocabulary maps the rows back to MovieLens' item ids.
    Each user's clicks are sorted by (timestamp, item id), since timestamps tie. Users are split
    80/10/10 by a seeded shuffle; held-out users keep the first ``int(len * history_share)``
    clicks (at least 1) as history and the rest as truth (the histories keep their click times).
    ``items`` (categories by MovieLens id) travels with the data set.
    """
    if core < 1:
        raise ValueError("core must be >= 1")
    item_ids, counts = np.unique(raw.item, return_counts=True)
    keep = np.isin(raw.item, item_ids[counts >= core])
    user, item, ts = raw.user[keep], raw.item[keep], raw.ts[keep]
    users, counts = np.unique(user, return_counts=True)
    keep = np.isin(user, users[counts >= core])
    user, item, ts = user[keep], item[keep], ts[keep]

    catalogue = np.unique(item)
    order = np.lexsort((item, ts, user))
    user, new_item = user[order], np.searchsorted(catalogue, item[order]).astype(np.int64) + 1
    times = ts[order].astype(np.int64)
    user_ids, starts = np.unique(user, return_index=True)
    offsets = np.append(starts, user.size).astype(np.int64)
    seqs = Sequences(user_ids.astype(np.int64), offsets, new_item, int(catalogue.size) + 1)
    vocab = ItemVocab(np.concatenate([[0], catalogue]).astype(np.int64), np.zeros(catalogue.size + 1))
    return split_users(seqs, seed=seed, history_share=history_share, name=name, vocab=vocab, times=times, items=items)


def ml100k_items(inter: Path) -> ItemCatalogue | None:
    """Genres and titles from ``ml-100k.item`` beside ``inter``; None when the file is not there."""
    path = inter.with_name(ML100K_ITEM_FILE)
    return read_ml100k_items(path) if path.is_file() else None


def load_ml100k(*, seed: int, core: int = 5, history_share: float = 0.8) -> Dataset:
    inter = locate_ml100k()
    return comirec_split(
        read_inter(inter), core=core, seed=seed, history_share=history_share, items=ml100k_items(inter)
    )
