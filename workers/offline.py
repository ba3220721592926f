"""Offline jobs behind the CLI: train, evaluate (exact and Milvus backends, baselines), export."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from model.checkpoint import Checkpoint, open_checkpoint
from model.config import MindConfig
from model.data.types import Dataset, HeldOut
from model.evaluate import EvalReport, evaluate_model, evaluate_most_popular
from model.export import UserTower, external_heldout, item_table, iter_item_vectors
from model.progress import Progress
from model.search import ExactSearcher
from model.train import Trainer, configure_threads, train
from workers.infra.vector_store import MilvusSearcher, VectorStore
from workers.settings import Settings

log = logging.getLogger(__name__)


def checkpoint_root(settings: Settings, dataset: str) -> Path:
    """One checkpoint directory per data set, and per interest count when it is not the default."""
    default_k = MindConfig.model_fields["k_max"].default
    suffix = "" if settings.mind.k_max == default_k else f"-k{settings.mind.k_max}"
    return settings.checkpoint_dir / f"{dataset}{suffix}"


def reusable_checkpoint(settings: Settings, dataset: str) -> dict[str, Any] | None:
    """The summary of the best checkpoint of ``dataset`` already on disk, or None if there is none."""
    root = checkpoint_root(settings, dataset)
    if not (root / "BEST").exists():
        return None
    return {"dataset": dataset, "reused": open_checkpoint(root, "best").manifest.version, "checkpoints": str(root)}


def run_train(settings: Settings, *, dataset: Dataset, resume: bool, quiet: bool = False) -> dict[str, Any]:
    """Train (or continue training) MIND on ``dataset``; checkpoints under the state directory."""
    threads = configure_threads(settings.train.threads)
    root = checkpoint_root(settings, dataset.name)
    init: Checkpoint | None = None
    if resume and (root / "LATEST").exists():
        init = open_checkpoint(root, "latest")
        log.info("resuming from %s (step %d)", init.manifest.version, init.manifest.step)
    trainer = Trainer(
        dataset.train, settings.mind, settings.train, item_count=dataset.item_count, init=init, vocab=dataset.vocab
    )
    result = train(
        trainer,
        batches=settings.train.batches,
        checkpoint_dir=root,
        valid=dataset.valid,
        top_n=settings.eval.top_n,
        progress=None if quiet else Progress(settings.train.batches),
    )
    return {
        "dataset": dataset.name,
        "batches": result.batches,
        "batch_size": settings.train.batch_size,
        "threads": threads,
        "samples_per_s": round(result.samples_per_s, 1),
        "train_seconds": round(result.train_seconds, 2),
        "wall_seconds": round(result.wall_seconds, 2),
        "final_loss": round(result.final_loss, 5),
        "best": result.best.manifest.version if result.best else None,
        "best_valid": result.best.manifest.metrics.get("valid") if result.best else None,
        "checkpoints": str(root),
    }


def eval_collection_name(settings: Settings, dataset: str, version: str) -> str:
    raw = f"{settings.milvus.alias}_eval_{dataset}_{version}"
    return re.sub(r"[^A-Za-z0-9_]", "_", raw)


def load_into_milvus(store: VectorStore, ckpt: Checkpoint, collection: str) -> float:
    """Build a collection holding the checkpoint's item vectors: insert, flush, index, load."""
    began = time.perf_counter()
    if store.has_collection(collection):
        store.drop_collection(collection)
    store.create_collection(collection, ckpt.manifest.mind["dim"])
    net = ckpt.load_net()
    vocab = ckpt.vocab()
    for batch in iter_item_vectors(net, ckpt.manifest.version, batch_size=store.settings.insert_batch, vocab=vocab):
        store.insert(collection, batch.ids, batch.vectors, batch.model_version)
    store.flush(collection)
    store.build_index(collection, rows=ckpt.manifest.item_count - 1)
    store.load(collection)
    return time.perf_counter() - began


def evaluate_checkpoint(
    settings: Settings,
    ckpt: Checkpoint,
    heldout: HeldOut,
    *,
    backends: list[str],
    milvus_uri: str | None,
    dataset: str,
) -> list[EvalReport]:
    net = ckpt.load_net()
    tower = UserTower(net, ckpt.manifest.version)
    top_n = settings.eval.top_n
    name = f"mind-k{net.cfg.k_max}"
    reports: list[EvalReport] = []
    if "exact" in backends:
        searcher = ExactSearcher(item_table(net), chunk=settings.eval.chunk_users)
        reports.append(evaluate_model(tower, searcher, heldout, top_n=top_n, name=name, backend="exact"))
    if "milvus" in backends:
        if milvus_uri is None:
            raise ValueError("the milvus backend needs a Milvus URI")
        collection = eval_collection_name(settings, dataset, ckpt.manifest.version)
        with VectorStore(milvus_uri, settings.milvus) as store:
            load_into_milvus(store, ckpt, collection)
            try:
                # Milvus speaks external ids: the same users, their histories and truths as catalogue ids.
                vocab = ckpt.vocab()
                ext_tower = UserTower(net, ckpt.manifest.version, vocab=vocab)
                searcher_m = MilvusSearcher(store, collection)
                ext_heldout = external_heldout(heldout, vocab)
                reports.append(
                    evaluate_model(ext_tower, searcher_m, ext_heldout, top_n=top_n, name=name, backend="milvus")
                )
            finally:
                store.drop_collection(collection)
    return reports


def agreement(a: EvalReport, b: EvalReport) -> dict[str, float]:
    """Absolute metric differences between two backends on the same checkpoint."""
    return {
        "recall": abs(a.metrics.recall - b.metrics.recall),
        "ndcg": abs(a.metrics.ndcg - b.metrics.ndcg),
        "hitrate": abs(a.metrics.hitrate - b.metrics.hitrate),
    }


def run_evaluate(
    settings: Settings,
    *,
    dataset: Dataset,
    which: str,
    split: str,
    backends: list[str],
    milvus_uri: str | None,
) -> dict[str, Any]:
    ckpt = open_checkpoint(checkpoint_root(settings, dataset.name), which)
    heldout = dataset.test if split == "test" else dataset.valid
    reports = evaluate_checkpoint(
        settings, ckpt, heldout, backends=backends, milvus_uri=milvus_uri, dataset=dataset.name
    )
    reports.append(evaluate_most_popular(dataset.train.popularity(), heldout, top_n=settings.eval.top_n))
    out: dict[str, Any] = {
        "dataset": dataset.name,
        "split": split,
        "model_version": ckpt.manifest.version,
        "step": ckpt.manifest.step,
        "results": [r.as_dict() for r in reports],
    }
    by_backend = {r.backend: r for r in reports if r.name.startswith("mind")}
    if {"exact", "milvus"} <= by_backend.keys():
        out["exact_vs_milvus_abs_diff"] = agreement(by_backend["exact"], by_backend["milvus"])
    return out


def run_export(settings: Settings, *, dataset_name: str, which: str, out: Path) -> dict[str, Any]:
    """Write the checkpoint's item vectors to an ``.npz`` file (ids, vectors, model_version)."""
    ckpt = open_checkpoint(checkpoint_root(settings, dataset_name), which)
    net = ckpt.load_net()
    batches = list(iter_item_vectors(net, ckpt.manifest.version, vocab=ckpt.vocab()))
    ids = np.concatenate([b.ids for b in batches])
    vectors = np.concatenate([b.vectors for b in batches])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, ids=ids, vectors=vectors, model_version=np.array(ckpt.manifest.version))
    return {
        "model_version": ckpt.manifest.version,
        "items": int(ids.shape[0]),
        "dim": int(vectors.shape[1]),
        "out": str(out),
    }


def load(settings: Settings, name: str | None = None) -> Dataset:
    return settings.data.load(name)
