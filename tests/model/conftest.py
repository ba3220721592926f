"""Tiny models and data for fast model tests."""

from __future__ import annotations

import numpy as np
import pytest

from model.config import MindConfig, TrainConfig
from model.data.types import Sequences


@pytest.fixture
def tiny_cfg() -> MindConfig:
    return MindConfig(dim=8, k_max=3, maxlen=6, iters=3)


@pytest.fixture
def tiny_train_cfg() -> TrainConfig:
    return TrainConfig(batch_size=32, negatives=16, lr=0.02, batches=60, eval_every=30, seed=3)


@pytest.fixture
def clustered_seqs() -> Sequences:
    """60 users, 40 items in 4 clusters of 10; each user clicks inside 1-2 clusters."""
    rng = np.random.default_rng(0)
    seqs = []
    for _ in range(60):
        clusters = rng.choice(4, size=rng.integers(1, 3), replace=False)
        seqs.append([int(c * 10 + rng.integers(1, 11)) for c in rng.choice(clusters, size=rng.integers(6, 20))])
    return Sequences.from_lists(list(range(1, 61)), seqs, item_count=41)
