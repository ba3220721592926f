"""MIND layers (PaddlePaddle dygraph): item embedding, B2I dynamic-routing capsules,
label-aware attention. Pure layers: no data feeding, no loss, no optimiser."""

from __future__ import annotations

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


class CapsuleLayer(nn.Layer):
    """Behaviour-to-interest (B2I) dynamic routing.

    The routing logits start from a fixed, non-trainable random tensor ``[1, K, maxlen]``;
    a bilinear map ``[dim, dim]`` shared by all behaviours maps item vectors to the interest
    space; ``iters`` rounds refine the logits, the gradient flowing only through the last one.
    Padded positions get zero routing weight, so padded ids never change the interests.
    """

    def __init__(self, cfg: MindConfig, seed: int = 0) -> None:
        super().__init__()
        self.k_max = cfg.k_max
        self.maxlen = cfg.maxlen
        self.iters = cfg.iters
        self.bilinear = self.create_parameter(
            shape=[cfg.dim, cfg.dim],
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
        batch = item_emb.shape[0]
        mask = sequence_mask(seq_len, self.maxlen).unsqueeze(1)  # [B, 1, L]
        low = paddle.matmul(item_emb, self.bilinear)  # [B, L, D]
        low_nograd = low.detach()
        logits = paddle.expand(self.routing_logits, [batch, self.k_max, self.maxlen])
        interests = paddle.zeros([batch, self.k_max, low.shape[-1]], dtype=low.dtype)
        for i in range(self.iters):
            last = i == self.iters - 1
            weight = nn.functional.softmax(logits, axis=1) * mask  # softmax over interests
            interests = squash(paddle.matmul(weight, low if last else low_nograd))
            if not last:
                delta = paddle.matmul(interests, low_nograd, transpose_y=True)  # [B, K, L]
                logits = logits + delta
        return interests


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
        """Attention over interests guided by the target: ``[B, K, D], [B, D] -> [B, D]``."""
        att = paddle.matmul(interests, target_emb.unsqueeze(-1)).squeeze(-1)  # [B, K]
        if self.cfg.pow_p != 1.0:
            att = paddle.sign(att) * paddle.pow(paddle.abs(att), self.cfg.pow_p)
        weight = nn.functional.softmax(att, axis=-1).unsqueeze(-1)
        return paddle.sum(weight * interests, axis=1)

    def item_vectors(self) -> paddle.Tensor:
        return self.item_emb.weight
