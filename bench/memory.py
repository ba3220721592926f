"""Peak resident memory of every process of the live stack during a short loaded run (psutil).

    python -m bench.memory [--items 100000] [--duration 60] [--click-rate 2000] [--recall-rate 50]
    python -m bench.memory --quick

Starts the whole stack as processes (broker, Milvus, refresh, ingest, recall, gateway; see
``bench.stack``), streams clicks, sends recall load over Kafka and HTTP, forces one refresh round
half-way (the refresh worker's peak is its training + publish), and samples each process's RSS
every 0.5 s. Reports the peak and the last value per process, and their sum.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import emit
from bench.stack import ClickStreamer, LiveStack, MemorySampler, StackConfig, load_average, wait_serving
from bench.swap_impact import Recorder, http_load, kafka_load
from schemas.messages import RecallRequest
from workers.recall.client import RecallClient


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    p.add_argument("--click-rate", type=float, default=2000.0)
    p.add_argument("--recall-rate", type=float, default=50.0, help="Kafka requests/s; HTTP gets a fifth")
    p.add_argument("--train-batches", type=int)
    p.add_argument("--base-batches", type=int, default=200)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--quick", action="store_true", help="smoke run: 2k items, 15 s")
    args = p.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.quick:
        args.items, args.duration, args.click_rate, args.recall_rate = 2000, 15.0, 200.0, 20.0
        args.train_batches, args.base_batches = args.train_batches or 10, 10
    cfg = StackConfig(
        items=args.items,
        base_batches=args.base_batches,
        base_users=max(2000, args.items // 5),
        refresh_interval_s=1e6,  # one forced round, half-way
        train_batches=args.train_batches,
        workers=("refresh", "ingest", "recall", "gateway"),
        env={"MINDSTREAM_REFRESH__MIN_NEW_EVENTS": str(10**9)},
    )
    rng = np.random.default_rng(3)
    reqs = [RecallRequest(hist_item=rng.integers(1, args.items + 1, (1, 20)).tolist(), top_k=50) for _ in range(200)]
    load_before = load_average()
    with contextlib.ExitStack() as es:
        workdir = args.workdir or Path(es.enter_context(tempfile.TemporaryDirectory(prefix="memory-")))
        stack = es.enter_context(LiveStack(cfg, workdir))
        memory = MemorySampler(stack.processes()).start()
        idle = dict(memory.last_mb)
        client = es.enter_context(RecallClient(stack.kafka, stack.settings.recall))
        wait_serving(client)
        memory.sample()
        idle = dict(memory.last_mb)
        rec, stop = Recorder(), threading.Event()
        loaders = [
            threading.Thread(target=kafka_load, args=(client, rec, args.recall_rate, reqs, stack.alias, stop)),
            threading.Thread(
                target=http_load, args=(stack.http_url, rec, args.recall_rate / 5, reqs, stack.alias, stop)
            ),
        ]
        streamer = ClickStreamer(stack.kafka, stack.spec, args.click_rate, new_item_every_s=1.0).start()
        for t in loaders:
            t.daemon = True
            t.start()
        began = time.monotonic()
        before = stack.live()
        time.sleep(args.duration / 2)
        stack.trigger_refresh()
        swapped = False
        while time.monotonic() - began < args.duration or (
            not swapped and time.monotonic() - began < 4 * args.duration
        ):
            stack.check_alive()
            swapped = swapped or stack.live() != before
            time.sleep(0.5)
        stop.set()
        streamer.stop()
        for t in loaders:
            t.join(timeout=15)
        time.sleep(min(client.timeout_s, 3.0))  # replies in flight: closing the client would fail them
        mem = memory.stop()
        wall = time.monotonic() - began
    emit(
        "memory",
        {
            "quick": args.quick,
            "setup": {
                "items": args.items,
                "click_rate": args.click_rate,
                "recall_rate_kafka": args.recall_rate,
                "recall_rate_http": args.recall_rate / 5,
                "duration_s": args.duration,
                **stack.setup,
            },
            "idle_rss_mb": dict(sorted(idle.items())),
            **mem,
            "refresh_round_swapped": swapped,
            "clicks_sent": streamer.sent,
            "recall_requests": len(rec.samples),
            "recall_errors": sum(s.version is None for s in rec.samples),
            "recall_error_examples": rec.error_examples,
            "load_average_1m": {"before": load_before, "after": load_average()},
            "wall_s": round(wall, 1),
        },
    )


if __name__ == "__main__":
    main()
