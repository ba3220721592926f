"""Recall latency over Kafka, measured from the client: embedded broker + embedded Milvus (100k items,
HNSW) + the recall worker as its own process (``python -m workers.recall.worker``) + an open-loop load
generator at a fixed offered rate.

    python -m bench.recall_latency [--rates 200] [--duration 20] [--items 100000] [--top-k 50]
    python -m bench.recall_latency --rates 50 100 200 400      # offered-load sweep

Latency is taken from each request's *scheduled* send time to its reply's arrival, so a generator
or client that falls behind shows up in the numbers (no coordinated omission).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from bench.common import emit, index_and_load, peak_rss_mb
from model.checkpoint import save_checkpoint
from model.config import MindConfig
from model.export import item_table
from model.net import MindNet
from schemas.messages import DEFAULT_TOP_K, ErrorReply, RecallReply, RecallRequest
from workers.infra.milvus_server import EmbeddedMilvus
from workers.infra.ports import free_port
from workers.infra.vector_store import VectorStore
from workers.recall.client import RecallClient
from workers.settings import MilvusSettings, Settings
from workers.stack import Stack, on_free_ports

Outcome = tuple[float, float, RecallReply | ErrorReply | BaseException]


def publish(uri: str, settings: Settings, items: int, cfg: MindConfig) -> dict[str, Any]:
    """An untrained MIND (item table = random vectors) as v1: checkpoint + HNSW collection + alias."""
    alias = settings.milvus.alias
    started = time.perf_counter()
    with VectorStore(uri, settings.milvus) as store:
        if (settings.models_dir / "v1").exists() and store.resolve_alias(alias) == f"{alias}_v1":
            store.load(f"{alias}_v1")
            return {"publish_s": 0.0, "reused_workdir": True}
        paddle.seed(0)
        net = MindNet(cfg, items + 1)
        version = save_checkpoint(
            settings.models_dir, net, None, parent=None, step=0, data_fingerprint="bench", train={}, metrics={}
        ).manifest.version
        name = f"{alias}_{version}"
        store.create_collection(name, cfg.dim)
        store.insert(name, np.arange(1, items + 1, dtype=np.int64), item_table(net)[1:], version)
        store.flush(name)
        index_and_load(store, name)
        assert store.count(name) == items
        store.point_alias(alias, name)
    return {"publish_s": round(time.perf_counter() - started, 1)}


def run_rate(client: RecallClient, rate: float, duration: float, reqs: list[RecallRequest]) -> dict[str, Any]:
    """Open loop: request i is due at ``t0 + i / rate`` whatever happened to the earlier ones."""
    n = max(1, int(rate * duration))
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def done(due: float, future: Future[RecallReply | ErrorReply]) -> None:
        arrived = time.perf_counter()
        result: RecallReply | ErrorReply | BaseException = future.exception() or future.result()
        with lock:
            outcomes.append((due, arrived, result))

    t0 = time.perf_counter() + 0.05
    futures = []
    for i in range(n):
        due = t0 + i / rate
        if (delay := due - time.perf_counter()) > 0:
            time.sleep(delay)
        future = client.request(reqs[i % len(reqs)])
        future.add_done_callback(functools.partial(done, due))
        futures.append(future)
    deadline = time.monotonic() + client.timeout_s + 2
    while len(outcomes) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return summarise(rate, n, t0, outcomes)


def summarise(rate: float, sent: int, t0: float, outcomes: list[Outcome]) -> dict[str, Any]:
    ok = [(due, at, r) for due, at, r in outcomes if isinstance(r, RecallReply)]
    lat = np.array([(at - due) * 1000 for due, at, _ in ok]) if ok else np.array([np.nan])
    took = np.array([r.took_ms for _, _, r in ok]) if ok else np.array([np.nan])
    span = max(at for _, at, _ in outcomes) - t0 if outcomes else float("nan")
    return {
        "offered_rps": rate,
        "sent": sent,
        "ok": len(ok),
        "errors": sum(not isinstance(r, RecallReply) for _, _, r in outcomes) + sent - len(outcomes),
        "empty_replies": sum(any(not items for items in r.items) for _, _, r in ok),
        "achieved_rps": round(len(ok) / span, 1) if ok else 0.0,
        "latency_ms": {q: round(float(np.percentile(lat, p)), 2) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))}
        | {"max": round(float(lat.max()), 2)},
        "worker_took_ms": {
            "p50": round(float(np.percentile(took, 50)), 2),
            "p99": round(float(np.percentile(took, 99)), 2),
        },
        "versions": sorted({r.model_version for _, _, r in ok}),
    }


def latency_parser(doc: str | None, rates: list[float]) -> argparse.ArgumentParser:
    """The options the latency benchmarks share: the offered rates, their timing, the collection, the request."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    p.add_argument("--rates", type=float, nargs="+", default=rates, help="offered requests/s (sweep)")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per rate")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each rate")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--index", default="HNSW", help="index of the published collection (HNSW, IVF_FLAT, FLAT, AUTO)")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    p.add_argument("--users", type=int, default=1, help="users per request")
    return p


def main(argv: list[str] | None = None) -> None:
    p = latency_parser(__doc__, rates=[200.0])
    p.add_argument("--max-wait-ms", type=float, help="micro-batch window (default: settings)")
    p.add_argument("--search-ef", type=int, help="HNSW ef at search time (default: settings)")
    p.add_argument("--workdir", type=Path, help="keep Milvus data here and reuse it (skips the ~70 s publish)")
    args = p.parse_args(argv)
    cfg = MindConfig(dim=64, k_max=4, maxlen=20)
    load_before = round(os.getloadavg()[0], 2)  # other processes on the machine skew the numbers
    rng = np.random.default_rng(2026)
    with contextlib.ExitStack() as stack:
        base = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recall-bench-")))
        defaults = Settings()
        settings = Settings(
            state_dir=base / "state",
            milvus=MilvusSettings(index_type=args.index, search_ef=args.search_ef or defaults.milvus.search_ef),
            recall=defaults.recall.model_copy(update={"max_wait_ms": args.max_wait_ms})
            if args.max_wait_ms is not None
            else defaults.recall,
        )
        with EmbeddedMilvus(base / "milvus", port=free_port()) as milvus:
            settings = on_free_ports(settings.model_copy(update={"log_level": "WARNING"}))
            settings = settings.model_copy(update={"milvus": settings.milvus.model_copy(update={"uri": milvus.uri})})
            setup = publish(milvus.uri, settings, args.items, cfg)
            reqs = [
                RecallRequest(hist_item=rng.integers(1, args.items + 1, (args.users, 20)).tolist(), top_k=args.top_k)
                for _ in range(1000)
            ]
            runs = []
            # the embedded broker, its topics and the recall worker, as `mindstream up` starts them
            with Stack(settings, [], logs_dir=base) as live:
                try:
                    live.start_worker("recall")
                    with RecallClient(live.settings.kafka, settings.recall) as client:
                        client.recall(hist_item=[[1, 2, 3]], timeout=60)  # group joined, a model answering
                        for rate in args.rates:
                            run_rate(client, rate, args.warmup, reqs)
                            runs.append(run_rate(client, rate, args.duration, reqs))
                finally:
                    stopped = live.stop_worker("recall")
    emit(
        "recall_latency",
        {
            "setup": {"items": args.items, "dim": cfg.dim, "k": cfg.k_max, "index": args.index, **setup},
            "request": {"users": args.users, "top_k": args.top_k, "history": 20},
            "worker": {
                "max_batch": settings.recall.max_batch,
                "max_wait_ms": settings.recall.max_wait_ms,
                "search_ef": settings.milvus.search_ef,
                "exit_code_after_sigterm": stopped,
            },
            "load_average_1m": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
            "duration_s": args.duration,
            "runs": runs,
            "bench_peak_rss_mb": peak_rss_mb(),
        },
    )


if __name__ == "__main__":
    main()
