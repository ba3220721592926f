"""Item metadata: categories (and titles where known) per external item id, never required.

A data set may carry an :class:`ItemCatalogue` beside its vocabulary (``Dataset.items``): ML-100K's
genres and titles (``ml-100k.item`` in the same recbole package folder as the clicks), or, for your
own data, an item file with a header naming ``item_id`` and ``category`` (comma or tab separated,
other columns ignored except ``title``; several categories of one item are separated by ``|`` or
given on several lines). The catalogue is keyed by **external** item id, so it does not depend on a
model version: the beyond-accuracy metrics (:mod:`model.metrics`) and the diversity-aware merge at
serving time (:mod:`model.diversity`) look items up by id; ids it does not know have no category.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from model.data.errors import DataFormatError

IntArray = npt.NDArray[np.int64]
BoolMatrix = npt.NDArray[np.bool_]

ITEM_FILE_COLUMNS = ("item_id", "category")
ITEM_FILE_NAMES = ("items.csv", "items.tsv")  # looked for inside a PaddleRec-format data directory
CATEGORY_SEPARATOR = "|"
ML100K_ITEM_FILE = "ml-100k.item"


@dataclass(frozen=True)
class ItemCatalogue:
    """Categories per item in CSR form: ``codes[offsets[i]:offsets[i + 1]]`` index ``names`` for the
    item ``ids[i]`` (``ids`` ascending, unique). ``titles`` is aligned with ``ids`` when known."""

    ids: IntArray
    offsets: IntArray
    codes: IntArray
    names: tuple[str, ...]
    titles: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        ids = np.ascontiguousarray(self.ids, dtype=np.int64)
        if ids.ndim != 1 or (ids.size > 1 and bool((np.diff(ids) <= 0).any())):
            raise ValueError("catalogue ids must be ascending and unique")
        if self.offsets.shape != (ids.size + 1,) or int(self.offsets[-1]) != self.codes.size:
            raise ValueError("offsets must have one more entry than ids and end at len(codes)")
        if self.codes.size and (int(self.codes.min()) < 0 or int(self.codes.max()) >= len(self.names)):
            raise ValueError("category codes must index names")
        if self.titles is not None and len(self.titles) != ids.size:
            raise ValueError("one title per id")
        object.__setattr__(self, "ids", ids)

    @staticmethod
    def from_mapping(categories: Mapping[int, Iterable[str]], titles: Mapping[int, str] | None = None) -> ItemCatalogue:
        """From ``{item_id: category names}`` (category codes in sorted-name order)."""
        ids = np.array(sorted(categories), dtype=np.int64)
        per_item = [sorted(set(categories[int(i)])) for i in ids]
        names = tuple(sorted({c for cats in per_item for c in cats}))
        code = {name: n for n, name in enumerate(names)}
        lengths = np.array([len(c) for c in per_item], dtype=np.int64)
        offsets = np.zeros(ids.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        codes = np.array([code[c] for cats in per_item for c in cats], dtype=np.int64)
        title_tuple = tuple(titles.get(int(i), "") for i in ids) if titles is not None else None
        return ItemCatalogue(ids, offsets, codes, names, title_tuple)

    def __len__(self) -> int:
        return int(self.ids.size)

    def positions(self, item_ids: IntArray) -> IntArray:
        """Index of each id in ``ids``; -1 for ids the catalogue does not know."""
        ext = np.asarray(item_ids, dtype=np.int64)
        if not self.ids.size:
            return np.full(ext.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.ids, ext), self.ids.size - 1)
        return np.where(self.ids[pos] == ext, pos, -1).astype(np.int64)

    def matrix(self, item_ids: IntArray) -> BoolMatrix:
        """``[n, len(names)]`` multi-hot categories of ``item_ids`` (all False for unknown ids)."""
        pos = self.positions(item_ids)
        out = np.zeros((pos.size, len(self.names)), dtype=bool)
        known = np.flatnonzero(pos >= 0)
        if known.size:
            starts = self.offsets[pos[known]]
            counts = self.offsets[pos[known] + 1] - starts
            rows = np.repeat(known, counts)
            within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
            out[rows, self.codes[np.repeat(starts, counts) + within]] = True
        return out

    def categories_of(self, item_id: int) -> tuple[str, ...]:
        pos = int(self.positions(np.array([item_id]))[0])
        if pos < 0:
            return ()
        return tuple(self.names[c] for c in self.codes[self.offsets[pos] : self.offsets[pos + 1]])

    def title_of(self, item_id: int) -> str | None:
        pos = int(self.positions(np.array([item_id]))[0])
        return None if pos < 0 or self.titles is None else self.titles[pos]


def read_ml100k_items(path: Path | str) -> ItemCatalogue:
    """ML-100K's ``ml-100k.item`` (RecBole): tab-separated ``item_id``, ``movie_title``,
    ``release_year``, ``class`` (space-separated genres)."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines:
        raise DataFormatError(path, 1, "empty item file")
    names = [f.split(":")[0].strip() for f in lines[0].split("\t")]
    if "item_id" not in names or "class" not in names:
        raise DataFormatError(path, 1, f"header lacks item_id or class, got {lines[0]!r}")
    at_id, at_class = names.index("item_id"), names.index("class")
    at_title = names.index("movie_title") if "movie_title" in names else None
    categories: dict[int, list[str]] = {}
    titles: dict[int, str] = {}
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        fields += [""] * (len(names) - len(fields))
        try:
            item = int(fields[at_id])
        except ValueError:
            raise DataFormatError(path, line_no, f"item_id must be an integer, got {fields[at_id]!r}") from None
        categories[item] = fields[at_class].split()
        if at_title is not None:
            titles[item] = fields[at_title].strip()
    return ItemCatalogue.from_mapping(categories, titles if at_title is not None else None)


def read_item_file(path: Path | str) -> ItemCatalogue:
    """Your own item file: a header naming ``item_id`` and ``category`` (optional ``title``); comma or
    tab separated; an item's categories separated by ``|`` or spread over several lines."""
    path = Path(path)
    categories: dict[int, set[str]] = {}
    titles: dict[int, str] = {}
    with path.open(encoding="utf-8") as fh:
        header = fh.readline()
        sep = "\t" if "\t" in header else ","
        names = [n.strip().strip('"') for n in header.rstrip("\r\n").split(sep)]
        missing = [c for c in ITEM_FILE_COLUMNS if c not in names]
        if missing:
            raise DataFormatError(path, 1, f"header lacks {missing} (got {names}); columns: item_id, category")
        at_id, at_cat = names.index("item_id"), names.index("category")
        at_title = names.index("title") if "title" in names else None
        for line_no, line in enumerate(fh, start=2):
            if not line.strip():
                continue
            fields = [f.strip().strip('"') for f in line.rstrip("\r\n").split(sep)]
            if len(fields) != len(names):
                raise DataFormatError(path, line_no, f"{len(fields)} fields, the header has {len(names)}")
            try:
                item = int(fields[at_id])
            except ValueError:
                raise DataFormatError(path, line_no, f"item_id must be an integer, got {fields[at_id]!r}") from None
            if item < 1:
                raise DataFormatError(path, line_no, f"item_id {item} must be >= 1")
            cats = {c.strip() for c in fields[at_cat].split(CATEGORY_SEPARATOR) if c.strip()}
            categories.setdefault(item, set()).update(cats)
            if at_title is not None and fields[at_title]:
                titles[item] = fields[at_title]
    return ItemCatalogue.from_mapping(
        {i: sorted(c) for i, c in categories.items()}, titles if at_title is not None else None
    )


def find_item_file(directory: Path) -> Path | None:
    """``items.csv`` or ``items.tsv`` inside a data directory, if there is one."""
    for name in ITEM_FILE_NAMES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None
