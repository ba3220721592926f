"""Freshness: how long from a brand-new item's first click until it is served by live recall (a CDF).

    python -m bench.freshness [--rate 5000] [--interval 10] [--items 100000] [--duration 120]
    python -m bench.freshness --quick

The whole stack runs as processes (see ``bench.stack``): ingest, refresh (every ``--interval`` s)
and recall workers on the embedded broker and Milvus. Synthetic clicks stream at ``--rate`` clicks/s;
every ``--new-item-every`` s a new item id (past the catalogue) is born in an interest cluster and
takes a share of that cluster's clicks. For each new item two times are measured from its first
click (the moment it was produced):

* ``click_to_live_s``: the live alias points at a collection holding the item (alias polled every
  0.2 s, the new collection queried for the pending ids): the item is searchable by recall.
* ``click_to_recalled_s``: a recall request (Kafka, ``user_ids`` = the item's latest clickers,
  history from the ingest state) first returns the item in its top-k (probed every second); only
  some new items rank in a clicker's top-k, so its coverage is reported alongside.

After ``--duration`` s no new item is born; clicks keep streaming for ``--drain`` s so the last
items get their chance (it ends as soon as all are live); items still not live then are reported
as ``never_live`` (not hidden).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import threading
import time
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
from workers.recall.client import RecallClient

GOAL_P99_S = 5.0  # new item, 100k items (the 1M goal is 10 s)
GOAL_USER_SIDE_P99_S = 2.0
GOAL_MODEL_AGE_P99_S = 60.0  # 100k items (1M: 300 s)


class Observer:
    """Measures the three freshness figures on a running stack and probes recall over Kafka and HTTP.

    * new item: the live collection holds the item among the rows of its announced generations (or
      a newer version holds it): polled every 0.2 s;
    * user side: the latest produced click appears in its user's history in the ingest state (what
      a recall by ``user_ids`` reads): one click followed at a time, polled every 20 ms;
    * model: the age of the served version, sampled every second from the first version trained on
      the stream on (``model_age_from_s`` after the start; the refresh log adds, per round,
      click -> version for a sample of its clicks).
    Every reply is checked: it must name a version whose collection it searched (``mixed``), and
    any error or timeout counts as failed.
    """

    def __init__(
        self, stack: LiveStack, streamer: ClickStreamer, client: RecallClient, top_k: int, http_rate: float
    ) -> None:
        self.stack = stack
        self.streamer = streamer
        self.client = client
        self.top_k = top_k
        self.http_rate = http_rate
        self.live_at: dict[int, float] = {}
        self.live_version: dict[int, str] = {}
        self.recalled_at: dict[int, float] = {}
        self.user_side: list[float] = []
        self.model_age: list[float] = []
        self.warmup_s: float | None = None  # until the first version trained on the stream was live
        self.swaps: list[dict[str, Any]] = []
        self.generations = 0
        self.replies = 0
        self.mixed = 0
        self.failed = 0
        self.http_replies = 0
        self.probe_errors = 0
        self.probes = 0
        self._stop = threading.Event()

    def pending_live(self) -> list[int]:
        with self.streamer.lock:
            clicked = list(self.streamer.first_click)
        return [i for i in clicked if i not in self.live_at]

    def watch_live(self) -> None:
        current: tuple[str | None, str | None, int] = (self.stack.live(), None, 0)
        t0 = time.monotonic()
        while not self._stop.wait(0.2):
            live = self.stack.live()
            if live is None:
                continue
            generation = self.stack.generation(live)
            version = self.stack.live_version(live)
            seen = time.monotonic()
            if (live, version) != current[:2]:  # a swap, or a delta announcing a new version
                self.swaps.append({"t_s": round(seen - t0, 2), "collection": live, "version": version})
            elif generation > current[2]:
                self.generations += generation - current[2]
            current = (live, version, generation)
            pending = self.pending_live()
            if not pending:
                continue
            with contextlib.suppress(Exception):
                key = "item_id" if self.stack.store.is_keyed(live) else "id"
                where = f"{key} in {pending} and {self.stack.store.visible_at(live, generation)}"
                rows = self.stack.store.client.query(live, filter=where, output_fields=[key])
                for item in (int(r[key]) for r in rows):
                    self.live_at[item] = seen
                    self.live_version[item] = live

    def sample_model_age(self) -> None:
        """From the first version trained on the stream on (the one the stack started with was trained
        before the benchmark: its age measures the set-up, not the service)."""
        began = time.monotonic()
        first = self.stack.live_version(live) if (live := self.stack.live()) else None
        while not self._stop.wait(1.0):
            live = self.stack.live()
            created = self.stack.live_created_at(live) if live else None
            if created is None or (live and self.stack.live_version(live) == first):
                continue
            if self.warmup_s is None:
                self.warmup_s = time.monotonic() - began
            self.model_age.append(max(time.time() - created, 0.0))

    def follow_user_side(self) -> None:
        """One click at a time: produced -> in its user's history in the ingest state."""
        from workers.ingest.state_reader import StateReader

        with StateReader(self.stack.settings.state_dir, self.stack.kafka.clicks_topic) as reader:
            while not self._stop.wait(0.25):
                click = self.streamer.last_click
                if click is None:
                    continue
                user, item, produced = click
                deadline = time.time() + 30
                while time.time() < deadline and not self._stop.is_set():
                    with contextlib.suppress(Exception):
                        if item in reader.history(user, 5):
                            self.user_side.append(time.time() - produced)
                            break
                    time.sleep(0.02)

    def _check(self, model_version: str, collection: str) -> None:
        """A reply is mixed when its version was never served from the collection it names (its own
        version, or one a delta announced there)."""
        self.replies += 1
        if model_version not in self.stack.versions_served(collection):
            self.mixed += 1

    def probe_recall(self) -> None:
        while not self._stop.wait(1.0):
            with self.streamer.lock:
                pending = [
                    (item, users[-1])
                    for item, users in self.streamer.clickers.items()
                    if item not in self.recalled_at and item in self.live_at
                ]
            for start in range(0, len(pending), 64):
                chunk = pending[start : start + 64]
                self.probes += 1
                try:
                    reply = self.client.recall(user_ids=[u for _, u in chunk], top_k=self.top_k)
                except Exception:
                    self.probe_errors += 1
                    self.failed += 1
                    continue
                self._check(reply.model_version, reply.collection)
                arrived = time.monotonic()
                for (item, _), items in zip(chunk, reply.items, strict=True):
                    if item in items:
                        self.recalled_at.setdefault(item, arrived)

    def probe_http(self) -> None:
        """Steady HTTP recall load (``http_rate`` req/s) by ``user_ids`` of recent clickers."""
        import json
        import urllib.request

        if self.http_rate <= 0 or "gateway" not in self.stack.cfg.workers:
            return
        url = f"{self.stack.http_url}/rec/recall"
        while not self._stop.wait(1.0 / self.http_rate):
            click = self.streamer.last_click
            if click is None:
                continue
            body = json.dumps({"user_ids": [click[0]], "top_k": self.top_k}).encode()
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.stack.read_token}"}
            request = urllib.request.Request(url, body, headers)
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    reply = json.loads(r.read())
                self.http_replies += 1
                self._check(reply["model_version"], reply["collection"])
            except Exception:
                self.failed += 1

    def run(self) -> list[threading.Thread]:
        targets = (self.watch_live, self.probe_recall, self.sample_model_age, self.follow_user_side, self.probe_http)
        threads = [threading.Thread(target=f, daemon=True) for f in targets]
        for t in threads:
            t.start()
        return threads

    def stop(self, threads: list[threading.Thread]) -> None:
        self._stop.set()
        for t in threads:
            t.join(timeout=35)


def cdf(values: list[float], points: int = 50) -> list[list[float]]:
    """``[[seconds, share <= seconds], ...]`` at up to ``points`` quantiles (for the plot)."""
    if not values:
        return []
    arr = np.sort(np.asarray(values))
    qs = np.linspace(0, 1, min(points, arr.size) + 1)[1:]
    return [[round(float(np.quantile(arr, q)), 3), round(float(q), 3)] for q in qs]


def index_env(index: str, m: int | None, ef_construction: int | None) -> dict[str, str]:
    """MINDSTREAM_MILVUS__* overrides for the stack's workers."""
    env = {"MINDSTREAM_MILVUS__INDEX_TYPE": index}
    if m is not None:
        env["MINDSTREAM_MILVUS__HNSW_M"] = str(m)
    if ef_construction is not None:
        env["MINDSTREAM_MILVUS__HNSW_EF_CONSTRUCTION"] = str(ef_construction)
    return env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rate", type=float, default=5000.0, help="clicks/s")
    p.add_argument("--interval", type=float, default=10.0, help="refresh interval (MINDSTREAM_REFRESH__INTERVAL_S)")
    p.add_argument("--items", type=int, default=100_000, help="catalogue size")
    p.add_argument("--duration", type=float, default=120.0, help="seconds during which new items are born")
    p.add_argument(
        "--drain", type=float, help="most seconds of clicks after the last birth (default: 3 x interval + 120)"
    )
    p.add_argument("--new-item-every", type=float, default=1.0, help="seconds between new items")
    p.add_argument("--new-item-share", type=float, default=0.3, help="share of its cluster's clicks a new item takes")
    p.add_argument("--train-batches", type=int, help="training batches per refresh (default: settings, 300)")
    p.add_argument("--base-batches", type=int, default=200, help="training of the first model")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--http-rate", type=float, default=20.0, help="HTTP recall requests/s through the gateway")
    p.add_argument("--index", choices=["HNSW", "IVF_FLAT", "FLAT"], default="HNSW", help="Milvus index of each version")
    p.add_argument("--hnsw-m", type=int, help="HNSW M (default: settings, 16)")
    p.add_argument("--hnsw-ef-construction", type=int, help="HNSW efConstruction (default: settings, 200)")
    p.add_argument("--tag", help="write bench/results/freshness_<tag>.json instead of freshness.json")
    p.add_argument("--workdir", type=Path, help="keep logs and data here (default: a temporary directory)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (~1 minute): 2k items, 300 clicks/s")
    args = p.parse_args()
    if args.quick:
        args.rate, args.interval, args.items, args.duration = 300.0, 4.0, 2000, 12.0
        args.drain = args.drain or 12.0
        args.train_batches, args.base_batches = args.train_batches or 10, 10
    drain = args.drain if args.drain is not None else 3 * args.interval + 120  # ends early once all are live
    load_before = load_average()
    cfg = StackConfig(
        items=args.items,
        base_batches=args.base_batches,
        base_users=max(2000, args.items // 5),
        refresh_interval_s=args.interval,
        train_batches=args.train_batches,
        workers=("refresh", "ingest", "recall", "gateway"),
        env=index_env(args.index, args.hnsw_m, args.hnsw_ef_construction),
    )
    with contextlib.ExitStack() as es:
        workdir = args.workdir or Path(es.enter_context(tempfile.TemporaryDirectory(prefix="freshness-")))
        stack = es.enter_context(LiveStack(cfg, workdir))
        memory = MemorySampler(stack.processes()).start()
        client = es.enter_context(RecallClient(stack.kafka, stack.settings.recall))
        wait_serving(client)
        streamer = ClickStreamer(
            stack.kafka,
            stack.spec,
            args.rate,
            new_item_every_s=args.new_item_every,
            new_item_share=args.new_item_share,
            new_item_active_s=max(30.0, 3 * args.interval),
        )
        observer = Observer(stack, streamer, client, args.top_k, args.http_rate)
        threads = observer.run()
        streamer.start()
        began = time.monotonic()
        time.sleep(args.duration)
        streamer.new_items_open.clear()
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline:
            stack.check_alive()
            if not observer.pending_live() and time.monotonic() - began > args.duration + 2 * args.interval:
                break
            time.sleep(0.5)
        streamer.stop()
        observer.stop(threads)
        wall = time.monotonic() - began
        rounds = stack.refresh_rounds()
        phase_means = stack.refresh_phase_totals()
        mem = memory.stop()
    first = dict(streamer.first_click)
    live = [observer.live_at[i] - first[i] for i in first if i in observer.live_at]
    recalled = [observer.recalled_at[i] - first[i] for i in first if i in observer.recalled_at]
    live_p = percentiles(live)
    user_p = percentiles(observer.user_side, 3)
    age_p = percentiles(observer.model_age)
    to_version = [x for r in rounds for x in r.get("click_to_version_s") or []]
    version_p = percentiles(to_version)
    goal_new = GOAL_P99_S if args.items < 1_000_000 else 10.0
    goal_age = GOAL_MODEL_AGE_P99_S if args.items < 1_000_000 else 300.0
    emit(
        f"freshness_{args.tag}" if args.tag else "freshness",
        {
            "new_item_p50_s": live_p["p50"],
            "new_item_p99_s": live_p["p99"],
            "user_side_p50_s": user_p["p50"],
            "user_side_p99_s": user_p["p99"],
            "model_age_p99_s": age_p["p99"],
            "click_to_version_p99_s": version_p["p99"],
            "new_items": len(first),
            "never_live": len(first) - len(live),
            "mixed_version_replies": observer.mixed,
            "failed_replies": observer.failed,
            "swaps": len(observer.swaps),
            "generations": observer.generations,
            "items": args.items,
            "clicks_per_s": round(streamer.sent / wall, 1),
            "index": args.index,
            "phase_means_s": phase_means,
            "goals": {
                "new_item_p99_s": goal_new,
                "user_side_p99_s": GOAL_USER_SIDE_P99_S,
                "model_age_p99_s": goal_age,
                "met": {
                    "new_item": bool(
                        live_p["p99"] is not None and live_p["p99"] <= goal_new and len(live) == len(first)
                    ),
                    "user_side": bool(user_p["p99"] is not None and user_p["p99"] <= GOAL_USER_SIDE_P99_S),
                    "model_age": bool(age_p["p99"] is not None and age_p["p99"] <= goal_age),
                    "no_mixed_or_failed": observer.mixed == 0 and observer.failed == 0,
                },
            },
            "user_side_s": user_p,
            "model_age_s": age_p,
            "model_age_from_s": round(observer.warmup_s, 1) if observer.warmup_s is not None else None,
            "click_to_version_s": version_p,
            "replies_checked": {"kafka": observer.replies - observer.http_replies, "http": observer.http_replies},
            "cdf_user_side": cdf(observer.user_side),
            "cdf_model_age": cdf(observer.model_age),
            "quick": args.quick,
            "setup": {
                "items": args.items,
                "index": {
                    "type": args.index,
                    **({"M": args.hnsw_m} if args.hnsw_m else {}),
                    **({"efConstruction": args.hnsw_ef_construction} if args.hnsw_ef_construction else {}),
                },
                "click_rate": args.rate,
                "refresh_interval_s": args.interval,
                "train_batches": args.train_batches or stack.settings.refresh.train_batches,
                "new_item_every_s": args.new_item_every,
                "new_item_share": args.new_item_share,
                "duration_s": args.duration,
                "drain_s": drain,
                **stack.setup,
            },
            "clicks_sent": streamer.sent,
            "achieved_click_rate": round(streamer.sent / wall, 1),
            "generator_max_backlog": streamer.behind_max,
            "new_items_detail": {"born": len(streamer.born), "clicked": len(first), "live": len(live)},
            "click_to_live_s": live_p,
            "click_to_recalled_s": percentiles(recalled) | {"coverage": round(len(recalled) / max(len(first), 1), 3)},
            "cdf_click_to_live": cdf(live),
            "cdf_click_to_recalled": cdf(recalled),
            "goal": {
                "p99_s": goal_new,
                "measured_p99_s": live_p["p99"],
                "met": bool(live_p["p99"] is not None and live_p["p99"] <= goal_new and len(live) == len(first)),
            },
            "swaps_observed": len(observer.swaps),
            "swap_log": observer.swaps,
            "refresh_rounds": len(rounds),
            "refresh_failed_rounds": sum(1 for r in rounds if r.get("error")),
            "refresh_phases_s": phase_summary(rounds),
            "refresh_round_events": [r.get("events") for r in rounds],
            "delta_rounds": sum(1 for r in rounds if r.get("delta")),
            "rows_written_share": [
                round(r["rows_written"] / r["items"], 5) for r in rounds if r.get("delta") and r.get("items")
            ],
            "round_s": percentiles(
                [sum(float(v) for v in (r.get("phases") or {}).values()) for r in rounds if not r.get("error")], 2
            ),
            "recall_probes": observer.probes,
            "recall_probe_errors": observer.probe_errors,
            "memory": mem,
            "load_average_1m": {"before": load_before, "after": load_average()},
            "wall_s": round(wall, 1),
        },
    )


if __name__ == "__main__":
    main()
