"""The numpy serving tower equals the Paddle training net (``MindNet.interests`` in eval mode)."""

from __future__ import annotations

from typing import Any

import numpy as np
import paddle
import pytest

from model.config import MindConfig
from model.export import UserTower
from model.net import MindNet
from model.serving import ServingTower
from model.vocab import ItemVocab

# Routing variants only where this MindConfig has them (inference starts from the fixed logits in all).
VARIANTS: list[dict[str, Any]] = [{}] + (
    [{"routing": "comirec"}, {"routing": "comirec_dr"}] if "routing" in MindConfig.model_fields else []
)


def _histories(rng: np.random.Generator, n: int, items: int, maxlen: int) -> list[list[int]]:
    lengths = rng.integers(0, 2 * maxlen + 1, n)
    lengths[:3] = [0, 1, 2 * maxlen]  # empty, one click, longer than maxlen
    return [rng.integers(1, items, int(length)).tolist() for length in lengths]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.get("routing", "reference"))
@pytest.mark.parametrize(("dim", "k_max", "maxlen", "iters"), [(8, 3, 6, 3), (64, 4, 20, 3), (16, 2, 5, 1)])
def test_numpy_tower_equals_training_net(
    variant: dict[str, Any], dim: int, k_max: int, maxlen: int, iters: int
) -> None:
    cfg = MindConfig(dim=dim, k_max=k_max, maxlen=maxlen, iters=iters, **variant)
    items = 300
    paddle.seed(3)
    net = MindNet(cfg, items, seed=5)
    with paddle.no_grad():  # bigger weights than the init: routing far from uniform, squash not linear
        net.item_emb.weight.set_value(net.item_emb.weight * 4.0)
    net.eval()
    rng = np.random.default_rng(11)
    histories = _histories(rng, 97, items, maxlen)
    want = UserTower(net, "v").interests(histories)
    got = ServingTower.from_net(net, "v").interests(histories)
    assert got.dtype == np.float32 and got.shape == want.shape == (97, k_max, dim)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.all(got[0] == 0)  # empty history: zero vectors
    assert np.abs(want).max() > 0.1  # the comparison is not between near-zero vectors


def test_numpy_tower_uses_the_vocabulary_and_ignores_unknown_ids() -> None:
    cfg = MindConfig(dim=8, k_max=2, maxlen=4)
    net = MindNet(cfg, 6, seed=1)
    net.eval()
    vocab = ItemVocab(np.array([0, 100, 205, 17, 9000, 3], dtype=np.int64), np.zeros(6))
    histories = [[205, 999_999, 17], [999_999], [100, 205, 17, 9000, 3, 3]]
    want = UserTower(net, "v", vocab=vocab).interests(histories)
    got = ServingTower.from_net(net, "v", vocab=vocab).interests(histories)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.all(got[1] == 0)


def test_numpy_tower_is_a_frozen_copy() -> None:
    net = MindNet(MindConfig(dim=8, k_max=2, maxlen=4), 10, seed=1)
    net.eval()
    tower = ServingTower.from_net(net, "v")
    before = tower.interests([[1, 2, 3]])
    with paddle.no_grad():
        net.item_emb.weight.set_value(net.item_emb.weight * 2.0)
    np.testing.assert_array_equal(tower.interests([[1, 2, 3]]), before)
