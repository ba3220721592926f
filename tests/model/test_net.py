from __future__ import annotations

import numpy as np
import paddle

from model.config import MindConfig
from model.net import MindNet, squash


def _interests(net: MindNet, hist: np.ndarray, seq_len: np.ndarray) -> np.ndarray:
    net.eval()
    with paddle.no_grad():
        return net.interests(paddle.to_tensor(hist), paddle.to_tensor(seq_len)).numpy()


def test_interest_shapes(tiny_cfg: MindConfig) -> None:
    net = MindNet(tiny_cfg, 50, seed=1)
    hist = np.random.default_rng(0).integers(1, 50, size=(5, tiny_cfg.maxlen))
    out = _interests(net, hist, np.array([1, 2, 6, 3, 4]))
    assert out.shape == (5, tiny_cfg.k_max, tiny_cfg.dim)
    assert np.isfinite(out).all()


def test_padding_invariance(tiny_cfg: MindConfig) -> None:
    """Ids after seq_len are padding: whatever they are, the interests do not change."""
    net = MindNet(tiny_cfg, 50, seed=1)
    seq_len = np.array([2, 4, 1])
    hist = np.zeros((3, tiny_cfg.maxlen), dtype=np.int64)
    rng = np.random.default_rng(1)
    for row, n in enumerate(seq_len):
        hist[row, :n] = rng.integers(1, 50, size=n)
    noisy = hist.copy()
    for row, n in enumerate(seq_len):
        noisy[row, n:] = rng.integers(1, 50, size=tiny_cfg.maxlen - n)
    np.testing.assert_allclose(_interests(net, hist, seq_len), _interests(net, noisy, seq_len), atol=1e-6)


def test_squash_norm_below_one_and_keeps_direction() -> None:
    s = paddle.to_tensor(np.array([[3.0, 4.0], [0.01, 0.0], [100.0, 0.0]], dtype=np.float32))
    out = squash(s).numpy()
    norms = np.linalg.norm(out, axis=-1)
    assert (norms < 1.0).all()
    np.testing.assert_allclose(norms[0], 25 / 26, rtol=1e-5)  # |s|^2 / (1 + |s|^2) with |s| = 5
    np.testing.assert_allclose(out[0] / norms[0], [0.6, 0.8], rtol=1e-5)


def test_squash_of_zero_is_zero() -> None:
    out = squash(paddle.zeros([2, 4])).numpy()
    assert np.all(out == 0)


def test_interest_norms_below_one(tiny_cfg: MindConfig) -> None:
    net = MindNet(tiny_cfg, 50, seed=2)
    hist = np.random.default_rng(2).integers(1, 50, size=(8, tiny_cfg.maxlen))
    out = _interests(net, hist, np.full(8, tiny_cfg.maxlen))
    assert (np.linalg.norm(out, axis=-1) < 1.0).all()


def test_routing_logits_are_fixed_not_trainable(tiny_cfg: MindConfig) -> None:
    net = MindNet(tiny_cfg, 50, seed=4)
    trainable = {name for name, p in net.named_parameters() if not p.stop_gradient}
    assert "capsules.routing_logits" not in trainable
    assert "capsules.routing_logits" in net.state_dict()
    assert tuple(net.state_dict()["capsules.routing_logits"].shape) == (1, tiny_cfg.k_max, tiny_cfg.maxlen)


def test_label_aware_attention_prefers_matching_interest() -> None:
    cfg = MindConfig(dim=2, k_max=2, maxlen=3, pow_p=8.0, readout="soft")
    net = MindNet(cfg, 5)
    interests = paddle.to_tensor(np.array([[[1.0, 0.0], [0.0, 1.0]]], dtype=np.float32))
    target = paddle.to_tensor(np.array([[0.0, 2.0]], dtype=np.float32))
    user = net.label_aware(interests, target).numpy()
    assert user[0, 1] > 0.99 and user[0, 0] < 0.01  # (2^8 vs 0) -> nearly one-hot
    flat = (
        MindNet(MindConfig(dim=2, k_max=2, maxlen=3, pow_p=1.0, readout="soft"), 5)
        .label_aware(interests, target)
        .numpy()
    )
    assert flat[0, 0] > 0.1  # pow_p 1 attends softly
