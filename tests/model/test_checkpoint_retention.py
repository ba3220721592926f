"""Checkpoint retention: old versions go, the newest ``keep``, LATEST, BEST and protected ones stay."""

from __future__ import annotations

from pathlib import Path

from model.checkpoint import list_versions, next_version, open_checkpoint, prune_versions
from model.config import MindConfig, TrainConfig
from model.data.types import HeldOut, Sequences
from model.train import Trainer, train


def _versions(root: Path, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for k in range(1, n + 1):
        (root / f"v{k}").mkdir()
        (root / f"v{k}" / "manifest.json").write_text("{}")


def test_prune_keeps_the_newest_the_pointers_and_the_protected(tmp_path: Path) -> None:
    _versions(tmp_path, 8)
    (tmp_path / "LATEST").write_text("v8\n")
    (tmp_path / "BEST").write_text("v2\n")
    (tmp_path / ".v1.deleting").mkdir()  # left by a crash in the middle of a deletion
    assert prune_versions(tmp_path, keep=2, protect={"v5"}) == ["v1", "v3", "v4", "v6"]
    assert list_versions(tmp_path) == ["v2", "v5", "v7", "v8"]
    assert not list(tmp_path.glob(".*deleting"))
    assert next_version(tmp_path) == "v9", "version numbers never repeat"
    assert prune_versions(tmp_path, keep=2, protect={"v5"}) == []


def test_training_keeps_the_best_and_the_newest_checkpoints(
    tmp_path: Path, clustered_seqs: Sequences, tiny_cfg: MindConfig, tiny_train_cfg: TrainConfig
) -> None:
    cfg = tiny_train_cfg.model_copy(update={"eval_every": 10, "keep_checkpoints": 2})
    valid = HeldOut(
        clustered_seqs.user_ids,
        [clustered_seqs.sequence(i)[:-1] for i in range(clustered_seqs.num_users)],
        [clustered_seqs.sequence(i)[-1:] for i in range(clustered_seqs.num_users)],
    )
    result = train(Trainer(clustered_seqs, tiny_cfg, cfg), batches=60, checkpoint_dir=tmp_path, valid=valid, top_n=10)
    assert result.best is not None and result.latest is not None
    best = open_checkpoint(tmp_path, "best").manifest.version
    assert best == result.best.manifest.version
    kept = list_versions(tmp_path)
    assert set(kept) == {best, "v5", "v6"} and len(kept) in (2, 3), kept
    assert open_checkpoint(tmp_path, "latest").manifest.version == "v6"
    assert open_checkpoint(tmp_path, "best").load_net() is not None
