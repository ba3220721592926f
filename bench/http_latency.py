"""Recall latency over HTTP vs offered load: embedded Milvus (100k items, HNSW, as
``bench.recall_latency``) + the FastAPI gateway as its own process (``mindstream gateway``) + an
open-loop asyncio load generator (``bench.http_client``: keep-alive connections, a pool) at each
offered rate. An httpx client measured itself here: it saturated a core at ~90 req/s.

    python -m bench.http_latency [--rates 50 100 200 400] [--duration 20] [--items 100000] [--index HNSW]
    python -m bench.http_latency --rates 50 100 200 300 400 600 800 1000   # up to saturation
    python -m bench.http_latency --items 1000000 --index IVF_FLAT          # the index AUTO picks at 1M
    python -m bench.http_latency --quick

Latency runs from each request's *scheduled* send time to its response (no coordinated omission).
``--workdir`` shares the published collection with ``bench.recall_latency --workdir`` (same layout).
``capacity_rps`` is the highest offered rate that was served in full (no errors, achieved >= 95% of the
offered rate) with p99 under 1 s; ``p99_ms_at_300`` the p99 at 300 req/s offered (when measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import emit, peak_rss_mb
from bench.http_client import HttpPool
from bench.recall_latency import latency_parser, publish
from bench.stack import MemorySampler, load_average, percentiles
from model.config import MindConfig
from workers.infra.milvus_server import EmbeddedMilvus
from workers.infra.ports import free_port
from workers.settings import MilvusSettings, Settings
from workers.stack import Stack, on_free_ports


async def run_rate(url: str, rate: float, duration: float, bodies: list[dict[str, Any]], conns: int) -> dict[str, Any]:
    """Open loop: request i is due at ``t0 + i / rate`` whatever happened to the earlier ones."""
    n = max(1, int(rate * duration))
    lat: list[float] = []
    took: list[float] = []
    errors = 0
    empty = 0
    versions: set[str] = set()
    async with HttpPool(url, conns, timeout_s=10.0) as http:
        raw = [http.encode("/rec/recall", body) for body in bodies]

        async def one(i: int, due: float) -> None:
            nonlocal errors, empty
            try:
                r = await http.send(raw[i % len(raw)])
                arrived = time.perf_counter()
                if r.status != 200:
                    errors += 1
                    return
                body = r.json()
            except Exception:
                errors += 1
                return
            lat.append((arrived - due) * 1000)
            took.append(float(body.get("took_ms", float("nan"))))
            empty += any(not items for items in body["items"])
            versions.add(body["model_version"])

        t0 = time.perf_counter() + 0.05
        tasks = []
        for i in range(n):
            due = t0 + i / rate
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
        span = time.perf_counter() - t0
    p = percentiles(lat)
    return {
        "offered_rps": rate,
        "sent": n,
        "ok": len(lat),
        "errors": errors,
        "empty_replies": empty,
        "achieved_rps": round(len(lat) / span, 1) if span > 0 else 0.0,
        "latency_ms": {"p50": p["p50"], "p95": round(float(np.percentile(lat, 95)), 2) if lat else None}
        | {"p99": p["p99"], "max": p["max"]},
        "server_took_ms": {k: v for k, v in percentiles(took).items() if k in ("p50", "p99")},
        "versions": sorted(versions),
    }


CAPACITY_P99_MS = 1000.0


def capacity_rps(runs: list[dict[str, Any]]) -> float | None:
    """The highest offered rate served in full (no errors, >= 95% achieved) with p99 < 1 s."""
    served = [
        r["offered_rps"]
        for r in runs
        if not r["errors"]
        and r["achieved_rps"] >= 0.95 * r["offered_rps"]
        and r["latency_ms"]["p99"] is not None
        and r["latency_ms"]["p99"] < CAPACITY_P99_MS
    ]
    return max(served, default=None)


def p99_at(runs: list[dict[str, Any]], rate: float) -> float | None:
    return next((r["latency_ms"]["p99"] for r in runs if r["offered_rps"] == rate), None)


def main() -> None:
    p = latency_parser(__doc__, rates=[50.0, 100.0, 200.0, 400.0])
    p.add_argument("--connections", type=int, default=64, help="HTTP connection pool of the load generator")
    p.add_argument("--workdir", type=Path, help="keep Milvus data here and reuse it (as recall_latency)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: 2k items, rates 20 40, 3 s each")
    args = p.parse_args()
    if args.quick:
        args.rates, args.duration, args.warmup, args.items = [20.0, 40.0], 3.0, 1.0, 2000
    cfg = MindConfig(dim=64, k_max=4, maxlen=20)
    load_before = load_average()
    rng = np.random.default_rng(2026)
    bodies = [
        {"hist_item": rng.integers(1, args.items + 1, (args.users, 20)).tolist(), "top_k": args.top_k}
        for _ in range(1000)
    ]
    runs = []
    with contextlib.ExitStack() as stack:
        base = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="http-bench-")))
        milvus = stack.enter_context(EmbeddedMilvus(base / "milvus", port=free_port()))
        settings = on_free_ports(Settings(state_dir=base / "state", log_level="WARNING"))
        settings = settings.model_copy(update={"milvus": MilvusSettings(index_type=args.index, uri=milvus.uri)})
        setup = publish(milvus.uri, settings, args.items, cfg)
        # the gateway alone on this Milvus, as `mindstream up` starts it (no broker: it needs none)
        live = stack.enter_context(Stack(settings, [], logs_dir=base, needs_kafka=False))
        memory: MemorySampler | None = None
        try:
            live.start_worker("gateway", wait_ready=False)
            live.wait_ready(timeout_s=120)
            url = live.http_url
            memory = MemorySampler({"gateway": live.pids["gateway"], "milvus": milvus.pid or 0}).start()
            for rate in args.rates:
                asyncio.run(run_rate(url, rate, args.warmup, bodies, args.connections))
                runs.append(asyncio.run(run_rate(url, rate, args.duration, bodies, args.connections)))
        finally:
            mem = memory.stop() if memory else {}
            stopped = live.stop_worker("gateway")
    emit(
        "http_latency",
        {
            "quick": args.quick,
            "setup": {"items": args.items, "dim": cfg.dim, "k": cfg.k_max, "index": args.index, **setup},
            "request": {"users": args.users, "top_k": args.top_k, "history": 20},
            "client": {"connections": args.connections, "kind": "bench.http_client (asyncio keep-alive), open loop"},
            "gateway": {"search_ef": settings.milvus.search_ef, "exit_code_after_sigterm": stopped},
            "load_average_1m": {"before": load_before, "after": load_average()},
            "duration_s": args.duration,
            "runs": runs,
            "p99_ms_at_300": p99_at(runs, 300.0),
            "capacity_rps": capacity_rps(runs),
            "memory": mem,
            "bench_peak_rss_mb": peak_rss_mb(),
        },
    )


if __name__ == "__main__":
    main()
