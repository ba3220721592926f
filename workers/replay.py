"""Held-out users' clicks in stream order: what ``mindstream up`` replays before its continuous stream."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from model.data.types import HeldOut


def held_out_clicks(*sets: HeldOut) -> Iterator[tuple[int, int]]:
    """``(user_id, item_id)`` of every held-out user's whole sequence (history then truth),
    interleaved across users in order, the way a live stream of many users looks. Truth items no
    vocabulary knows (negative placeholders, see :func:`model.vocab.map_truth`) are left out."""
    sequences = [
        (int(uid), (seq := np.concatenate([hist, truth]))[seq > 0])
        for held in sets
        for uid, hist, truth in zip(held.user_ids, held.histories, held.truths, strict=True)
    ]
    longest = max((len(s) for _, s in sequences), default=0)
    for position in range(longest):
        for uid, seq in sequences:
            if position < len(seq):
                yield uid, int(seq[position])
