"""Row keys of keyed collections: one item may have several rows, each valid over a range of generations.

A keyed collection (the one schema :meth:`VectorStore.create_collection` makes) holds each item's
vector as a row ``(id, item_id, vector, model_version, segment, generation, gen_to)``: written at
``generation`` and valid until ``gen_to`` (exclusive; :data:`OPEN` while current). A reader at the
announced generation ``G`` searches ``generation <= G and gen_to > G`` (:func:`visible`): exactly one
row per item. A publication at ``G + 1`` inserts the new rows and closes the rows they replace
(``gen_to = G + 1``), so readers at ``G`` keep seeing the old rows until ``G + 1`` is announced, and a
rollback to ``G`` is only an announcement.

The primary key packs the item id and the row's generation in fixed-width hex
(``16 + 8`` characters): a search returns the keys, and the item ids come back from them with one
vectorised decode (:func:`item_ids_of`), without asking Milvus for an output field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np

__all__ = ["KEY_LENGTH", "MAX_GENERATION", "OPEN", "item_ids_of", "row_keys", "visible"]

ITEM_HEX: Final = 16
GENERATION_HEX: Final = 8
KEY_LENGTH: Final = ITEM_HEX + GENERATION_HEX
MAX_GENERATION: Final = 16**GENERATION_HEX - 1
OPEN: Final = 2**62  # gen_to of a row nobody has replaced yet

_NIBBLE = np.full(256, 255, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)


def row_keys(item_ids: np.ndarray, generations: int | np.ndarray) -> list[str]:
    """The primary keys of ``item_ids``' rows written at ``generations`` (one, or one per row)."""
    ids = np.asarray(item_ids, dtype=np.int64)
    gens = np.broadcast_to(np.asarray(generations, dtype=np.int64), ids.shape)
    if gens.size and (gens.min() < 0 or gens.max() > MAX_GENERATION):
        raise ValueError(f"generations outside [0, {MAX_GENERATION}]")
    return [
        f"{item:0{ITEM_HEX}x}{gen:0{GENERATION_HEX}x}" for item, gen in zip(ids.tolist(), gens.tolist(), strict=True)
    ]


def item_ids_of(keys: Sequence[str]) -> np.ndarray:
    """The item ids (int64) of row keys, decoded at once."""
    if not keys:
        return np.empty(0, dtype=np.int64)
    raw = np.frombuffer("".join(keys).encode("ascii"), dtype=np.uint8)
    if raw.shape[0] != len(keys) * KEY_LENGTH:
        raise ValueError("row keys of an unexpected length")
    nibbles = _NIBBLE[raw.reshape(len(keys), KEY_LENGTH)[:, :ITEM_HEX]].astype(np.int64)
    if np.any(nibbles == 255):
        raise ValueError("row keys that are not lowercase hex")
    shifts = np.arange(4 * (ITEM_HEX - 1), -1, -4, dtype=np.int64)
    return np.bitwise_or.reduce(nibbles << shifts, axis=1)


def visible(generation: int) -> str:
    """The filter of the rows a reader at ``generation`` searches (one per item)."""
    g = int(generation)
    return f"generation <= {g} and gen_to > {g}"
