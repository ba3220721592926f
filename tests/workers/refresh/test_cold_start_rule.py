"""The fast path's cold-start rule (refresh.cold_start) without Milvus or Kafka: both rules give a
vector to the items with context and let the others wait; 'steps' (with its background of clicks on
known items) ranks a new item high for the users who clicked it and low for the others."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from model.cold_start import FrozenModel
from model.config import ColdStartRule, MindConfig, TrainConfig
from model.data.types import Sequences
from model.net import MindNet
from model.train import Trainer, train
from model.vocab import ItemVocab
from workers.infra.vector_store import VectorStore
from workers.ingest.state_reader import StateReader
from workers.ingest.state_store import StoredClick
from workers.refresh.fast_path import FastPath, _Live
from workers.settings import RefreshSettings, Settings

MIND = MindConfig(dim=8, k_max=2, maxlen=6)
NEW = [10**13 + 1, 10**13 + 2, 10**13 + 3]  # fans of cluster 0, fans of cluster 2, a user with no known item


@pytest.fixture(scope="module")
def live_net() -> MindNet:
    rng = np.random.default_rng(0)
    seqs = [[int(c * 10 + rng.integers(1, 11)) for _ in range(rng.integers(8, 16))] for c in rng.integers(0, 4, 80)]
    data = Sequences.from_lists(list(range(1, 81)), seqs, item_count=41)
    trainer = Trainer(data, MIND, TrainConfig(batch_size=32, negatives=16, lr=0.02, seed=5))
    train(trainer, batches=150, checkpoint_dir=None)
    return trainer.net


class FakeReader:
    def __init__(self, histories: dict[int, list[int]]) -> None:
        self.known = histories

    def history(self, user_id: int, maxlen: int) -> list[int]:
        return self.known.get(user_id, [])[-maxlen:]

    def histories(self, users: list[int], maxlen: int) -> list[list[int]]:
        return [self.history(u, maxlen) for u in users]


def _world() -> tuple[dict[int, list[int]], list[StoredClick]]:
    """Users 1-6 click cluster 0 then NEW[0]; 7-12 cluster 2 then NEW[1]; 13 only NEW[2];
    users 20-59 click inside their own cluster (the background)."""
    rng = np.random.default_rng(1)
    histories: dict[int, list[int]] = {}
    events: list[StoredClick] = []
    for user in range(20, 60):
        cluster = user % 4
        histories[user] = [int(cluster * 10 + rng.integers(1, 11)) for _ in range(6)]
        events += [StoredClick(f"b{user}-{i}", user, item, i, None) for i, item in enumerate(histories[user])]
    for user, cluster, item in [(u, 0, NEW[0]) for u in range(1, 7)] + [(u, 2, NEW[1]) for u in range(7, 13)]:
        histories[user] = [int(cluster * 10 + rng.integers(1, 11)) for _ in range(5)] + [item]
        events.append(StoredClick(f"n{user}", user, item, 100, None))
    histories[13] = [NEW[2]]
    events.append(StoredClick("n13", 13, NEW[2], 100, None))
    return histories, events


def _vectors(tmp_path: Path, net: MindNet, rule: ColdStartRule) -> tuple[list[int], np.ndarray, int, FrozenModel]:
    settings = Settings(state_dir=tmp_path / rule, mind=MIND, refresh=RefreshSettings(cold_start=rule))
    histories, events = _world()
    fast = FastPath(settings, cast(VectorStore, None), cast(StateReader, cast(Any, FakeReader(histories))))
    vocab = ItemVocab.identity(41)
    model = FrozenModel.from_net(net, "v1")
    live = _Live("c_v1", "v1", vocab, model, True)
    known = (vocab.rows([e.item_id for e in events]) > 0).tolist()
    fast.note(events, known, now=1e9)
    assert fast.clicks_unknown == 13 and len(fast.background) == 240
    ids, vectors, waiting = fast._vectors(live, list(fast.pending))
    return ids, vectors, waiting, model


@pytest.mark.parametrize("rule", ["co_click", "steps"])
def test_items_with_context_get_a_vector_the_others_wait(
    tmp_path: Path, live_net: MindNet, rule: ColdStartRule
) -> None:
    ids, vectors, waiting, _ = _vectors(tmp_path, live_net, rule)
    assert ids == NEW[:2] and waiting == 1
    assert vectors.shape == (2, MIND.dim) and vectors.dtype == np.float32 and np.isfinite(vectors).all()


def test_steps_ranks_a_new_item_high_for_its_clickers_and_low_for_the_others(tmp_path: Path, live_net: MindNet) -> None:
    histories, _ = _world()
    _, co, _, model = _vectors(tmp_path, live_net, "co_click")
    _, steps, _, _ = _vectors(tmp_path, live_net, "steps")
    assert not np.allclose(co, steps)
    table = model.table[1:]

    def rank(users: range, vector: np.ndarray) -> float:
        """Mean rank of the vector among the 40 known items for these users (0 = top)."""
        interests = model.tower.interests([[i for i in histories[u] if i < 41] for u in users])
        best = (interests @ vector).max(axis=1)
        return float(np.mean([((table @ it.T).max(axis=1) > b).sum() for it, b in zip(interests, best, strict=True)]))

    fans, others = range(1, 7), range(7, 13)
    assert rank(fans, steps[0]) <= rank(fans, co[0])
    assert rank(fans, steps[0]) < 10 and rank(others, steps[0]) > 20
