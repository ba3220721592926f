"""Cold-start rules (model.cold_start): the co-click mean, and a few optimiser steps on the new rows
alone that leave every other weight bit-identical, lower the loss on the introducing clicks, are
deterministic, and compute the project's training loss (checked against Paddle's autograd)."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from model.cold_start import (
    FrozenModel,
    IntroducingClicks,
    _loss_and_grad,
    _Problem,
    co_click_mean,
    few_steps,
    introducing_loss,
    random_rows,
)
from model.config import ColdStartSteps, MindConfig, TrainConfig
from model.data.types import Sequences
from model.loss import sampled_softmax_loss
from model.net import MindNet
from model.train import Trainer, train


@pytest.fixture(scope="module")
def live_net() -> MindNet:
    """A small trained version: 4 clusters of 10 items (rows 1..40), users click inside 1-2 clusters."""
    rng = np.random.default_rng(0)
    seqs = []
    for _ in range(80):
        clusters = rng.choice(4, size=rng.integers(1, 3), replace=False)
        seqs.append([int(c * 10 + rng.integers(1, 11)) for c in rng.choice(clusters, size=rng.integers(8, 20))])
    data = Sequences.from_lists(list(range(1, 81)), seqs, item_count=41)
    trainer = Trainer(data, MindConfig(dim=8, k_max=2, maxlen=6), TrainConfig(batch_size=32, negatives=16, seed=3))
    train(trainer, batches=150, checkpoint_dir=None)
    return trainer.net


def _clicks() -> IntroducingClicks:
    """New item 0 is clicked by cluster-0 users (rows 1..10), new item 1 by cluster-2 users (21..30)."""
    rng = np.random.default_rng(1)
    histories = [rng.integers(1, 11, size=5) for _ in range(6)] + [rng.integers(21, 31, size=5) for _ in range(6)]
    return IntroducingClicks(histories, np.asarray([0] * 6 + [1] * 6, dtype=np.int64))


def test_co_click_mean_is_the_mean_of_known_context_rows_and_reports_waiting() -> None:
    table = np.arange(12, dtype=np.float32).reshape(6, 2)  # row r = [2r, 2r + 1]
    out = co_click_mean(table, [np.array([1, 3, 3]), np.array([0, 9]), np.zeros(0, dtype=np.int64), np.array([5])])
    np.testing.assert_array_equal(out.ready, [True, False, False, True])
    assert out.waiting == 2
    np.testing.assert_allclose(out.vectors[0], (table[1] + 2 * table[3]) / 3)  # repeats count
    np.testing.assert_array_equal(out.vectors[3], table[5])
    np.testing.assert_array_equal(out.vectors[1], 0)  # padding / unknown rows are no context


def test_few_steps_leaves_every_other_weight_bit_identical(live_net: MindNet) -> None:
    before = {k: v.numpy().copy() for k, v in live_net.state_dict().items()}
    model = FrozenModel.from_net(live_net)
    table, bilinear = model.table.copy(), model.tower.bilinear.copy()
    few_steps(model, _clicks(), 2, ColdStartSteps(steps=20, lr=0.1), seed=0)
    for key, value in live_net.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), before[key], err_msg=key)
    np.testing.assert_array_equal(model.table, table)
    np.testing.assert_array_equal(model.tower.bilinear, bilinear)


def test_few_steps_lowers_the_loss_on_the_introducing_clicks(live_net: MindNet) -> None:
    model, clicks = FrozenModel.from_net(live_net), _clicks()
    cfg = ColdStartSteps(steps=30, lr=0.05, init="random")
    result = few_steps(model, clicks, 2, cfg, seed=0)
    start = random_rows(2, 8, 0)
    assert result.losses[0] == pytest.approx(introducing_loss(model, clicks, start, cfg), rel=1e-5)
    assert result.losses[-1] == pytest.approx(introducing_loss(model, clicks, result.vectors, cfg), rel=1e-5)
    assert result.losses[-1] < 0.8 * result.losses[0]
    from_mean = few_steps(model, clicks, 2, ColdStartSteps(steps=30, lr=0.05), seed=0)  # co-click init
    assert from_mean.losses[-1] < from_mean.losses[0]


def test_few_steps_is_deterministic_for_a_seed(live_net: MindNet) -> None:
    model, clicks = FrozenModel.from_net(live_net), _clicks()
    cfg = ColdStartSteps(steps=10, lr=0.05, negatives=8, full_softmax_ratio=0.0)  # sampled negatives
    a = few_steps(model, clicks, 2, cfg, seed=4)
    b = few_steps(model, clicks, 2, cfg, seed=4)
    c = few_steps(model, clicks, 2, cfg, seed=5)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert a.losses == b.losses
    assert not np.array_equal(a.vectors, c.vectors)


def test_a_new_item_scores_higher_for_its_clickers_after_the_steps(live_net: MindNet) -> None:
    model, clicks = FrozenModel.from_net(live_net), _clicks()
    start = random_rows(2, 8, 0)
    after = few_steps(model, clicks, 2, ColdStartSteps(steps=30, lr=0.05), init=start, seed=0).vectors
    interests = model.tower.interests(clicks.histories)  # [12, K, D]
    for item in (0, 1):
        mine = interests[clicks.targets == item]
        before_score = np.max(mine @ start[item], axis=1).mean()
        after_score = np.max(mine @ after[item], axis=1).mean()
        assert after_score > before_score
        ranks = [int(((model.table[1:] @ u.T).max(axis=1) > (u @ after[item]).max()).sum()) for u in mine]
        assert np.mean(ranks) < 10  # among the top of the 40 existing items for its clickers


def test_an_item_without_a_known_history_waits(live_net: MindNet) -> None:
    model = FrozenModel.from_net(live_net)
    clicks = IntroducingClicks([np.array([3, 4]), np.array([0]), np.array([99])], np.array([0, 1, 1]))
    result = few_steps(model, clicks, 3, ColdStartSteps(steps=3), seed=0)
    np.testing.assert_array_equal(result.ready, [True, False, False])
    assert result.waiting == 2
    np.testing.assert_array_equal(result.vectors[1:], 0)  # co-click init of an item without context


@pytest.mark.parametrize("readout", ["hard", "soft"])
def test_loss_and_gradient_match_the_training_loss_under_paddle(readout: str) -> None:
    """Introducing clicks (targets: new rows) weighted 0.3 and background clicks (targets: existing
    rows, the new rows only negatives) weighted 0.7, against model.loss + MindNet.label_aware."""
    rng = np.random.default_rng(2)
    batch, n_bg, k, dim, existing, n_new = 7, 5, 3, 5, 9, 3
    interests = rng.normal(size=(batch, k, dim)).astype(np.float32)
    bg_interests = rng.normal(size=(n_bg, k, dim)).astype(np.float32)
    table = rng.normal(size=(existing + 1, dim)).astype(np.float32)
    rows = rng.normal(size=(n_new, dim)).astype(np.float32)
    targets = rng.integers(0, n_new, size=batch)
    bg_targets = rng.integers(1, existing + 1, size=n_bg)
    net = MindNet(MindConfig(dim=dim, k_max=k, readout=readout), 2)  # only its readout is used
    bg_user = net.label_aware(paddle.to_tensor(bg_interests), paddle.to_tensor(table[bg_targets])).numpy()
    problem = _Problem(interests, targets, table, readout, 1.0, bg_user, bg_targets, 0.7)  # type: ignore[arg-type]
    loss, grad = _loss_and_grad(problem, rows, np.arange(1, existing + 1), np.float32(0.3))

    w = paddle.to_tensor(rows, stop_gradient=False)
    neg_emb = paddle.concat([paddle.to_tensor(table[1:]), w])
    target_emb = paddle.gather(w, paddle.to_tensor(targets))
    user = net.label_aware(paddle.to_tensor(interests), target_emb)
    bias = np.zeros((batch, 1 + existing + n_new), dtype=np.float32)
    bias[:, 1 : 1 + existing] = 0.3
    bias[np.arange(batch), 1 + existing + targets] = -1e9
    intro = sampled_softmax_loss(user, target_emb, neg_emb, paddle.to_tensor(bias))
    bg_target = paddle.to_tensor(table[bg_targets])
    bg_bias = np.zeros((n_bg, 1 + existing + n_new), dtype=np.float32)
    bg_bias[:, 1 : 1 + existing] = 0.3
    bg_bias[np.arange(n_bg), bg_targets] = -1e9  # column 1 + (row - 1): the target among the negatives
    bg = sampled_softmax_loss(paddle.to_tensor(bg_user), bg_target, neg_emb, paddle.to_tensor(bg_bias))
    expected = 0.3 * intro + 0.7 * bg
    expected.backward()
    assert loss == pytest.approx(float(expected.numpy()), rel=1e-5)
    assert w.grad is not None
    np.testing.assert_allclose(grad, w.grad.numpy(), rtol=1e-4, atol=1e-6)
