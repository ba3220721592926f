"""The embedded Apache Kafka broker under the stack's loads, one measurement after the other:

1. start: a fresh single-node broker (format + JVM start until it serves metadata), RSS when idle;
2. the broker's CPU at ``mindstream up``'s default rates (``stream.rate`` clicks/s, ``stream.recall_rate``
   Kafka requests/s) with the whole stack running (``bench.soak`` for ``--up-minutes``);
3. ingest throughput of one worker through the broker (``bench.ingest_throughput``, 1M events);
4. the Kafka recall latency curve (``bench.recall_latency`` at 50 / 200 / 400 req/s);
5. a soak at the last long soak's rates (1k clicks/s, 50 Kafka + 10 HTTP req/s, 100k items) for
   ``--soak-minutes`` (``bench.soak``).

Each step writes its own result file too (``broker_up_default``, ``ingest_throughput``,
``recall_latency``, ``soak_broker``); ``bench/results/broker.json`` holds the summary. Run it with the
machine to itself: every figure is a latency or a CPU share.

    python -m bench.broker                       # ~50 minutes
    python -m bench.broker --quick               # a smoke run of every step (~5 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from bench import ingest_throughput, recall_latency
from bench.common import RESULTS, emit
from bench.soak import SoakConfig, run_soak
from workers.infra.kafka_broker import KafkaCluster
from workers.settings import KafkaSettings, StreamSettings


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def measure_start(workdir: Path, idle_s: float) -> dict[str, float | None]:
    with KafkaCluster(workdir / "kafka") as cluster:
        pid = cluster.pid(1)
        time.sleep(idle_s)
        rss = psutil.Process(pid).memory_info().rss / 2**20 if pid else None
        return {"start_s": round(cluster.started_in_s or 0.0, 2), "rss_mb": round(rss, 1) if rss else None}


def broker_cpu_at_up_defaults(workdir: Path, minutes: float, items: int) -> dict[str, Any]:
    stream = StreamSettings()
    cfg = SoakConfig(
        duration_s=minutes * 60,
        window_s=min(60.0, minutes * 60),
        click_rate=stream.rate,
        kafka_rate=stream.recall_rate,
        http_rate=stream.http_rate,
        new_items_per_s=stream.new_items_per_s,
        items=items,
        refresh_interval_s=30.0,
        base_batches=50,
    )
    result = run_soak(cfg, workdir)
    windows = result["windows"][1:] or result["windows"]  # the first window holds the stack's warm-up
    cpu = [w["processes"]["broker"]["cpu"] for w in windows]
    summary = {
        "rates": {"clicks_per_s": cfg.click_rate, "kafka_requests_per_s": cfg.kafka_rate},
        "broker_cpu_cores_per_window": cpu,
        "broker_cpu_cores": round(sum(cpu) / len(cpu), 3),
        "processes_last_window": result["windows"][-1]["processes"],
        "kafka_p99_ms_per_window": [w["kafka"]["p99_ms"] for w in result["windows"]],
        "lost_clicks": result["lost_clicks"],
        "failed_replies": result["failed_replies"],
    }
    emit("broker_up_default", summary)
    return summary


def _read(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RESULTS / f"{name}.json").read_text())
    return data


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.broker", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run of every step")
    p.add_argument("--soak-minutes", type=float, default=30.0)
    p.add_argument("--up-minutes", type=float, default=4.0)
    p.add_argument("--events", type=int, default=1_000_000, help="ingest throughput: events through the broker")
    args = p.parse_args(argv)
    if args.quick:
        args.soak_minutes, args.up_minutes, args.events = 2.0, 2.0, 50_000
    load: dict[str, float] = {"before": _load()}
    with tempfile.TemporaryDirectory(prefix="broker-bench-") as tmp:
        work = Path(tmp)
        start = measure_start(work / "start", idle_s=10.0)
        load["after_start"] = _load()
        up = broker_cpu_at_up_defaults(work / "up", args.up_minutes, items=2000)
        load["after_up_default"] = _load()
    assert ingest_throughput.main(["--events", str(args.events), "--partitions", "2"]) == 0
    load["after_ingest"] = _load()
    recall_latency.main(["--rates", "50", "200", "400", "--duration", "10" if args.quick else "20"])
    load["after_recall_latency"] = _load()
    soak_cfg = SoakConfig(
        duration_s=args.soak_minutes * 60,
        window_s=min(300.0, args.soak_minutes * 60 / 3),
        click_rate=1000.0,
        kafka_rate=50.0,
        http_rate=10.0,
        new_items_per_s=1.0,
        items=10_000 if args.quick else 100_000,
    )
    with tempfile.TemporaryDirectory(prefix="broker-soak-") as tmp:
        soak = run_soak(soak_cfg, Path(tmp))
    emit("soak_broker", soak)
    load["after_soak"] = _load()
    ingest, latency = _read("ingest_throughput"), _read("recall_latency")
    at_200 = next(r for r in latency["runs"] if r["offered_rps"] == 200.0)
    summary = {
        "broker": f"apache-kafka {KafkaSettings().embedded_version}",
        "start_s": start["start_s"],
        "broker_rss_mb": start["rss_mb"],
        "broker_cpu_cores_up_default": up["broker_cpu_cores"],
        "ingest_events_per_s": ingest["events_per_s"],
        "kafka_p50_ms_at_200": at_200["latency_ms"]["p50"],
        "kafka_p99_ms_at_200": at_200["latency_ms"]["p99"],
        "soak_minutes": args.soak_minutes,
        "soak_kafka_p99_ms_max_window": max(w["kafka"]["p99_ms"] or 0.0 for w in soak["windows"]),
        "soak_failed_replies": soak["failed_replies"],
        "soak_lost_clicks": soak["lost_clicks"],
    }
    emit("broker_run", {"load_average_1m": load, "summary": summary})  # the conditions beside the figures
    emit("broker", summary, envelope=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
