"""Swap impact: recall latency, errors and version consistency under steady load while the live
collection is swapped ``--swaps`` times.

    python -m bench.swap_impact [--swaps 3] [--rate 100] [--items 100000] [--http-rate 0]
    python -m bench.swap_impact --quick

The whole stack runs as processes (``bench.stack``). An open-loop generator sends recall requests
over Kafka at ``--rate`` requests/s (and, with ``--http-rate``, over HTTP to the gateway); latency is
taken from each request's scheduled send time. Each swap is forced: a burst of clicks, then the
refresh trigger (``mindstream refresh --now``). Per swap, windows: ``before`` (``--window`` s before
the round was asked for), ``during`` (round asked -> alias swapped + 1 s), ``after`` (the next
``--window`` s). Version consistency: every reply's collection is ``<alias>_<model_version>``, and no
reply is older than a version already seen on the same channel before its request was sent (the
Kafka recall worker and the gateway re-resolve the alias on their own, so they may differ briefly).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import emit
from bench.stack import (
    ClickStreamer,
    LiveStack,
    MemorySampler,
    StackConfig,
    load_average,
    percentiles,
    phase_summary,
    wait_serving,
)
from schemas.messages import ErrorReply, RecallReply, RecallRequest
from workers.recall.client import RecallClient


@dataclass
class Sample:
    channel: str  # "kafka" or "http"
    due: float  # scheduled send, monotonic
    arrived: float
    version: int | None  # None: an error
    empty: bool
    consistent: bool
    newest_seen_at_send: int


class Recorder:
    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.newest_by_channel: dict[str, int] = {}
        self.lock = threading.Lock()
        self.error_examples: list[str] = []

    def record(self, channel: str, due: float, seen: int, reply: Any, alias: str) -> None:
        arrived = time.monotonic()
        if isinstance(reply, RecallReply):
            version = int(reply.model_version.lstrip("v"))
            sample = Sample(
                channel,
                due,
                arrived,
                version,
                any(not items for items in reply.items),
                reply.collection == f"{alias}_{reply.model_version}",
                seen,
            )
        else:
            sample = Sample(channel, due, arrived, None, False, True, seen)
            if len(self.error_examples) < 5:
                self.error_examples.append(repr(reply)[:300])
        with self.lock:
            self.samples.append(sample)
            if sample.version is not None:
                self.newest_by_channel[channel] = max(self.newest_by_channel.get(channel, 0), sample.version)

    def newest(self, channel: str) -> int:
        """Newest version a reply on ``channel`` has shown so far (each service swaps on its own)."""
        return self.newest_by_channel.get(channel, 0)


def kafka_load(
    client: RecallClient, rec: Recorder, rate: float, reqs: list[RecallRequest], alias: str, stop: threading.Event
) -> None:
    t0 = time.monotonic()
    i = 0
    while not stop.is_set():
        due = t0 + i / rate
        if (delay := due - time.monotonic()) > 0:
            time.sleep(delay)
        seen = rec.newest("kafka")

        def done(f: Future[RecallReply | ErrorReply], due: float = due, seen: int = seen) -> None:
            rec.record("kafka", due, seen, f.exception() or f.result(), alias)

        try:
            client.request(reqs[i % len(reqs)]).add_done_callback(done)
        except Exception as exc:
            rec.record("kafka", due, seen, exc, alias)
        i += 1


def http_load(
    url: str, rec: Recorder, rate: float, reqs: list[RecallRequest], alias: str, stop: threading.Event
) -> None:
    import httpx

    bodies = [r.model_dump(mode="json", exclude_none=True) for r in reqs]
    with httpx.Client(base_url=url, timeout=5.0) as http:
        t0 = time.monotonic()
        i = 0
        while not stop.is_set():  # closed loop on one connection, paced: HTTP here is a check, not a load test
            due = t0 + i / rate
            if (delay := due - time.monotonic()) > 0:
                time.sleep(delay)
            seen = rec.newest("http")
            try:
                r = http.post("/rec/recall", json=bodies[i % len(bodies)])
                reply: Any = RecallReply.model_validate(r.json()) if r.status_code == 200 else f"HTTP {r.status_code}"
            except Exception as exc:
                reply = exc
            rec.record("http", due, seen, reply, alias)
            i += 1


def window(samples: list[Sample], lo: float, hi: float) -> dict[str, Any]:
    inside = [s for s in samples if lo <= s.due < hi]
    ok = [(s.arrived - s.due) * 1000 for s in inside if s.version is not None]
    lat = percentiles(ok)
    return {
        "requests": len(inside),
        "errors": sum(s.version is None for s in inside),
        "p50_ms": lat["p50"],
        "p99_ms": lat["p99"],
        "max_ms": lat["max"],
    }


def timeline(samples: list[Sample], t0: float, channel: str) -> list[dict[str, Any]]:
    """Per second of send time: p50/p99 latency, errors, newest version served (for the plot)."""
    out: list[dict[str, Any]] = []
    chosen = [s for s in samples if s.channel == channel]
    if not chosen:
        return out
    end = max(s.due for s in chosen)
    for sec in range(int(end - t0) + 1):
        inside = [s for s in chosen if t0 + sec <= s.due < t0 + sec + 1]
        ok = [(s.arrived - s.due) * 1000 for s in inside if s.version is not None]
        versions = [s.version for s in inside if s.version is not None]
        out.append(
            {
                "t_s": sec,
                "n": len(inside),
                "p50_ms": round(float(np.percentile(ok, 50)), 2) if ok else None,
                "p99_ms": round(float(np.percentile(ok, 99)), 2) if ok else None,
                "errors": sum(s.version is None for s in inside),
                "version": max(versions) if versions else None,
            }
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--swaps", type=int, default=3)
    p.add_argument("--rate", type=float, default=100.0, help="Kafka recall requests/s (open loop)")
    p.add_argument("--http-rate", type=float, default=0.0, help="HTTP recall requests/s via the gateway (0: off)")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--window", type=float, default=10.0, help="seconds of the before/after windows")
    p.add_argument("--clicks", type=int, default=20_000, help="clicks sent before each forced round")
    p.add_argument("--train-batches", type=int, help="training batches per refresh (default: settings)")
    p.add_argument("--base-batches", type=int, default=200)
    p.add_argument("--swap-timeout", type=float, default=600.0)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--quick", action="store_true", help="tiny smoke run: 2k items, 2 swaps, 30 requests/s")
    args = p.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    if args.quick:
        args.swaps, args.rate, args.items, args.window, args.clicks = 2, 30.0, 2000, 3.0, 1000
        args.train_batches, args.base_batches, args.swap_timeout = args.train_batches or 10, 10, 60.0
        args.http_rate = args.http_rate or 5.0
    load_before = load_average()
    workers = ("refresh", "ingest", "recall") + (("gateway",) if args.http_rate > 0 else ())
    cfg = StackConfig(
        items=args.items,
        base_batches=args.base_batches,
        base_users=max(2000, args.items // 5),
        refresh_interval_s=1e6,  # only forced rounds: the swaps happen when asked
        train_batches=args.train_batches,
        workers=workers,
        env={"MINDSTREAM_REFRESH__MIN_NEW_EVENTS": str(10**9)},
    )
    rng = np.random.default_rng(7)
    reqs = [RecallRequest(hist_item=rng.integers(1, args.items + 1, (1, 20)).tolist(), top_k=50) for _ in range(500)]
    swaps: list[dict[str, Any]] = []
    with contextlib.ExitStack() as es:
        workdir = args.workdir or Path(es.enter_context(tempfile.TemporaryDirectory(prefix="swap-impact-")))
        stack = es.enter_context(LiveStack(cfg, workdir))
        memory = MemorySampler(stack.processes()).start()
        client = es.enter_context(RecallClient(stack.kafka, stack.settings.recall))
        wait_serving(client)
        alias = stack.alias
        rec = Recorder()
        stop = threading.Event()
        loaders = [threading.Thread(target=kafka_load, args=(client, rec, args.rate, reqs, alias, stop), daemon=True)]
        if args.http_rate > 0:
            loaders.append(
                threading.Thread(
                    target=http_load, args=(stack.http_url, rec, args.http_rate, reqs, alias, stop), daemon=True
                )
            )
        t0 = time.monotonic()
        for t in loaders:
            t.start()
        time.sleep(args.window)
        for n in range(args.swaps):
            before = stack.live()
            streamer = ClickStreamer(stack.kafka, stack.spec, rate=max(args.clicks / 2.0, 1.0), seed=100 + n)
            streamer.start()
            while streamer.sent < args.clicks:
                time.sleep(0.1)
            streamer.stop()
            asked = time.monotonic()
            stack.trigger_refresh()
            swapped_at = None
            while time.monotonic() - asked < args.swap_timeout:
                stack.check_alive()
                if stack.live() != before:
                    swapped_at = time.monotonic()
                    break
                time.sleep(0.1)
            swaps.append(
                {"asked_t_s": round(asked - t0, 2), "swapped_t_s": round(swapped_at - t0, 2) if swapped_at else None}
            )
            if swapped_at is None:
                break
            time.sleep(args.window + 1.0)
        stop.set()
        for t in loaders:
            t.join(timeout=15)
        time.sleep(min(client.timeout_s, 3.0))  # replies in flight
        rounds = stack.refresh_rounds()
        phase_means = stack.refresh_phase_totals()
        mem = memory.stop()
    samples = list(rec.samples)
    for s in swaps:
        asked, swapped = t0 + s["asked_t_s"], (t0 + s["swapped_t_s"]) if s["swapped_t_s"] is not None else None
        kafka = [x for x in samples if x.channel == "kafka"]
        s["kafka"] = {
            "before": window(kafka, asked - args.window, asked),
            "during": window(kafka, asked, (swapped or asked) + 1.0),
            "after": window(kafka, (swapped or asked) + 1.0, (swapped or asked) + 1.0 + args.window),
        }
    ok = [s for s in samples if s.version is not None]
    by_channel = {
        ch: {
            "requests": sum(s.channel == ch for s in samples),
            "errors": sum(s.channel == ch and s.version is None for s in samples),
            "latency_ms": percentiles([(s.arrived - s.due) * 1000 for s in ok if s.channel == ch]),
        }
        for ch in sorted({s.channel for s in samples})
    }
    emit(
        "swap_impact",
        {
            "quick": args.quick,
            "setup": {
                "items": args.items,
                "kafka_rate": args.rate,
                "http_rate": args.http_rate,
                "window_s": args.window,
                "clicks_per_round": args.clicks,
                "train_batches": args.train_batches or stack.settings.refresh.train_batches,
                **stack.setup,
            },
            "swaps_asked": args.swaps,
            "swaps_done": sum(s["swapped_t_s"] is not None for s in swaps),
            "requests": len(samples),
            "errors": sum(s.version is None for s in samples),
            "error_examples": rec.error_examples,
            "empty_replies": sum(s.empty for s in ok),
            "inconsistent_replies": sum(not s.consistent for s in ok),
            "version_regressions": sum(s.version is not None and s.version < s.newest_seen_at_send for s in ok),
            "versions_served": sorted({s.version for s in ok if s.version is not None}),
            "channels": by_channel,
            "swaps": swaps,
            "refresh_phases_s": phase_summary(rounds),
            "refresh_phase_means_s": phase_means,
            "timeline_kafka": timeline(samples, t0, "kafka"),
            "timeline_http": timeline(samples, t0, "http"),
            "memory": mem,
            "load_average_1m": {"before": load_before, "after": load_average()},
        },
    )


if __name__ == "__main__":
    main()
