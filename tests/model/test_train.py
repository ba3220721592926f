from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.checkpoint import open_checkpoint
from model.config import MindConfig, TrainConfig
from model.data.types import HeldOut, Sequences
from model.evaluate import evaluate_model, recommend
from model.export import UserTower, item_table, iter_item_vectors
from model.search import ExactSearcher
from model.train import Trainer, grow_item_table, train


def _heldout(seqs: Sequences) -> HeldOut:
    hist = [seqs.sequence(i)[:-3] for i in range(seqs.num_users)]
    truth = [seqs.sequence(i)[-3:] for i in range(seqs.num_users)]
    return HeldOut(seqs.user_ids, hist, truth)


@pytest.mark.parametrize("readout", ["soft", "hard"])
def test_loss_falls_on_a_tiny_set(
    clustered_seqs: Sequences, tiny_cfg: MindConfig, tiny_train_cfg: TrainConfig, readout: str
) -> None:
    trainer = Trainer(clustered_seqs, tiny_cfg.model_copy(update={"readout": readout}), tiny_train_cfg)
    first = np.mean([trainer.train_step() for _ in range(5)])
    for _ in range(160):  # the hard readout trains one interest per example: ~0.81 of the start after 80
        trainer.train_step()
    last = np.mean([trainer.train_step() for _ in range(5)])
    assert last < first * 0.8


def test_training_is_reproducible(clustered_seqs: Sequences, tiny_cfg: MindConfig, tiny_train_cfg: TrainConfig) -> None:
    losses = []
    for _ in range(2):
        trainer = Trainer(clustered_seqs, tiny_cfg, tiny_train_cfg)
        losses.append([trainer.train_step() for _ in range(5)])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_checkpoint_round_trip_gives_identical_interests(
    tmp_path: Path, clustered_seqs: Sequences, tiny_cfg: MindConfig, tiny_train_cfg: TrainConfig
) -> None:
    trainer = Trainer(clustered_seqs, tiny_cfg, tiny_train_cfg)
    result = train(trainer, batches=60, checkpoint_dir=tmp_path, valid=_heldout(clustered_seqs), top_n=10)
    assert result.best is not None and result.latest is not None
    assert [p.name for p in sorted(tmp_path.glob("v*"))] == ["v1", "v2"]
    latest = open_checkpoint(tmp_path, "latest")
    assert latest.manifest.version == "v2" and latest.manifest.parent == "v1"
    assert latest.manifest.step == 60
    assert latest.manifest.item_count == 41
    assert latest.manifest.data_fingerprint == clustered_seqs.fingerprint()
    assert "valid" in latest.manifest.metrics
    histories = [clustered_seqs.sequence(i) for i in range(5)]
    before = UserTower(trainer.net, "x").interests(histories)
    after = UserTower(latest.load_net(), "x").interests(histories)
    np.testing.assert_allclose(before, after, atol=1e-6)


def test_resume_continues_step_count(
    tmp_path: Path, clustered_seqs: Sequences, tiny_cfg: MindConfig, tiny_train_cfg: TrainConfig
) -> None:
    train(Trainer(clustered_seqs, tiny_cfg, tiny_train_cfg), batches=30, checkpoint_dir=tmp_path)
    resumed = Trainer(clustered_seqs, tiny_cfg, tiny_train_cfg, init=open_checkpoint(tmp_path, "latest"))
    assert resumed.step == 30
    train(resumed, batches=30, checkpoint_dir=tmp_path)
    assert open_checkpoint(tmp_path, "latest").manifest.step == 60


def test_trained_model_beats_chance_on_clusters(
    clustered_seqs: Sequences, tiny_cfg: MindConfig, tiny_train_cfg: TrainConfig
) -> None:
    trainer = Trainer(clustered_seqs, tiny_cfg, tiny_train_cfg)
    train(trainer, batches=150, checkpoint_dir=None)
    report = trainer.validate(_heldout(clustered_seqs), top_n=10)
    assert report.metrics.recall > 0.25 + 0.1  # chance: 10 of 40 items = 0.25


def test_item_table_grows_and_keeps_learnt_rows(tiny_cfg: MindConfig) -> None:
    from model.net import MindNet

    net = MindNet(tiny_cfg, 20, seed=1)
    bigger = grow_item_table(net, 30)
    assert bigger.item_count == 30
    np.testing.assert_allclose(item_table(bigger)[:20], item_table(net))
    assert np.abs(item_table(bigger)[20:]).sum() > 0


def test_user_tower_ignores_unknown_ids_and_empty_history(tiny_cfg: MindConfig) -> None:
    from model.net import MindNet

    tower = UserTower(MindNet(tiny_cfg, 20, seed=1), "v1")
    out = tower.interests([[1, 2, 3], [1, 2, 3, 999, -4], []])
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    assert (out[2] == 0).all()


def test_export_batches_cover_every_item(tiny_cfg: MindConfig) -> None:
    from model.net import MindNet

    net = MindNet(tiny_cfg, 25, seed=1)
    batches = list(iter_item_vectors(net, "v7", batch_size=10))
    assert [len(b.ids) for b in batches] == [10, 10, 4]
    assert np.concatenate([b.ids for b in batches]).tolist() == list(range(1, 25))
    assert all(b.model_version == "v7" for b in batches)
    np.testing.assert_allclose(batches[0].vectors, item_table(net)[1:11])


def test_exact_searcher_matches_brute_force_and_skips_padding() -> None:
    rng = np.random.default_rng(0)
    table = rng.normal(size=(30, 4)).astype(np.float32)
    queries = rng.normal(size=(7, 4)).astype(np.float32)
    ids, scores = ExactSearcher(table, chunk=3).search(queries, 5)
    full = queries @ table.T
    full[:, 0] = -np.inf
    expected = np.argsort(-full, axis=1)[:, :5]
    assert (ids == expected).all()
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), rtol=1e-5)


def test_recommend_and_evaluate_agree(clustered_seqs: Sequences, tiny_cfg: MindConfig) -> None:
    from model.net import MindNet

    net = MindNet(tiny_cfg, 41, seed=1)
    held = _heldout(clustered_seqs)
    tower = UserTower(net, "v1")
    searcher = ExactSearcher(item_table(net))
    recs = recommend(tower, searcher, held.histories, 10)
    assert all(len(r) == 10 and 0 not in r and len(set(r.tolist())) == 10 for r in recs)
    report = evaluate_model(tower, searcher, held, top_n=10)
    assert report.metrics.users == clustered_seqs.num_users
    # the metrics of exactly these lists, computed here from the README's definitions
    recall, ndcg, hits = [], [], []
    for rec, truth in zip(recs, held.truths, strict=True):
        wanted = set(np.asarray(truth).tolist())
        ranks = [rank for rank, item in enumerate(rec.tolist()) if item in wanted]
        recall.append(len(ranks) / len(wanted))
        hits.append(bool(ranks))
        ideal = sum(1 / np.log2(r + 2) for r in range(len(ranks)))
        ndcg.append(sum(1 / np.log2(r + 2) for r in ranks) / ideal if ranks else 0.0)
    assert any(hits), "no hit at all: the comparison would not look at ranks"
    assert report.metrics.recall == pytest.approx(np.mean(recall))
    assert report.metrics.hitrate == pytest.approx(np.mean(hits))
    assert report.metrics.ndcg == pytest.approx(np.mean(ndcg))
