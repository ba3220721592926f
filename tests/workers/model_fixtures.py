"""Tiny served models for integration tests: a checkpoint ``v<N>`` and its live collection ``<alias>_v<N>``.

Same approach as ``test_recall.py``: an untrained MIND, FLAT index built before the insert and no
flush (~3 s to publish instead of ~7 s), exact count (Strong) before pointing the alias.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle

from model.checkpoint import Checkpoint, save_checkpoint
from model.config import MindConfig
from model.export import UserTower, item_table
from model.metrics import merge_interests
from model.net import MindNet
from workers.infra.vector_store import VectorStore

__all__ = ["TINY", "exact_recall", "exact_recall_of", "publish_tiny", "save_tiny"]

TINY = MindConfig(dim=8, k_max=2, maxlen=5)


def save_tiny(root: Path, item_count: int, seed: int) -> tuple[Checkpoint, MindNet]:
    """Checkpoint an untrained tiny MIND as the next version under ``root``."""
    paddle.seed(seed)
    net = MindNet(TINY, item_count, seed=seed)
    ckpt = save_checkpoint(root, net, None, parent=None, step=0, data_fingerprint="test", train={}, metrics={})
    return ckpt, net


def publish_tiny(store: VectorStore, root: Path, alias: str, item_count: int, seed: int) -> tuple[str, MindNet]:
    """:func:`save_tiny`, then fill ``<alias>_v<N>`` and point ``alias`` at it; returns the version."""
    ckpt, net = save_tiny(root, item_count, seed)
    version = ckpt.manifest.version
    name = f"{alias}_{version}"
    table = item_table(net)
    store.create_collection(name, TINY.dim)
    store.build_index(name)
    store.insert(name, np.arange(1, item_count, dtype=np.int64), table[1:], model_version=version)
    store.load(name)
    assert store.count(name) == item_count - 1
    store.point_alias(alias, name)
    return version, net


def exact_recall(net: MindNet, histories: list[list[int]], top_k: int) -> list[list[int]]:
    """Brute-force numpy search of every interest + the reference merge (what Milvus FLAT must return)."""
    interests = UserTower(net, "x").interests(histories)
    table = item_table(net)[1:]
    scores = interests @ table.T
    order = np.argsort(-scores, axis=2, kind="stable")[:, :, :top_k]
    return [m.tolist() for m in merge_interests(order + 1, np.take_along_axis(scores, order, axis=2), top_k)]


def exact_recall_of(ckpt: Checkpoint, histories: list[list[int]], top_k: int) -> list[list[int]]:
    """:func:`exact_recall` of a saved version through its item vocabulary: external ids in and out,
    every item of the version (no TTL), i.e. what a reply naming that version must hold."""
    vocab = ckpt.vocab()
    net = ckpt.load_net()
    interests = UserTower(net, ckpt.manifest.version, vocab=vocab).interests(histories)
    rows = vocab.active_rows(now=0.0, ttl_s=None)
    scores = interests @ item_table(net)[rows].T
    order = np.argsort(-scores, axis=2, kind="stable")[:, :, :top_k]
    ids = vocab.external(rows)[order]
    return [m.tolist() for m in merge_interests(ids, np.take_along_axis(scores, order, axis=2), top_k)]
