"""Export: item vectors in batches, and the batched user tower used for serving and evaluation.

Both speak rows (the training space) by default; given the version's :class:`ItemVocab` they speak
the catalogue's external item ids, as everything outside the model does."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import paddle

from model.data.types import HeldOut, IntArray
from model.net import MindNet
from model.sampling import pad_histories
from model.vocab import ItemVocab

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ItemVectorBatch:
    ids: IntArray  # [n], never 0: rows, or external ids when exported with a vocabulary
    vectors: FloatArray  # [n, dim]
    model_version: str


def item_table(net: MindNet) -> FloatArray:
    """The whole item table as numpy (row = id, row 0 = padding)."""
    return np.asarray(net.item_vectors().numpy(), dtype=np.float32)


def iter_item_vectors(
    net: MindNet,
    model_version: str,
    *,
    batch_size: int = 10_000,
    ids: IntArray | None = None,
    vocab: ItemVocab | None = None,
) -> Iterator[ItemVectorBatch]:
    """Yield ``(id, vector)`` batches for every real item (or just the rows ``ids``), tagged with the
    version; with ``vocab`` the batches carry the items' external ids."""
    table = item_table(net)
    wanted = np.arange(1, table.shape[0], dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    for lo in range(0, wanted.shape[0], batch_size):
        chunk = wanted[lo : lo + batch_size]
        out = chunk if vocab is None else vocab.external(chunk)
        yield ItemVectorBatch(ids=out, vectors=table[chunk], model_version=model_version)


class UserTower:
    """``interests(hist_item lists) -> [B, K, dim]`` for serving: any history length, newest last.

    Histories are external item ids when the tower has the version's ``vocab`` (serving), rows
    otherwise (training and offline evaluation). Ids the version does not know (items it has not
    learnt yet) are ignored rather than crashing; histories are cut to the last ``maxlen`` known
    clicks; an empty history yields zero vectors.
    """

    def __init__(
        self, net: MindNet, model_version: str, *, batch_size: int = 1024, vocab: ItemVocab | None = None
    ) -> None:
        self.net = net
        self.model_version = model_version
        self.vocab = vocab
        self.maxlen = net.cfg.maxlen
        self.k_max = net.cfg.k_max
        self.dim = net.cfg.dim
        self._batch_size = batch_size

    def interests(self, histories: Sequence[Sequence[int] | IntArray]) -> FloatArray:
        cleaned = [self._known(h) for h in histories]
        out = np.zeros((len(cleaned), self.k_max, self.dim), dtype=np.float32)
        was_training = self.net.training
        self.net.eval()
        try:
            with paddle.no_grad():
                for lo in range(0, len(cleaned), self._batch_size):
                    hist, seq_len = pad_histories(cleaned[lo : lo + self._batch_size], self.maxlen)
                    vecs = self.net.interests(paddle.to_tensor(hist), paddle.to_tensor(seq_len))
                    out[lo : lo + len(hist)] = vecs.numpy() * (seq_len > 0)[:, None, None]
        finally:
            if was_training:
                self.net.train()
        return out

    def _known(self, history: Sequence[int] | IntArray) -> IntArray:
        h = np.asarray(history, dtype=np.int64)
        if self.vocab is not None:
            h = self.vocab.rows(h)
        return h[(h > 0) & (h < self.net.item_count)]


def external_heldout(heldout: HeldOut, vocab: ItemVocab) -> HeldOut:
    """Held-out users in external ids (rows -> ids; unknown truth items, negative, stay unhittable)."""

    def ext(rows: IntArray) -> IntArray:
        rows = np.asarray(rows, dtype=np.int64)
        return np.where(rows > 0, vocab.ids[np.maximum(rows, 0)], rows)

    return HeldOut(
        heldout.user_ids,
        [ext(h) for h in heldout.histories],
        [ext(t) for t in heldout.truths],
        heldout.truth_protocol,
    )
