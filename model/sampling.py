"""Training-example sampling (the reference MIND reader, vectorised) and padding helpers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model.data.types import IntArray, Sequences


@dataclass(frozen=True)
class TrainBatch:
    hist: IntArray  # [B, maxlen], left-aligned, newest last, 0-padded
    seq_len: IntArray  # [B]
    target: IntArray  # [B]


def pad_histories(histories: Sequence[Sequence[int] | IntArray], maxlen: int) -> tuple[IntArray, IntArray]:
    """Keep the last ``maxlen`` clicks of each history, left-align them, pad with 0.

    Returns ``(hist [B, maxlen], seq_len [B])``. An empty history gives ``seq_len`` 0.
    """
    hist = np.zeros((len(histories), maxlen), dtype=np.int64)
    seq_len = np.zeros(len(histories), dtype=np.int64)
    for row, h in enumerate(histories):
        tail = np.asarray(h, dtype=np.int64)[-maxlen:]
        hist[row, : tail.shape[0]] = tail
        seq_len[row] = tail.shape[0]
    return hist, seq_len


class ReferenceSampler:
    """PaddleRec's MIND training reader, done right and vectorised.

    Each example: a random user with at least ``min_clicks`` clicks, a cut point ``k`` uniform in
    ``[min_clicks - 1, len)``, target = click ``k``, history = up to ``maxlen`` clicks before ``k``.
    (PaddleRec's reader re-seeds ``random`` before every sample and so trains on a handful of
    distinct examples; here one seeded ``numpy.random.Generator`` runs through the whole stream.)
    """

    def __init__(self, seqs: Sequences, *, maxlen: int, min_clicks: int, rng: np.random.Generator) -> None:
        lengths = seqs.lengths()
        self._eligible = np.flatnonzero(lengths >= min_clicks)
        if self._eligible.size == 0:
            raise ValueError(f"no user has >= {min_clicks} clicks: nothing to train on")
        self._starts = seqs.offsets[:-1][self._eligible]
        self._lengths = lengths[self._eligible]
        self._items = seqs.items
        self._maxlen = maxlen
        self._min_cut = min_clicks - 1
        self.rng = rng

    @property
    def num_users(self) -> int:
        return int(self._eligible.size)

    def sample(self, batch_size: int) -> TrainBatch:
        pick = self.rng.integers(0, self._eligible.size, size=batch_size)
        starts, lengths = self._starts[pick], self._lengths[pick]
        cut = self.rng.integers(self._min_cut, lengths)  # uniform in [min_cut, len)
        seq_len = np.minimum(cut, self._maxlen)
        first = starts + cut - seq_len
        cols = np.arange(self._maxlen, dtype=np.int64)
        valid = cols[None, :] < seq_len[:, None]
        index = np.where(valid, first[:, None] + cols[None, :], 0)
        hist = np.where(valid, self._items[index], 0)
        return TrainBatch(hist=hist, seq_len=seq_len, target=self._items[starts + cut])
