"""Sampled softmax loss with log-Q correction and accidental hits removed; REMI's interest-aware
hard negatives and routing regularisation."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import paddle

from model.data.types import IntArray

FloatArray = npt.NDArray[np.float32]
_MASKED = np.float32(-1e9)


def logit_bias(target_log_q: FloatArray, neg_log_q: FloatArray, target_ids: IntArray, neg_ids: IntArray) -> FloatArray:
    """``[B, 1 + N]`` constant added to the logits (true item in column 0).

    ``-log Q`` (the proposal's expected count) corrects every logit so the sampled estimate tends
    to the full softmax; a negative equal to the row's own target (an accidental hit) is masked.
    Built in numpy: it carries no gradient, and one fused add is much cheaper in Paddle on CPU
    than a broadcast subtract plus a mask per step.
    """
    bias = np.empty((target_ids.shape[0], 1 + neg_ids.shape[0]), dtype=np.float32)
    bias[:, 0] = -target_log_q
    bias[:, 1:] = -neg_log_q[None, :]
    bias[:, 1:][target_ids[:, None] == neg_ids[None, :]] = _MASKED
    return bias


def hard_negative_weights(neg_scores: paddle.Tensor, neg_bias: paddle.Tensor, beta: float) -> paddle.Tensor:
    """``log(N * w)`` with ``w = softmax(beta * score)`` over each row's negatives (REMI's IHN).

    Added to the negatives' logits, it replaces the uniform ``1/N`` weight of each negative in the
    softmax denominator by one growing with its score, so negatives close to the user count more.
    Constant (no gradient); masked columns (``neg_bias <= -1e8``, accidental hits) get no weight.
    """
    hard = beta * neg_scores.detach()
    valid = neg_bias > float(_MASKED) / 10
    masked = paddle.where(valid, hard, paddle.full_like(hard, float(_MASKED)))
    count = paddle.sum(valid.astype("float32"), axis=-1, keepdim=True)
    return (hard - paddle.logsumexp(masked, axis=-1, keepdim=True) + paddle.log(count)).detach()


def routing_penalty(weight: paddle.Tensor, seq_len: paddle.Tensor) -> paddle.Tensor:
    """REMI's routing regularisation: per user ``sum_k var_l(weight[k, l])^2`` over the real positions,
    averaged over users. ``weight [B, K, L]`` (0 on padding), ``seq_len [B]``. Zero when every
    interest weighs every behaviour equally; large when interests lock onto single behaviours."""
    maxlen = weight.shape[-1]
    mask = (paddle.arange(maxlen, dtype="int64").unsqueeze(0) < seq_len.astype("int64").unsqueeze(1)).astype(
        weight.dtype
    )
    mask = mask.unsqueeze(1)  # [B, 1, L]
    count = paddle.clip(paddle.sum(mask, axis=-1, keepdim=True), min=1.0)
    mean = paddle.sum(weight * mask, axis=-1, keepdim=True) / count
    var = paddle.sum(((weight - mean) * mask) ** 2, axis=-1) / count.squeeze(-1)  # [B, K]
    return paddle.mean(paddle.sum(var * var, axis=-1))


def sampled_softmax_loss(
    user: paddle.Tensor,
    target_emb: paddle.Tensor,
    neg_emb: paddle.Tensor,
    bias: paddle.Tensor,
    *,
    hard_neg_beta: float = 0.0,
) -> paddle.Tensor:
    """Mean cross-entropy of the true item against shared negatives.

    ``user, target_emb [B, D]``, ``neg_emb [N, D]``, ``bias [B, 1 + N]`` from :func:`logit_bias`;
    ``hard_neg_beta > 0`` reweights the negatives (:func:`hard_negative_weights`).
    """
    pos = paddle.sum(user * target_emb, axis=-1, keepdim=True)  # [B, 1]
    neg = paddle.matmul(user, neg_emb, transpose_y=True)  # [B, N]
    if hard_neg_beta > 0:
        neg = neg + hard_negative_weights(neg, bias[:, 1:], hard_neg_beta)
    logits = paddle.concat([pos, neg], axis=-1) + bias
    label = paddle.zeros([logits.shape[0], 1], dtype="int64")
    return paddle.nn.functional.cross_entropy(logits, label, reduction="mean")
