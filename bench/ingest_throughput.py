"""Ingest throughput of one worker process on the embedded broker; prints a JSON summary.

``python bench/ingest_throughput.py --events 200000``: pre-produces the events, then times the
worker from its first non-empty batch until every event is durably applied (group join excluded).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit
from workers.infra.tansu import EmbeddedBroker, free_port
from workers.ingest import IngestWorker
from workers.kafka_admin import ensure_topics, make_producer
from workers.metrics import IngestMetrics
from workers.state_reader import StateReader


def _produce(conf: dict[str, str | int], topic: str, events: int, users: int) -> float:
    producer = make_producer(conf)
    started = time.perf_counter()
    for n in range(events):
        user = n % users + 1
        body = {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": (n * 7919) % 300_000 + 1, "ts": n}
        while True:
            try:
                producer.produce(topic, key=str(user).encode(), value=json.dumps(body).encode())
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0
    return events / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--batch-timeout-s", type=float, default=0.5)
    parser.add_argument("--timeout-s", type=float, default=120.0, help="give up consuming after this long")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20,000 events")
    args = parser.parse_args()
    if args.quick:
        args.events = min(args.events, 20_000)
    logging.basicConfig(level=logging.WARNING)
    topic = f"bench-clicks-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker("127.0.0.1", free_port()) as broker:
        conf: dict[str, str | int] = {"bootstrap.servers": broker.bootstrap}
        ensure_topics(conf, [topic, f"{topic}.dlq"], partitions=args.partitions)
        produce_rate = _produce(conf, topic, args.events, args.users)
        worker = IngestWorker(
            conf,
            topic=topic,
            dlq_topic=f"{topic}.dlq",
            group_id=f"{topic}-ingest",
            session_timeout_ms=6000,
            state_dir=Path(tmp),
            batch_size=args.batch_size,
            batch_timeout_s=args.batch_timeout_s,
            dlq_flush_timeout_s=10.0,
            stats_interval_ms=0,
            metrics=IngestMetrics(CollectorRegistry()),
        )
        applied, batches, started = 0, 0, 0.0
        deadline = time.monotonic() + args.timeout_s
        try:
            while applied < args.events and time.monotonic() < deadline:
                outcome = worker.run_once()
                if outcome.consumed and not started:
                    started = time.perf_counter()
                    batches = 0
                applied += outcome.applied
                batches += 1
            elapsed = time.perf_counter() - started
        finally:
            worker.close()
        with StateReader(Path(tmp), topic) as reader:
            stored = reader.event_count()
    summary = {
        "events": args.events,
        "applied": applied,
        "stored": stored,
        "partitions": args.partitions,
        "batch_size": args.batch_size,
        "batches": batches,
        "seconds": round(elapsed, 3),
        "events_per_s": round(applied / elapsed) if elapsed else None,
        "produce_events_per_s": round(produce_rate),
    }
    emit("ingest_throughput", {"quick": args.quick, **summary})  # prints the JSON, keeps bench/results/ copy
    return 0 if stored == args.events else 1


if __name__ == "__main__":
    raise SystemExit(main())
