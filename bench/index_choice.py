"""Index choice: build + load time, search latency and recall@k against exact search, per index.

    python -m bench.index_choice                       # 100k items: HNSW 16/200, HNSW 8/64, IVF_FLAT, FLAT
    python -m bench.index_choice --items 1000000 --indexes IVF_FLAT HNSW:8:64
    python -m bench.index_choice --quick

Vectors are clustered like item embeddings (Gaussian blobs around ``--clusters`` centres, unit
norm); queries are drawn the same way. The truth is exact inner-product top-k in numpy. Each index
gets its own collection in one embedded Milvus; insert time is reported apart from build + load,
which is what a refresh round pays on top of the insert. Result: ``bench/results/index_choice[_<tag>].json``.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import emit, index_and_load, peak_rss_mb
from bench.stack import percentiles
from workers.infra.milvus_server import EmbeddedMilvus
from workers.infra.ports import free_port
from workers.infra.vector_store import VectorStore
from workers.settings import MilvusSettings


def clustered(n: int, dim: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top_k(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row ids (1-based, as stored) of the exact inner-product top-k, in chunks of queries."""
    out = []
    for lo in range(0, len(queries), 64):
        scores = queries[lo : lo + 64] @ items.T
        out.append(np.argpartition(-scores, k, axis=1)[:, :k] + 1)
    return np.concatenate(out)


def parse_index(spec: str) -> MilvusSettings:
    """``HNSW[:M:efConstruction]``, ``IVF_FLAT`` or ``FLAT``."""
    kind, *params = spec.split(":")
    if kind == "HNSW":
        m, ef = (int(params[0]), int(params[1])) if params else (16, 200)
        return MilvusSettings(index_type="HNSW", hnsw_m=m, hnsw_ef_construction=ef)
    if kind in ("IVF_FLAT", "FLAT") and not params:
        return MilvusSettings.model_validate({"index_type": kind})
    raise ValueError(f"unknown index spec {spec!r}")


def measure(uri: str, spec: str, items: np.ndarray, queries: np.ndarray, truth: np.ndarray, k: int) -> dict[str, Any]:
    settings = parse_index(spec)
    name = "index_" + spec.replace(":", "_").lower()
    with VectorStore(uri, settings) as store:
        if store.has_collection(name):
            store.drop_collection(name)
        store.create_collection(name, items.shape[1])
        t0 = time.perf_counter()
        store.insert(name, np.arange(1, len(items) + 1, dtype=np.int64), items, "v1")
        store.flush(name)
        t1 = time.perf_counter()
        index_and_load(store, name)
        t2 = time.perf_counter()
        latencies, hits = [], 0
        for lo in range(0, len(queries), 4):  # 4 queries per search: one user's K=4 interests
            began = time.perf_counter()
            got = store.search(name, queries[lo : lo + 4], k, with_versions=False).ids
            latencies.append((time.perf_counter() - began) * 1000)
            hits += sum(len(set(g.tolist()) & set(t.tolist())) for g, t in zip(got, truth[lo : lo + 4], strict=True))
        store.drop_collection(name)
    return {
        "index": spec,
        "insert_s": round(t1 - t0, 1),
        "build_and_load_s": round(t2 - t1, 1),
        f"recall@{k}_vs_exact": round(hits / truth.size, 4),
        "search_4_queries_ms": percentiles(latencies),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--queries", type=int, default=400)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--indexes", nargs="+", default=["HNSW:16:200", "HNSW:8:64", "IVF_FLAT", "FLAT"])
    p.add_argument("--tag", help="write index_choice_<tag>.json")
    p.add_argument("--quick", action="store_true", help="smoke run: 5k items, 40 queries")
    args = p.parse_args()
    if args.quick:
        args.items, args.queries = min(args.items, 5000), 40
    rng = np.random.default_rng(2026)
    items = clustered(args.items, args.dim, args.clusters, rng)
    queries = clustered(args.queries, args.dim, args.clusters, rng)
    truth = exact_top_k(items, queries, args.top_k)
    runs = []
    with contextlib.ExitStack() as es:
        tmp = Path(es.enter_context(tempfile.TemporaryDirectory(prefix="index-choice-")))
        milvus = es.enter_context(EmbeddedMilvus(tmp / "milvus", port=free_port()))
        for spec in args.indexes:
            runs.append(measure(milvus.uri, spec, items, queries, truth, args.top_k))
    emit(
        f"index_choice_{args.tag}" if args.tag else "index_choice",
        {
            "quick": args.quick,
            "setup": {"items": args.items, "dim": args.dim, "clusters": args.clusters, "queries": args.queries,
                      "top_k": args.top_k, "metric": "IP"},
            "runs": runs,
            "bench_peak_rss_mb": peak_rss_mb(),
        },
    )  # fmt: skip


if __name__ == "__main__":
    main()
