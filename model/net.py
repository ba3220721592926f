"""MIND layers (PaddlePaddle dygraph): item embedding, B2I dynamic-routing capsules,
label-aware attention. Pure layers: no data feeding, no loss, no optimiser."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import paddle
from paddle import nn

from model.config import MindConfig

_EPS = 1e-9
_NEG_INF = -1e9


def squash(s: paddle.Tensor) -> paddle.Tensor:
    """``|s|^2 / (1 + |s|^2) * s / |s|`` along the last axis: keeps direction, norm in [0, 1)."""
    sq_norm = paddle.sum(s * s, axis=-1, keepdim=True)
    scale = sq_norm / (1.0 + sq_norm) / paddle.sqrt(sq_norm + _EPS)
    return s * scale


def sequence_mask(seq_len: paddle.Tensor, maxlen: int) -> paddle.Tensor:
    """``[B] -> [B, maxlen]`` float mask, 1 for real clicks (left-aligned), 0 for padding."""
    positions = paddle.arange(maxlen, dtype="int64").unsqueeze(0)
    return (positions < seq_len.astype("int64").unsqueeze(1)).astype("float32")


def interest_counts(lengths: npt.ArrayLike, k_max: int) -> npt.NDArray[np.int64]:
    """MIND's dynamic interest count ``K_u = max(1, min(k_max, floor(log2 n)))`` for history lengths ``n``
    (computed on integers: the number of ``k`` in 1..k_max with ``2^k <= n``, at least 1)."""
    n = np.asarray(lengths, dtype=np.int64)
    powers = np.left_shift(1, np.arange(1, k_max + 1, dtype=np.int64))
    return np.maximum(1, (n[..., None] >= powers).sum(axis=-1)).astype(np.int64)


def interest_mask(seq_len: paddle.Tensor, k_max: int) -> paddle.Tensor:
    """``[B] -> [B, K]`` float mask of the first :func:`interest_counts` interests of each user."""
    powers = paddle.to_tensor(np.left_shift(1, np.arange(1, k_max + 1, dtype=np.int64)))
    counts = paddle.clip(paddle.sum((seq_len.astype("int64").unsqueeze(1) >= powers).astype("int64"), axis=1), min=1)
    return (paddle.arange(k_max, dtype="int64").unsqueeze(0) < counts.unsqueeze(1)).astype("float32")


class CapsuleLayer(nn.Layer):
    """Behaviour-to-interest (B2I) dynamic routing.

    Routing weights are a softmax over interests of logits ``[B, K, maxlen]``; padded positions get
    zero weight, so padded ids never change the interests. The initial logits are a fixed,
    non-trainable random tensor ``[1, K, maxlen]`` shared by all users (PaddleRec), or, with
    ``routing`` 'comirec' / 'comirec_dr', fresh N(0, 1) logits per sample while training (ComiRec;
    inference starts from the fixed tensor, so serving is deterministic). A bilinear map ``[dim, dim]``
    shared by all interests ('comirec_dr': one per interest, ``[K, dim, dim]``) maps item vectors to
    the interest space; ``iters`` rounds refine the logits, the gradient flowing only through the
    last one unless ``routing_grad`` is asked for (REMI's routing regularisation needs it). With
    ``dynamic_k`` the interests past a user's :func:`interest_counts` are zero (and route nothing).
    """

    def __init__(self, cfg: MindConfig, seed: int = 0) -> None:
        super().__init__()
        self.k_max = cfg.k_max
        self.dynamic_k = cfg.dynamic_k
        self.maxlen = cfg.maxlen
        self.iters = cfg.iters
        self.per_sample = cfg.routing != "reference"
        self.per_interest = cfg.routing == "comirec_dr"
        shape = [cfg.k_max, cfg.dim, cfg.dim] if self.per_interest else [cfg.dim, cfg.dim]
        self.bilinear = self.create_parameter(
            shape=shape,
            default_initializer=nn.initializer.Normal(mean=0.0, std=1.0 / cfg.dim**0.5),
        )
        gen = paddle.framework.core.default_cpu_generator()
        state = gen.get_state()
        paddle.seed(seed)
        logits = paddle.randn([1, cfg.k_max, cfg.maxlen], dtype="float32")
        gen.set_state(state)
        self.register_buffer("routing_logits", logits, persistable=True)

    def forward(self, item_emb: paddle.Tensor, seq_len: paddle.Tensor) -> paddle.Tensor:
        """``item_emb [B, L, D]``, ``seq_len [B]`` -> interests ``[B, K, D]``."""
        return self.route(item_emb, seq_len)[0]

    def initial_logits(self, batch: int) -> paddle.Tensor:
        if self.per_sample and self.training:
            return paddle.randn([batch, self.k_max, self.maxlen], dtype="float32")
        return paddle.expand(self.routing_logits, [batch, self.k_max, self.maxlen])

    def route(
        self, item_emb: paddle.Tensor, seq_len: paddle.Tensor, *, routing_grad: bool = False
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Interests ``[B, K, D]`` and the last routing weights ``[B, K, L]`` (0 on padding)."""
        batch = item_emb.shape[0]
        mask = sequence_mask(seq_len, self.maxlen).unsqueeze(1)  # [B, 1, L]
        if self.per_interest:
            # One 2-D matmul [B*L, D] x [D, K*D] (Paddle's broadcast batched matmul has no CPU grad here).
            dim = item_emb.shape[-1]
            maps = paddle.transpose(self.bilinear, [1, 0, 2]).reshape([dim, self.k_max * dim])
            low = paddle.matmul(item_emb.reshape([-1, dim]), maps).reshape([batch, -1, self.k_max, dim])
            low = paddle.transpose(low, [0, 2, 1, 3])  # [B, K, L, D]
        else:
            low = paddle.matmul(item_emb, self.bilinear)  # [B, L, D]
        low_iter = low if routing_grad else low.detach()
        logits = self.initial_logits(batch)
        weight = mask
        interests = paddle.zeros([batch, self.k_max, low.shape[-1]], dtype=low.dtype)
        for i in range(self.iters):
            last = i == self.iters - 1
            weight = nn.functional.softmax(logits, axis=1) * mask  # softmax over interests
            interests = squash(self._combine(weight, low if last else low_iter))
            if not last:
                logits = logits + self._agreement(interests, low_iter)
        if self.dynamic_k:
            active = interest_mask(seq_len, self.k_max)  # [B, K]
            interests = interests * active.unsqueeze(-1)
            weight = weight * active.unsqueeze(-1)
        return interests, weight

    def _combine(self, weight: paddle.Tensor, low: paddle.Tensor) -> paddle.Tensor:
        """``sum_l weight[b, k, l] * low[b, (k,) l, :]`` -> ``[B, K, D]``."""
        if self.per_interest:
            return paddle.matmul(weight.unsqueeze(2), low).squeeze(2)
        return paddle.matmul(weight, low)

    def _agreement(self, interests: paddle.Tensor, low: paddle.Tensor) -> paddle.Tensor:
        """``<interest k, low[l]>`` -> ``[B, K, L]``."""
        if self.per_interest:
            return paddle.matmul(low, interests.unsqueeze(-1)).squeeze(-1)
        return paddle.matmul(interests, low, transpose_y=True)


class MindNet(nn.Layer):
    """Item table + user tower (capsules). ``item_count`` rows, id 0 is padding."""

    def __init__(self, cfg: MindConfig, item_count: int, *, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_count = item_count
        self.item_emb = nn.Embedding(
            item_count,
            cfg.dim,
            sparse=True,
            padding_idx=0,
            weight_attr=paddle.ParamAttr(initializer=nn.initializer.Normal(mean=0.0, std=1.0 / cfg.dim**0.5)),
        )
        self.capsules = CapsuleLayer(cfg, seed=seed)

    def interests(self, hist: paddle.Tensor, seq_len: paddle.Tensor) -> paddle.Tensor:
        """``hist [B, maxlen]`` int64 left-aligned, ``seq_len [B]`` -> ``[B, K, dim]``."""
        return self.capsules(self.item_emb(hist), seq_len)

    def label_aware(self, interests: paddle.Tensor, target_emb: paddle.Tensor) -> paddle.Tensor:
        """Readout guided by the target: ``[B, K, D], [B, D] -> [B, D]``.

        'soft': attention over interests, ``softmax(sign(a) |a|^pow_p)`` with ``a = <interest, target>``;
        'hard': the interest with the largest ``a`` (ComiRec), the gradient reaching only that one.
        """
        att = paddle.matmul(interests, target_emb.unsqueeze(-1)).squeeze(-1)  # [B, K]
        if self.cfg.dynamic_k:  # interests switched off (all zero) are never read out
            silent = paddle.sum(paddle.abs(interests), axis=-1) == 0
            att = paddle.where(silent, paddle.full_like(att, _NEG_INF), att)
        if self.cfg.readout == "hard":
            pick = nn.functional.one_hot(paddle.argmax(att, axis=-1), self.cfg.k_max).astype(interests.dtype)
            return paddle.sum(pick.unsqueeze(-1) * interests, axis=1)
        if self.cfg.pow_p != 1.0:
            att = paddle.sign(att) * paddle.pow(paddle.abs(att), self.cfg.pow_p)
        weight = nn.functional.softmax(att, axis=-1).unsqueeze(-1)
        return paddle.sum(weight * interests, axis=1)

    def item_vectors(self) -> paddle.Tensor:
        return self.item_emb.weight
