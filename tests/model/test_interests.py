"""Multi-interest variants: per-sample routing, per-interest maps, hard readout, REMI's terms, and
the interest diagnostics."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from model.config import MindConfig, TrainConfig
from model.data.types import Sequences
from model.loss import hard_negative_weights, routing_penalty, sampled_softmax_loss
from model.metrics import interest_diagnostics, mean_pairwise_cosine, merge_interests, merge_with_sources
from model.net import MindNet
from model.train import Trainer


def _route(net: MindNet, hist: np.ndarray, seq_len: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with paddle.no_grad():
        interests, weight = net.capsules.route(net.item_emb(paddle.to_tensor(hist)), paddle.to_tensor(seq_len))
    return interests.numpy(), weight.numpy()


@pytest.mark.parametrize("routing", ["reference", "comirec", "comirec_dr"])
def test_routing_weights_sum_to_one_over_interests_and_skip_padding(routing: str) -> None:
    cfg = MindConfig(dim=8, k_max=3, maxlen=6, routing=routing)
    net = MindNet(cfg, 50, seed=1)
    net.train()
    seq_len = np.array([2, 6, 4])
    hist = np.random.default_rng(0).integers(1, 50, size=(3, 6))
    interests, weight = _route(net, hist, seq_len)
    assert interests.shape == (3, 3, 8) and weight.shape == (3, 3, 6)
    real = np.arange(6)[None, :] < seq_len[:, None]
    np.testing.assert_allclose(weight.sum(axis=1)[real], 1.0, rtol=1e-5)
    assert np.all(weight.transpose(0, 2, 1)[~real] == 0.0)


def test_comirec_routing_draws_fresh_logits_in_training_only() -> None:
    net = MindNet(MindConfig(dim=8, k_max=3, maxlen=6, routing="comirec"), 50, seed=1)
    hist = np.random.default_rng(0).integers(1, 50, size=(2, 6))
    seq_len = np.array([6, 6])
    net.train()
    first, second = _route(net, hist, seq_len)[1], _route(net, hist, seq_len)[1]
    assert not np.allclose(first, second)
    net.eval()
    np.testing.assert_allclose(_route(net, hist, seq_len)[1], _route(net, hist, seq_len)[1])
    reference = MindNet(MindConfig(dim=8, k_max=3, maxlen=6), 50, seed=1)
    reference.train()
    np.testing.assert_allclose(_route(reference, hist, seq_len)[1], _route(reference, hist, seq_len)[1])


def test_per_interest_maps_have_one_bilinear_per_interest() -> None:
    net = MindNet(MindConfig(dim=8, k_max=3, maxlen=6, routing="comirec_dr"), 50)
    assert tuple(net.capsules.bilinear.shape) == (3, 8, 8)
    assert tuple(MindNet(MindConfig(dim=8, k_max=3, maxlen=6), 50).capsules.bilinear.shape) == (8, 8)


def test_hard_readout_picks_the_argmax_interest() -> None:
    net = MindNet(MindConfig(dim=2, k_max=3, maxlen=3, readout="hard"), 5)
    interests = paddle.to_tensor(np.array([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.6]]] * 2, dtype=np.float32))
    target = paddle.to_tensor(np.array([[0.1, 2.0], [2.0, 0.5]], dtype=np.float32))
    user = net.label_aware(interests, target).numpy()
    np.testing.assert_allclose(user, [[0.0, 1.0], [1.0, 0.0]])


def test_routing_penalty_is_zero_for_uniform_weights_and_ignores_padding() -> None:
    weight = np.full((2, 4, 5), 0.25, dtype=np.float32)
    weight[1, :, 3:] = 0.0  # padding of a 3-click history
    seq_len = paddle.to_tensor(np.array([5, 3]))
    assert float(routing_penalty(paddle.to_tensor(weight), seq_len)) == pytest.approx(0.0, abs=1e-9)
    sharp = np.zeros((1, 2, 4), dtype=np.float32)
    sharp[0, 0, :2] = sharp[0, 1, 2:] = 1.0  # each interest owns two of four clicks: variance 1/4
    got = float(routing_penalty(paddle.to_tensor(sharp), paddle.to_tensor(np.array([4]))))
    assert got == pytest.approx(2 * 0.25**2)


def test_hard_negative_weights_favour_high_scores_and_vanish_at_beta_zero() -> None:
    scores = paddle.to_tensor(np.array([[0.0, 1.0, 2.0, 5.0]], dtype=np.float32))
    bias = paddle.to_tensor(np.array([[0.0, 0.0, 0.0, -1e9]], dtype=np.float32))  # last: accidental hit
    w = hard_negative_weights(scores, bias, 1.0).numpy()[0]
    assert w[0] < w[1] < w[2]
    np.testing.assert_allclose(np.exp(w[:3]).sum(), 3.0, rtol=1e-5)  # weights of real negatives sum to N
    np.testing.assert_allclose(hard_negative_weights(scores, bias, 1e-8).numpy()[0, :3], 0.0, atol=1e-5)
    user = paddle.to_tensor(np.array([[1.0, 0.0]], dtype=np.float32))
    target = paddle.to_tensor(np.array([[1.0, 0.0]], dtype=np.float32))
    neg = paddle.to_tensor(np.array([[0.5, 0.0], [-0.5, 0.0]], dtype=np.float32))
    flat = paddle.to_tensor(np.zeros((1, 3), dtype=np.float32))
    plain = float(sampled_softmax_loss(user, target, neg, flat))
    assert float(sampled_softmax_loss(user, target, neg, flat, hard_neg_beta=2.0)) > plain


def test_mean_pairwise_cosine_on_a_hand_made_example() -> None:
    interests = np.array(
        [
            [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]],  # cosines 0, 1/sqrt2, 1/sqrt2
            [[1.0, 0.0], [3.0, 0.0], [-1.0, 0.0]],  # cosines 1, -1, -1
            [[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]],  # a zero vector: skipped
        ],
        dtype=np.float32,
    )
    expected = np.mean([0.0, 2**-0.5, 2**-0.5, 1.0, -1.0, -1.0])
    assert mean_pairwise_cosine(interests) == pytest.approx(expected, rel=1e-6)
    assert mean_pairwise_cosine(interests[:, :1]) is None


def test_merge_sources_hit_share_and_distinct_candidates() -> None:
    # One user, K=2, n=3. Interest 0 finds 1, 2, 3; interest 1 finds 4, 1, 5 (1 scored better by interest 1).
    ids = np.array([[[1, 2, 3], [4, 1, 5]]])
    scores = np.array([[[0.5, 0.4, 0.1], [0.9, 0.8, 0.05]]], dtype=np.float32)
    merged, sources, distinct = merge_with_sources(ids, scores, top_n=4)
    assert merged[0].tolist() == [4, 1, 2, 3] == merge_interests(ids, scores, 4)[0].tolist()
    assert sources[0].tolist() == [1, 1, 0, 0]
    assert distinct.tolist() == [5]
    interests = np.array([[[1.0, 0.0], [0.0, 1.0]]], dtype=np.float32)
    diag = interest_diagnostics(interests, merged, sources, distinct, [np.array([4, 1, 2, 9])])
    assert diag.hit_share == pytest.approx((2 / 3, 1 / 3))  # interest 1: two hits, interest 0: one
    assert diag.mean_pairwise_cosine == pytest.approx(0.0)
    assert diag.distinct_candidates == 5.0
    assert diag.as_dict()["k"] == 2


def test_old_manifest_without_new_fields_loads_the_reference_layout() -> None:
    old = {"dim": 8, "k_max": 3, "maxlen": 6, "iters": 3, "pow_p": 1.0}
    cfg = MindConfig(**old)
    net = MindNet(cfg, 20)
    assert tuple(net.capsules.bilinear.shape) == (8, 8)
    assert tuple(net.capsules.routing_logits.shape) == (1, 3, 6)


@pytest.mark.parametrize(
    ("mind", "train"),
    [
        ({"routing": "comirec", "readout": "hard"}, {}),
        ({"routing": "comirec_dr"}, {"routing_reg": 3.0}),
        ({}, {"hard_neg_beta": 1.0}),
    ],
)
def test_variants_train(
    clustered_seqs: Sequences, tiny_train_cfg: TrainConfig, mind: dict[str, object], train: dict[str, float]
) -> None:
    cfg = MindConfig(dim=8, k_max=3, maxlen=6, **mind)  # type: ignore[arg-type]
    trainer = Trainer(clustered_seqs, cfg, tiny_train_cfg.model_copy(update=train))
    first = np.mean([trainer.train_step() for _ in range(5)])
    for _ in range(80):
        trainer.train_step()
    last = np.mean([trainer.train_step() for _ in range(5)])
    assert np.isfinite(last)
    if not train.get("hard_neg_beta"):  # reweighted negatives make later losses incomparable
        assert last < first
