"""Negative sampling for the sampled softmax: a log-uniform (Zipf) proposal over
popularity-ranked item ids, with the expected counts needed for the log-Q correction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model.data.types import IntArray

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class NegativeSample:
    ids: IntArray  # [N] item ids, never 0 (may repeat: drawn with replacement)
    log_expected: FloatArray  # [N] log of each id's expected count among the N draws


class LogUniformSampler:
    """Proposal ``P(rank r) = log((r + 2) / (r + 1)) / log(n + 1)`` over items ranked by popularity.

    ``popularity`` has one count per id (index = id); id 0 (padding) is never proposed; ties are
    broken by id so the ranking is deterministic. ``num_negatives`` draws per batch, with
    replacement. When the catalogue is small (``items <= num_negatives * full_ratio``) sampling
    buys nothing: the sampler returns every item once with a zero correction (the exact softmax).
    """

    def __init__(
        self, popularity: IntArray, num_negatives: int, rng: np.random.Generator, *, full_ratio: float = 0.0
    ) -> None:
        counts = np.asarray(popularity, dtype=np.int64)[1:]
        self.num_items = int(counts.shape[0])
        if self.num_items < 2:
            raise ValueError("need at least two items to sample negatives")
        self.full = num_negatives >= self.num_items or self.num_items <= num_negatives * full_ratio
        self.num_negatives = self.num_items if self.full else num_negatives
        order = np.lexsort((np.arange(self.num_items), -counts))  # popularity desc, then id
        self._rank_to_id = (order + 1).astype(np.int64)
        self._rank_of_id = np.zeros(self.num_items + 1, dtype=np.int64)
        self._rank_of_id[self._rank_to_id] = np.arange(self.num_items)
        ranks = np.arange(self.num_items, dtype=np.float64)
        prob = np.log((ranks + 2.0) / (ranks + 1.0)) / np.log(self.num_items + 1.0)
        self._log_expected = np.log(prob * self.num_negatives).astype(np.float32)
        self._log_range = float(np.log(self.num_items + 1.0))
        self.rng = rng

    def sample(self) -> NegativeSample:
        if self.full:
            ids = np.arange(1, self.num_items + 1, dtype=np.int64)
            return NegativeSample(ids=ids, log_expected=np.zeros(self.num_items, dtype=np.float32))
        u = self.rng.random(self.num_negatives)
        ranks = np.clip(np.floor(np.exp(u * self._log_range)).astype(np.int64) - 1, 0, self.num_items - 1)
        return NegativeSample(ids=self._rank_to_id[ranks], log_expected=self._log_expected[ranks])

    def log_expected_for(self, ids: IntArray) -> FloatArray:
        """Log expected count of the given ids (e.g. the positives); ids beyond the table get the tail's."""
        if self.full:
            return np.zeros(len(ids), dtype=np.float32)
        safe = np.clip(np.asarray(ids, dtype=np.int64), 0, self.num_items)
        ranks = np.where(safe > 0, self._rank_of_id[safe], self.num_items - 1)
        return self._log_expected[ranks]
