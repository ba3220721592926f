"""A version's table and vocabulary travel together: saved, loaded, grown and compacted as one."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from model.checkpoint import VOCAB_FILE, open_checkpoint
from model.config import MindConfig, TrainConfig
from model.data.types import Sequences
from model.export import UserTower, item_table, iter_item_vectors
from model.train import Trainer, train
from model.vocab import MAX_ITEM_ID, ItemVocab

SPARSE = np.array([0, *[(1 << 62) + 3 + 7919 * i for i in range(39)], MAX_ITEM_ID], dtype=np.int64)


def _sparse_vocab() -> ItemVocab:
    return ItemVocab(SPARSE, np.zeros(SPARSE.shape[0]))


def test_vocabulary_round_trip_through_a_checkpoint(
    tmp_path: Path, clustered_seqs: Sequences, tiny_cfg: MindConfig, tiny_train_cfg: TrainConfig
) -> None:
    trainer = Trainer(clustered_seqs, tiny_cfg, tiny_train_cfg, vocab=_sparse_vocab())
    train(trainer, batches=10, checkpoint_dir=tmp_path)
    ckpt = open_checkpoint(tmp_path, "latest")
    assert ckpt.vocab().ids.tolist() == SPARSE.tolist()
    assert ckpt.manifest.item_count == len(SPARSE) == ckpt.load_net().item_count
    # exports and the serving tower speak external ids; the tower of rows and of ids agree
    batches = list(iter_item_vectors(ckpt.load_net(), "v1", vocab=ckpt.vocab()))
    assert np.concatenate([b.ids for b in batches]).tolist() == SPARSE[1:].tolist()
    rows = [clustered_seqs.sequence(i) for i in range(4)]
    by_rows = UserTower(ckpt.load_net(), "v1").interests(rows)
    by_ids = UserTower(ckpt.load_net(), "v1", vocab=ckpt.vocab()).interests([SPARSE[r] for r in rows])
    np.testing.assert_allclose(by_rows, by_ids, atol=1e-6)
    # an id the version does not know is ignored, as an unknown row was
    with_unknown = UserTower(ckpt.load_net(), "v1", vocab=ckpt.vocab()).interests([[*SPARSE[rows[0]], 12345]])
    np.testing.assert_allclose(with_unknown[0], by_ids[0], atol=1e-6)


def test_checkpoint_without_vocabulary_loads_as_identity(
    tmp_path: Path, clustered_seqs: Sequences, tiny_cfg: MindConfig, tiny_train_cfg: TrainConfig
) -> None:
    train(Trainer(clustered_seqs, tiny_cfg, tiny_train_cfg), batches=5, checkpoint_dir=tmp_path)
    (tmp_path / "v1" / VOCAB_FILE).unlink()  # as written before the vocabulary existed
    ckpt = open_checkpoint(tmp_path, "v1")
    assert ckpt.vocab().ids.tolist() == list(range(41))
    resumed = Trainer(clustered_seqs, tiny_cfg, tiny_train_cfg, init=ckpt)
    assert resumed.vocab.ids.tolist() == list(range(41))


def test_growth_keeps_learnt_rows_and_ids(
    tmp_path: Path, clustered_seqs: Sequences, tiny_cfg: MindConfig, tiny_train_cfg: TrainConfig
) -> None:
    trainer = Trainer(clustered_seqs, tiny_cfg, tiny_train_cfg, vocab=_sparse_vocab())
    train(trainer, batches=5, checkpoint_dir=tmp_path)
    v1 = open_checkpoint(tmp_path, "latest")
    grown = v1.vocab().extend([MAX_ITEM_ID, 10**12 + 7, 5])  # one known, two new
    assert len(grown) == len(SPARSE) + 2
    seqs = Sequences(clustered_seqs.user_ids, clustered_seqs.offsets, clustered_seqs.items, len(grown))
    bigger = Trainer(seqs, tiny_cfg, tiny_train_cfg, init=v1, vocab=grown)
    assert bigger.net.item_count == len(grown)
    np.testing.assert_allclose(item_table(bigger.net)[: len(SPARSE)], item_table(v1.load_net()))
    assert bigger.vocab.rows([10**12 + 7, 5]).tolist() == [len(SPARSE), len(SPARSE) + 1]


def test_compaction_keeps_the_rows_it_names(
    tmp_path: Path, clustered_seqs: Sequences, tiny_cfg: MindConfig, tiny_train_cfg: TrainConfig
) -> None:
    train(Trainer(clustered_seqs, tiny_cfg, tiny_train_cfg, vocab=_sparse_vocab()), batches=5, checkpoint_dir=tmp_path)
    v1 = open_checkpoint(tmp_path, "latest")
    keep = np.arange(1, 41, 2, dtype=np.int64)  # every other item stays
    small, mapping = v1.vocab().compact(keep)
    remapped = mapping[clustered_seqs.items]
    users = [u for u in range(clustered_seqs.num_users) if (mapping[clustered_seqs.sequence(u)] > 0).sum() >= 5]
    seqs = Sequences.from_lists(
        [int(clustered_seqs.user_ids[u]) for u in users],
        [[int(r) for r in mapping[clustered_seqs.sequence(u)] if r > 0] for u in users],
        item_count=len(small),
    )
    assert remapped.max() < len(small)
    trainer = Trainer(seqs, tiny_cfg, tiny_train_cfg, init=v1, vocab=small, keep_rows=keep)
    assert trainer.net.item_count == len(small) == keep.shape[0] + 1
    np.testing.assert_allclose(item_table(trainer.net)[1:], item_table(v1.load_net())[keep])
    assert trainer.vocab.external(np.arange(1, len(small))).tolist() == SPARSE[keep].tolist()


def test_a_vocabulary_of_the_wrong_size_is_refused(
    clustered_seqs: Sequences, tiny_cfg: MindConfig, tiny_train_cfg: TrainConfig
) -> None:
    with pytest.raises(ValueError, match="rows"):
        Trainer(clustered_seqs, tiny_cfg, tiny_train_cfg, vocab=ItemVocab.from_ids(range(1, 10)))


def test_registry_copy_carries_the_vocabulary(
    tmp_path: Path, clustered_seqs: Sequences, tiny_cfg: MindConfig, tiny_train_cfg: TrainConfig
) -> None:
    train(Trainer(clustered_seqs, tiny_cfg, tiny_train_cfg, vocab=_sparse_vocab()), batches=5, checkpoint_dir=tmp_path)
    src = open_checkpoint(tmp_path, "latest")
    shutil.copytree(src.path, tmp_path / "copy" / "v1")
    (tmp_path / "copy" / "LATEST").write_text("v1\n")
    assert open_checkpoint(tmp_path / "copy", "latest").vocab().ids.tolist() == SPARSE.tolist()
