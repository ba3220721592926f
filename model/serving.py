"""The user tower for serving, in plain numpy: no autograd, no Paddle dispatch.

:class:`ServingTower` is a frozen copy of a trained :class:`MindNet`'s user tower (item table, bilinear
map(s), fixed initial routing logits) and computes ``MindNet.interests`` in eval mode with numpy
(equal to it within 1e-5, tested). A Paddle dygraph call costs ~0.7 ms for one user, almost all of it
per-operator dispatch; the same forward pass here is a handful of small BLAS calls. The copy does not
follow later training steps: build it from a net whose weights no longer change (a checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from model.data.types import IntArray
from model.net import MindNet, interest_counts
from model.vocab import ItemVocab

__all__ = ["ServingTower"]

FloatArray = npt.NDArray[np.float32]
_EPS = 1e-9  # as model.net.squash


class ServingTower:
    """``interests(histories) -> [B, K, dim]``; same contract as :class:`model.export.UserTower`.

    Histories are external item ids with ``vocab`` (serving), rows otherwise; unknown ids are ignored,
    histories are cut to the last ``maxlen`` known clicks, an empty history gives zero vectors.
    """

    def __init__(
        self,
        table: FloatArray,
        bilinear: FloatArray,
        routing_logits: FloatArray,
        *,
        iters: int,
        model_version: str,
        vocab: ItemVocab | None = None,
        dynamic_k: bool = False,
    ) -> None:
        self.table = np.ascontiguousarray(table, dtype=np.float32)  # [items, dim], row 0 = padding
        self.bilinear = np.ascontiguousarray(bilinear, dtype=np.float32)  # [dim, dim] or [K, dim, dim]
        self.k_max, self.maxlen = (int(n) for n in np.shape(routing_logits)[-2:])
        self.routing_logits = np.ascontiguousarray(routing_logits, dtype=np.float32).reshape(self.k_max, self.maxlen)
        self.iters = iters
        self.model_version = model_version
        self.vocab = vocab
        self.item_count = int(self.table.shape[0])
        self.dim = int(self.table.shape[1])
        self.per_interest = self.bilinear.ndim == 3
        self.dynamic_k = dynamic_k

    @classmethod
    def from_net(cls, net: MindNet, model_version: str, *, vocab: ItemVocab | None = None) -> ServingTower:
        caps = net.capsules
        return cls(
            net.item_emb.weight.numpy(),
            caps.bilinear.numpy(),
            caps.routing_logits.numpy(),
            iters=caps.iters,
            model_version=model_version,
            vocab=vocab,
            dynamic_k=net.cfg.dynamic_k,
        )

    def item_vectors(self, item_ids: IntArray) -> FloatArray:
        """``[n, dim]`` vectors of items (external ids with ``vocab``, rows otherwise); zero for ids this
        version does not know (the diversity-aware merge then has no vector to compare)."""
        ids = np.asarray(item_ids, dtype=np.int64)
        rows = self.vocab.rows(ids) if self.vocab is not None else np.where((ids > 0) & (ids < self.item_count), ids, 0)
        return self.table[rows]  # row 0 (padding) is all zero

    def interests(self, histories: Sequence[Sequence[int] | IntArray]) -> FloatArray:
        hist, seq_len = self._pad([self._known(h) for h in histories])
        out = self.forward(hist, seq_len)
        out *= (seq_len > 0)[:, None, None]
        return out

    def forward(self, hist: IntArray, seq_len: IntArray) -> FloatArray:
        """``hist [B, maxlen]`` rows (left-aligned), ``seq_len [B]`` -> interests ``[B, K, dim]``."""
        batch = hist.shape[0]
        emb = self.table[hist]  # [B, L, D]
        mask = (np.arange(self.maxlen)[None, :] < seq_len[:, None]).astype(np.float32)[:, None, :]  # [B, 1, L]
        if self.per_interest:
            low = np.einsum("bld,kde->bkle", emb, self.bilinear, optimize=True)  # [B, K, L, D]
        else:
            low = emb @ self.bilinear  # [B, L, D]
        logits = np.broadcast_to(self.routing_logits, (batch, self.k_max, self.maxlen))
        interests = np.zeros((batch, self.k_max, self.dim), dtype=np.float32)
        for i in range(self.iters):
            weight = _softmax_over_interests(logits) * mask  # [B, K, L]
            per_interest = self.per_interest
            combined = np.einsum("bkl,bkld->bkd", weight, low, optimize=True) if per_interest else weight @ low
            interests = _squash(combined)
            if i < self.iters - 1:
                if self.per_interest:
                    agreement = np.einsum("bkld,bkd->bkl", low, interests, optimize=True)
                else:
                    agreement = interests @ low.transpose(0, 2, 1)
                logits = logits + agreement
        if self.dynamic_k:
            active = np.arange(self.k_max)[None, :] < interest_counts(seq_len, self.k_max)[:, None]
            interests = interests * active[:, :, None]
        return np.asarray(interests, dtype=np.float32)

    def _pad(self, histories: list[IntArray]) -> tuple[IntArray, IntArray]:
        hist = np.zeros((len(histories), self.maxlen), dtype=np.int64)
        seq_len = np.zeros(len(histories), dtype=np.int64)
        for row, h in enumerate(histories):
            tail = h[-self.maxlen :]
            hist[row, : tail.shape[0]] = tail
            seq_len[row] = tail.shape[0]
        return hist, seq_len

    def _known(self, history: Sequence[int] | IntArray) -> IntArray:
        h = np.asarray(history, dtype=np.int64)
        if self.vocab is not None:
            h = self.vocab.rows(h)
        return h[(h > 0) & (h < self.item_count)]


def _softmax_over_interests(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True), dtype=np.float32)


def _squash(s: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    sq_norm = np.sum(s * s, axis=-1, keepdims=True)
    return np.asarray(s * (sq_norm / (1.0 + sq_norm) / np.sqrt(sq_norm + _EPS)), dtype=np.float32)
