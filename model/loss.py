"""Sampled softmax loss with log-Q correction and accidental hits removed."""

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


def sampled_softmax_loss(
    user: paddle.Tensor, target_emb: paddle.Tensor, neg_emb: paddle.Tensor, bias: paddle.Tensor
) -> paddle.Tensor:
    """Mean cross-entropy of the true item against shared negatives.

    ``user, target_emb [B, D]``, ``neg_emb [N, D]``, ``bias [B, 1 + N]`` from :func:`logit_bias`.
    """
    pos = paddle.sum(user * target_emb, axis=-1, keepdim=True)  # [B, 1]
    neg = paddle.matmul(user, neg_emb, transpose_y=True)  # [B, N]
    logits = paddle.concat([pos, neg], axis=-1) + bias
    label = paddle.zeros([logits.shape[0], 1], dtype="int64")
    return paddle.nn.functional.cross_entropy(logits, label, reduction="mean")
