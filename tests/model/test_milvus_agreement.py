"""The two evaluation backends must agree on the same checkpoint (real embedded Milvus)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.checkpoint import open_checkpoint
from model.config import MindConfig, TrainConfig
from model.data.types import HeldOut, Sequences
from model.train import Trainer, train
from workers.offline import agreement, evaluate_checkpoint
from workers.settings import MilvusSettings, Settings


@pytest.mark.integration
def test_exact_and_milvus_backends_agree(
    tmp_path: Path,
    milvus_uri: str,
    clustered_seqs: Sequences,
    tiny_cfg: MindConfig,
    tiny_train_cfg: TrainConfig,
) -> None:
    train(Trainer(clustered_seqs, tiny_cfg, tiny_train_cfg), batches=40, checkpoint_dir=tmp_path)
    ckpt = open_checkpoint(tmp_path, "latest")
    held = HeldOut(
        clustered_seqs.user_ids,
        [clustered_seqs.sequence(i)[:-3] for i in range(clustered_seqs.num_users)],
        [clustered_seqs.sequence(i)[-3:] for i in range(clustered_seqs.num_users)],
    )
    # FLAT makes Milvus exact too, so any difference would be a bug, not approximation.
    settings = Settings(milvus=MilvusSettings(index_type="FLAT", alias="agree"), eval={"top_n": 10})
    exact, milvus = evaluate_checkpoint(
        settings, ckpt, held, backends=["exact", "milvus"], milvus_uri=milvus_uri, dataset="tiny"
    )
    assert exact.backend == "exact" and milvus.backend == "milvus"
    assert exact.metrics.users == milvus.metrics.users == clustered_seqs.num_users
    diff = agreement(exact, milvus)
    assert diff["recall"] < 1e-6 and diff["hitrate"] < 1e-6 and diff["ndcg"] < 1e-4
