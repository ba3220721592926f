"""The two evaluation backends must agree on the same checkpoint (real embedded Milvus)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.checkpoint import open_checkpoint
from model.config import MindConfig, TrainConfig
from model.data.types import HeldOut, Sequences
from model.evaluate import recommend
from model.export import UserTower, external_heldout, item_table
from model.search import ExactSearcher
from model.train import Trainer, train
from workers.infra.vector_store import MilvusSearcher, VectorStore
from workers.offline import agreement, eval_collection_name, evaluate_checkpoint, load_into_milvus
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

    # Stronger than equal means: every user's list is the same, item for item and in order.
    net, vocab = ckpt.load_net(), ckpt.vocab()
    rows = recommend(UserTower(net, "x"), ExactSearcher(item_table(net)), held.histories, 10)
    collection = eval_collection_name(settings, "tiny_lists", ckpt.manifest.version)
    with VectorStore(milvus_uri, settings.milvus) as store:
        load_into_milvus(store, ckpt, collection)
        try:
            external = external_heldout(held, vocab)
            tower = UserTower(net, "x", vocab=vocab)
            lists = recommend(tower, MilvusSearcher(store, collection), external.histories, 10)
        finally:
            store.drop_collection(collection)
    assert len(lists) == len(rows) == clustered_seqs.num_users
    for user, (exact_rows, got) in enumerate(zip(rows, lists, strict=True)):
        assert vocab.external(exact_rows).tolist() == got.tolist(), f"user {user}"
