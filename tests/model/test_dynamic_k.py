"""MIND's dynamic interest count: K_u = max(1, min(K, log2 n)) in the formula, the nets and the merge."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

from model.config import MindConfig, TrainConfig
from model.data.types import Sequences
from model.evaluate import recommend_detailed
from model.export import UserTower, item_table
from model.net import MindNet, interest_counts, interest_mask
from model.search import ExactSearcher
from model.serving import ServingTower
from model.train import Trainer


@pytest.mark.parametrize("k_max", [1, 2, 4, 8])
def test_the_formula_for_every_history_length(k_max: int) -> None:
    lengths = np.arange(1, 600)
    want = [max(1, min(k_max, math.floor(math.log2(n)))) for n in lengths.tolist()]
    assert interest_counts(lengths, k_max).tolist() == want
    assert interest_counts(np.array([0]), k_max).tolist() == [1]  # an empty history: zero vectors anyway
    mask = interest_mask(paddle.to_tensor(lengths), k_max).numpy()
    assert mask.sum(axis=1).astype(int).tolist() == want
    assert all(row[: int(n)].all() and not row[int(n) :].any() for row, n in zip(mask, want, strict=True))


def test_four_interests_at_16_clicks_as_the_paper() -> None:
    assert interest_counts(np.array([1, 2, 3, 4, 7, 8, 15, 16, 20]), 4).tolist() == [1, 1, 1, 2, 2, 3, 3, 4, 4]


def _net(dynamic: bool) -> MindNet:
    paddle.seed(3)
    net = MindNet(MindConfig(dim=8, k_max=4, maxlen=20, dynamic_k=dynamic), 60, seed=5)
    net.eval()
    return net


def test_towers_switch_off_the_interests_past_k_u() -> None:
    rng = np.random.default_rng(0)
    histories = [rng.integers(1, 60, n).tolist() for n in (0, 1, 3, 4, 9, 16, 30)]
    seen = [min(len(h), 20) for h in histories]  # the tower sees the last maxlen clicks
    for tower in (UserTower(_net(True), "v"), ServingTower.from_net(_net(True), "v")):
        out = tower.interests(histories)
        active = np.any(out != 0, axis=-1)
        assert active.sum(axis=1).tolist() == [0, *interest_counts(np.array(seen[1:]), 4).tolist()]
    np.testing.assert_allclose(
        ServingTower.from_net(_net(True), "v").interests(histories),
        UserTower(_net(True), "v").interests(histories),
        atol=1e-5,
    )
    # the active interests are the fixed-K ones: switching off changes nothing else
    full = UserTower(_net(False), "v").interests(histories)
    dyn = UserTower(_net(True), "v").interests(histories)
    np.testing.assert_allclose(dyn, np.where(np.any(dyn != 0, axis=-1, keepdims=True), full, 0), atol=1e-6)


def test_switched_off_interests_retrieve_nothing() -> None:
    net = _net(True)
    histories = [np.array([5]), np.arange(1, 21)]
    recs = recommend_detailed(UserTower(net, "v"), ExactSearcher(item_table(net)), histories, 10)
    assert set(recs.sources[0].tolist()) == {0}  # one click: one interest
    assert recs.distinct[0] == 10


def test_training_with_dynamic_k_runs_and_learns(clustered_seqs: Sequences, tiny_train_cfg: TrainConfig) -> None:
    cfg = MindConfig(dim=8, k_max=4, maxlen=6, dynamic_k=True)
    for readout in ("hard", "soft"):
        trainer = Trainer(clustered_seqs, cfg.model_copy(update={"readout": readout}), tiny_train_cfg)
        first = np.mean([trainer.train_step() for _ in range(5)])
        for _ in range(100):
            trainer.train_step()
        last = np.mean([trainer.train_step() for _ in range(5)])
        assert np.isfinite(last) and last < first
