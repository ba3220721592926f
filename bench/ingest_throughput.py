"""Ingest throughput of one worker; prints a JSON summary.

    python -m bench.ingest_throughput --events 1000000                    # through the embedded broker
    python -m bench.ingest_throughput --source store --events 10000000    # the worker's state path, 10M

``--source broker`` (default): pre-produces the events into the embedded Apache Kafka broker, then times an
:class:`IngestWorker` from its first non-empty batch until every event is durably applied (group join
excluded: the clock starts when the first batch is in, and that batch is not counted). Result:
``bench/results/ingest_throughput.json``.

``--source store``: the same per-batch work without Kafka: JSON bytes -> ``decode_values`` (the
worker's validation) -> ``PartitionStore.apply`` (dedupe, one durable SQLite transaction per batch and
partition), batches split by partition as the worker does: the state path's own ceiling, without the
broker and the consumer. Result: ``bench/results/ingest_store.json``.

In both modes ``curve`` holds the rate over each tenth of the run, so a state store that slows down
as it grows shows up as a falling curve.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, peak_rss_mb
from workers.infra.kafka import ensure_topics, make_producer
from workers.infra.kafka_broker import KafkaCluster
from workers.ingest.batch import decode_values
from workers.ingest.metrics import IngestMetrics
from workers.ingest.state_reader import StateReader
from workers.ingest.state_store import PartitionStore
from workers.ingest.worker import IngestWorker


def _events(events: int, users: int) -> Iterator[tuple[int, bytes]]:
    """(user, JSON bytes) of synthetic clicks with random event ids."""
    for n in range(events):
        user = n % users + 1
        body = {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": (n * 7919) % 300_000 + 1, "ts": n}
        yield user, json.dumps(body).encode()


def _produce(conf: dict[str, str | int], topic: str, events: int, users: int) -> float:
    producer = make_producer(conf)
    started = time.perf_counter()
    for user, value in _events(events, users):
        while True:
            try:
                producer.produce(topic, key=str(user).encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0
    return events / (time.perf_counter() - started)


class Curve:
    """Rate over each ``step`` events applied, against the timed seconds so far."""

    def __init__(self, total: int) -> None:
        self.step = max(total // 10, 1)
        self.points: list[dict[str, float]] = []
        self._mark = 0
        self._mark_s = 0.0

    def update(self, applied: int, seconds: float, done: bool) -> None:
        if applied - self._mark >= self.step or (done and applied > self._mark):
            rate = (applied - self._mark) / max(seconds - self._mark_s, 1e-9)
            self.points.append({"applied": applied, "events_per_s": round(rate)})
            print(f"[ingest_throughput] {self.points[-1]}", file=sys.stderr, flush=True)
            self._mark, self._mark_s = applied, seconds


def run_broker(args: argparse.Namespace, state_dir: Path) -> dict[str, Any]:
    topic = f"bench-clicks-{uuid.uuid4().hex[:8]}"
    timeout_s = args.timeout_s if args.timeout_s is not None else 120.0 + args.events / 5_000
    with KafkaCluster(state_dir.parent / "kafka") as broker:
        conf: dict[str, str | int] = {"bootstrap.servers": broker.bootstrap}
        ensure_topics(conf, [topic, f"{topic}.dlq"], partitions=args.partitions)
        produce_rate = _produce(conf, topic, args.events, args.users)
        print(f"[ingest_throughput] produced {args.events} at {produce_rate:.0f}/s", file=sys.stderr, flush=True)
        worker = IngestWorker(
            conf,
            topic=topic,
            dlq_topic=f"{topic}.dlq",
            group_id=f"{topic}-ingest",
            session_timeout_ms=6000,
            state_dir=state_dir,
            batch_size=args.batch_size,
            batch_timeout_s=args.batch_timeout_s,
            dlq_flush_timeout_s=10.0,
            stats_interval_ms=0,
            metrics=IngestMetrics(CollectorRegistry()),
        )
        applied, batches, started, first = 0, 0, 0.0, 0
        curve = Curve(args.events)
        deadline = time.monotonic() + timeout_s
        try:
            while applied < args.events and time.monotonic() < deadline:
                outcome = worker.run_once()
                applied += outcome.applied
                if not started:  # the clock starts once the first batch is in (group join excluded)
                    if outcome.consumed:
                        started, first = time.perf_counter(), outcome.applied
                    continue
                batches += 1
                curve.update(applied - first, time.perf_counter() - started, applied >= args.events)
            elapsed = time.perf_counter() - started
        finally:
            worker.close()
    with StateReader(state_dir, topic) as reader:
        stored = reader.event_count()
    return {
        "applied": applied,
        "stored": stored,
        "batches": batches,
        "seconds": round(elapsed, 3),
        "events_per_s": round((applied - first) / elapsed) if elapsed else None,
        "produce_events_per_s": round(produce_rate),
        "curve": curve.points,
    }


def run_store(args: argparse.Namespace, state_dir: Path) -> dict[str, Any]:
    topic = "bench-clicks"
    stores = [PartitionStore.open(state_dir, topic, p) for p in range(args.partitions)]
    source = _events(args.events, args.users)
    applied, batches, busy = 0, 0, 0.0
    curve = Curve(args.events)
    offsets = [0] * args.partitions
    redelivered = 0
    previous: list[tuple[int, bytes]] = []
    try:
        while applied < args.events:
            chunk = [next(source) for _ in range(min(args.batch_size, args.events - applied))]
            # A redelivered tail (as after a crash): the previous batch's last 1% again, to be skipped.
            replay = previous[-(len(previous) // 100) :] if previous else []
            began = time.perf_counter()
            values = [value for _, value in replay + chunk]
            results = decode_values(values)
            parts: dict[int, list[Any]] = {}
            for (user, _), event in zip(replay + chunk, results, strict=True):
                parts.setdefault(user % args.partitions, []).append(event)  # as keyed by user
            inserted = 0
            for p, events in parts.items():
                offsets[p] += len(events)
                inserted += stores[p].apply(events, topic, p, offsets[p])
            busy += time.perf_counter() - began
            redelivered += len(replay)
            applied += inserted
            batches += 1
            previous = chunk
            curve.update(applied, busy, applied >= args.events)
    finally:
        for store in stores:
            store.close()
    reopen = time.perf_counter()
    sizes = [PartitionStore.open(state_dir, topic, p) for p in range(args.partitions)]
    reopen_s = time.perf_counter() - reopen
    stored = sum(s.event_count() for s in sizes)
    for s in sizes:
        s.close()
    return {
        "applied": applied,
        "stored": stored,
        "redelivered_and_skipped": redelivered,
        "batches": batches,
        "seconds": round(busy, 3),
        "events_per_s": round(applied / busy) if busy else None,
        "reopen_seconds": round(reopen_s, 2),
        "state_mb": round(sum(f.stat().st_size for f in state_dir.rglob("*.sqlite*")) / 2**20, 1),
        "curve": curve.points,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--source", choices=["broker", "store"], default="broker")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--batch-timeout-s", type=float, default=0.5)
    parser.add_argument("--timeout-s", type=float, default=None, help="broker mode: give up consuming after this")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20,000 events")
    args = parser.parse_args(argv)
    if args.quick:
        args.events = min(args.events, 20_000)
    logging.basicConfig(level=logging.WARNING)
    runner: Callable[[argparse.Namespace, Path], dict[str, Any]] = run_broker if args.source == "broker" else run_store
    with tempfile.TemporaryDirectory() as tmp:
        result = runner(args, Path(tmp))
    summary = {
        "quick": args.quick,
        "source": args.source,
        "events": args.events,
        "partitions": args.partitions,
        "batch_size": args.batch_size,
        **result,
        "peak_rss_mb": peak_rss_mb(),
    }
    emit("ingest_throughput" if args.source == "broker" else "ingest_store", summary)
    return 0 if result["stored"] == args.events else 1


if __name__ == "__main__":
    raise SystemExit(main())
