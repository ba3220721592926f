"""Soak: the ``mindstream up`` stack as separate processes under steady load for hours.

5k clicks/s of the continuous stream (``workers.stream``: drifting users, a new item born every
second, bursts), 200 recall requests/s over Kafka and 20 over HTTP, for ``--duration`` (default 2 h;
CI never runs it). Every ``--window`` seconds (default 5 min): recall p50/p99 per path, errors,
timeouts, swaps, the freshness histograms over the window, RSS and CPU of every process, the
broker's topic count and on-disk size, the load average, the distinct users that have clicked, and the disk
use of the stack's directory by part (``disk_bytes``: ``ingest_state``, ``checkpoints``, ``models``,
``milvus``, ``broker``, ``other``, ``total``; blocks allocated, see :func:`disk_parts`). After the load stops
the clicks are drained: ``lost_clicks = sent - applied - dead-lettered``. Writes ``bench/results/soak.json``
(or ``--out``) and ``soak.png``. ``bench.days`` runs it for days of traffic compressed into hours.

Serving while the refresh worker works (:mod:`bench.stage_sampler`): every second the recall worker's and
the gateway's stage histograms and the refresh worker's activity are scraped, and each second is *busy*
(a round, a swap or a fast-path step seen in it; ``SoakConfig.busy_activities``) or *quiet*. Each window and
the summary add ``stages`` (path -> ``busy``/``quiet`` -> stage -> p99 ms, from the bucket deltas of that
class's seconds), ``busy_share``, ``activity_share``, ``p99_stage_busy`` (per path) and
``p99_stage_busy_overall``; each window's ``kafka`` and ``http`` add ``p99_ms_busy``, ``p99_ms_quiet`` and
``n_busy``, ``n_quiet``, ``failed_busy``, ``failed_quiet`` (requests by the class of the second they were
sent in), the summary ``kafka_p99_ms_busy`` and the like. The summary adds ``freshness_run`` (the freshness
histograms over the whole load) and ``live_model_age_s_run`` (percentiles of the live model's age read every
second). The sampler costs each of the three workers one ``/metrics`` page per second.

    python -m bench.soak --duration 7200
    python -m bench.soak --duration 1200 --window 120      # what fits in a working session
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.common import disk_usage, machine, write_json
from bench.load import KafkaLoad, Outcome, VegetaLoad, describe, kafka_open_loop, vegeta_binary
from bench.stack import LiveStack, StackConfig, percentiles, wait_serving
from bench.stage_sampler import CLASSES, Interval, StageSampler, request_classes, stage_summary
from model.data.synthetic import synthetic_dataset
from model.export import external_heldout
from schemas.messages import RecallRequest
from workers.infra.kafka import make_admin
from workers.infra.ports import free_port
from workers.recall.client import RecallClient
from workers.refresh.metrics import ACTIVITIES
from workers.runtime import StopFlag
from workers.settings import StreamSettings
from workers.status import Buckets, scrape, scrape_histograms, window_quantile
from workers.stream import Chunk, ClickStream, StreamSender

log = logging.getLogger(__name__)

FRESHNESS = {
    "user": ("ingest", "mindstream_freshness_user_seconds"),
    "new_item": ("refresh", "mindstream_freshness_new_item_seconds"),
    "click_to_version": ("refresh", "mindstream_freshness_click_to_version_seconds"),
}


@dataclass
class SoakConfig:
    duration_s: float = 7200.0
    window_s: float = 300.0
    click_rate: float = 5000.0
    kafka_rate: float = 200.0
    http_rate: float = 20.0
    new_items_per_s: float = 1.0
    items: int = 100_000
    refresh_interval_s: float = 30.0
    drain_s: float = 180.0
    base_batches: int = 200
    busy_activities: tuple[str, ...] = ACTIVITIES  # what makes a second busy (bench.stage_sampler)
    env: dict[str, str] = field(default_factory=dict)
    generators: str = "process"  # "process": Kafka load in a process of its own, HTTP by vegeta; "thread": in here


class _Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcomes: dict[str, list[Outcome]] = {"kafka": [], "http": []}
        self.sent = {"kafka": 0, "http": 0}

    def pending(self, path: str) -> int:
        """Requests sent whose outcome (reply, error or timeout) has not come back yet."""
        with self.lock:
            return self.sent[path] - len(self.outcomes[path])

    def add(self, path: str, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes[path].append(outcome)

    def sink(self, path: str, outcome: Outcome) -> None:
        """An outcome from a load process (counted as sent when it comes back)."""
        with self.lock:
            self.sent[path] += 1
            self.outcomes[path].append(outcome)

    def window(self, path: str, lo: float, hi: float) -> dict[str, Any]:
        with self.lock:
            inside = [o for o in self.outcomes[path] if lo <= o.due < hi]
        ok = [o.ms for o in inside if o.ms is not None]
        stats = percentiles(ok)
        return {
            "n": len(inside),
            "p50_ms": stats["p50"],
            "p99_ms": stats["p99"],
            "timeouts": sum(o.kind == "timeout" for o in inside),
            "errors": sum(o.kind == "error" for o in inside),
            "error_details": dict(Counter(o.detail or "unknown" for o in inside if o.kind == "error")),
        }

    def by_class(
        self, path: str, intervals: Sequence[Interval], lo: float = -np.inf, hi: float = np.inf
    ) -> dict[str, float | int | None]:
        """Per class of the second they were sent in: the p99 (ms) and count of the requests sent in
        ``[lo, hi)`` that were answered, and the count of those that failed (error or timeout).
        ``intervals``: every one of the run, so that a request near a window's edge is found."""
        with self.lock:
            inside = [o for o in self.outcomes[path] if lo <= o.due < hi]
        labels = request_classes(intervals, [o.due for o in inside])
        out: dict[str, float | int | None] = {}
        for label in CLASSES:
            mine = [o for o, c in zip(inside, labels, strict=True) if c == label]
            ms = [o.ms for o in mine if o.ms is not None]
            out[f"p99_ms_{label}"] = percentiles(ms)["p99"]
            out[f"n_{label}"] = len(ms)
            out[f"failed_{label}"] = len(mine) - len(ms)
        return out


def _kafka_load(client: RecallClient, rec: _Recorder, rate: float, reqs: list[RecallRequest], stop: StopFlag) -> None:
    """The old way (``--generators thread``): the open loop in a thread of this process."""

    def sent() -> None:
        rec.sent["kafka"] += 1

    kafka_open_loop(client, rate, reqs, stop, lambda outcome: rec.add("kafka", outcome), sent)


def _http_load(url: str, rec: _Recorder, rate: float, reqs: list[RecallRequest], stop: StopFlag) -> None:
    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise

    bodies = [r.model_dump(mode="json", exclude_none=True) for r in reqs]
    with httpx.Client(base_url=url, timeout=5.0) as http:
        t0 = time.monotonic()
        i = 0
        while not stop.is_set():
            due = t0 + i / rate
            if (delay := due - time.monotonic()) > 0 and stop.wait(delay):
                break
            rec.sent["http"] += 1
            try:
                r = http.post("/rec/recall", json=bodies[i % len(bodies)])
                if r.status_code == 200:
                    rec.add("http", Outcome(due, (time.monotonic() - due) * 1000, "ok"))
                else:
                    rec.add("http", Outcome(due, None, "error", f"HTTP {r.status_code}: {r.text[:120]}"))
            except httpx.TimeoutException:
                rec.add("http", Outcome(due, None, "timeout"))
            except Exception as exc:
                rec.add("http", Outcome(due, None, "error", describe(exc)))
            i += 1


class _Processes:
    """RSS (MB) and CPU (share of one core) of every process over each window: ``rss_mb`` at the window's
    end, ``rss_mb_max`` and ``rss_mb_median`` over samples every ``every_s`` within it (a process whose
    memory swings with its work, the refresh worker in a round, reads the same at any moment only so)."""

    def __init__(self, pids: dict[str, int], every_s: float = 5.0) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.cpu0 = {name: self._cpu(p) for name, p in self.procs.items()}
        self.t0 = time.monotonic()
        self.every_s = every_s
        self._rss: dict[str, list[float]] = {name: [] for name in self.procs}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-window-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            for name, p in self.procs.items():
                rss = self._rss_mb(p)
                if rss is not None:
                    with self._lock:
                        self._rss[name].append(rss)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + 5)

    @staticmethod
    def _rss_mb(p: psutil.Process) -> float | None:
        try:
            return float(p.memory_info().rss / 2**20)
        except psutil.Error:
            return None

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return 0.0

    def sample(self) -> dict[str, dict[str, float]]:
        now = time.monotonic()
        out = {}
        with self._lock:
            within, self._rss = self._rss, {name: [] for name in self.procs}
        for name, p in self.procs.items():
            cpu = self._cpu(p)
            rss = self._rss_mb(p) or 0.0
            seen = [*within[name], rss]
            out[name] = {
                "rss_mb": round(rss, 1),
                "rss_mb_max": round(max(seen), 1),
                "rss_mb_median": round(float(np.median(seen)), 1),
                "cpu": round((cpu - self.cpu0[name]) / max(now - self.t0, 1e-3), 3),
            }
            self.cpu0[name] = cpu
        self.t0 = now
        return out


def _metrics(stack: LiveStack, ingest_port: int) -> tuple[dict[str, float], dict[str, float], dict[str, Buckets]]:
    ingest = f"http://127.0.0.1:{ingest_port}/metrics"
    refresh = f"http://127.0.0.1:{stack.refresh_metrics_port}/metrics"
    hist = {"ingest": scrape_histograms(ingest), "refresh": scrape_histograms(refresh)}
    return scrape(ingest), scrape(refresh), hist


def _freshness(before: dict[str, Buckets], after: dict[str, Buckets]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for label, (worker, name) in FRESHNESS.items():
        if name in after.get(worker, {}):
            a, b = before.get(worker, {}).get(name, []), after[worker][name]
            out[label] = {f"p{int(q * 100)}_s": window_quantile(a, b, q) for q in (0.5, 0.99)}
    return out


def _broker_topics(conf: dict[str, Any], replies: str, data_dir: Path) -> dict[str, float]:
    topics = make_admin(conf).list_topics(timeout=10).topics
    disk = 0
    for root, _, files in os.walk(data_dir):  # a directory gone during the walk is skipped
        for name in files:
            try:  # the broker deletes old segments while this walks (the clicks' retention)
                disk += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return {
        "total": len(topics),
        "reply_topics": sum(t.startswith(f"{replies}.") for t in topics),
        "disk_mb": round(disk / 2**20, 1),
    }


def disk_parts(stack: LiveStack) -> tuple[dict[str, Path], list[Path]]:
    """The directories of the stack's state by part, and the roots whose remainder is ``other``.

    As the stack runs them: the ingest state (``settings.ingest_dir``), the training checkpoints
    (``settings.checkpoint_dir``), the served models (``settings.models_dir``), the embedded Milvus'
    directory (data, etcd and its logs) and the embedded broker's (its storage and logs). ``other``: the
    rest of the stack's work directory and state directory (the refresh worker's state, the workers' logs,
    which ``mindstream up`` keeps in its state directory too)."""
    s = stack.settings
    parts = {
        "ingest_state": s.ingest_dir,
        "checkpoints": s.checkpoint_dir,
        "models": s.models_dir,
        "milvus": stack.milvus_server.base_dir,
        "broker": stack.kafka_cluster.data_dir,
    }
    return parts, [stack.workdir, s.state_dir]


def _sampler(stack: LiveStack, env: dict[str, str], busy_activities: Sequence[str]) -> StageSampler:
    """The stage sampler on the recall worker's (``MINDSTREAM_RECALL__METRICS_PORT`` of ``env``), the
    gateway's and the refresh worker's ``/metrics``."""
    recall = f"http://127.0.0.1:{env['MINDSTREAM_RECALL__METRICS_PORT']}/metrics"
    refresh = f"http://127.0.0.1:{stack.refresh_metrics_port}/metrics"
    urls = {"kafka": recall, "http": f"{stack.http_url}/metrics", "refresh": refresh}
    return StageSampler(urls, busy_activities=busy_activities)


def run_soak(cfg: SoakConfig, workdir: Path) -> dict[str, Any]:
    ingest_port = free_port()
    env = {
        "MINDSTREAM_INGEST__METRICS_PORT": str(ingest_port),
        "MINDSTREAM_RECALL__METRICS_PORT": str(free_port()),
        **cfg.env,
    }
    stack_cfg = StackConfig(
        items=cfg.items,
        base_batches=cfg.base_batches,
        refresh_interval_s=cfg.refresh_interval_s,
        workers=("refresh", "ingest", "recall", "gateway"),
        env=env,
    )
    with LiveStack(stack_cfg, workdir) as stack:
        kafka = stack.kafka
        data = synthetic_dataset(stack.spec, seed=stack.settings.data.split_seed)
        test = external_heldout(data.test, data.vocab)
        reqs = [RecallRequest(hist_item=[h.tolist()], top_k=50) for h in test.histories if len(h)][:2000]
        stream_cfg = StreamSettings(rate=cfg.click_rate, new_items_per_s=cfg.new_items_per_s, users=50_000)
        users = np.arange(10_000_000, 10_000_000 + stream_cfg.users, dtype=np.int64)
        stream = ClickStream.from_dataset(data, users, stream_cfg)
        clicked = np.zeros(len(users), dtype=bool)  # per stream user: has clicked (only the sender writes)

        def chunk(n: int, now: float) -> Chunk:
            who, items = stream.chunk(n, now)
            clicked[who - users[0]] = True
            return who, items

        parts, other_roots = disk_parts(stack)
        conf = kafka.client_config()
        sender = StreamSender(conf, kafka.clicks_topic, cfg.click_rate, linger_ms=stream_cfg.linger_ms)
        rec = _Recorder()
        stop = StopFlag()
        client = RecallClient(kafka, stack.settings.recall)
        threads = [threading.Thread(target=sender.run, args=([("stream", chunk)], stop), daemon=True)]
        loads = contextlib.ExitStack()
        http_by = "vegeta" if cfg.generators == "process" and vegeta_binary() is not None else "thread"
        if cfg.generators == "process" and http_by == "thread":
            log.warning("vegeta not found (go install github.com/tsenart/vegeta/v12@latest): HTTP load from a thread")
        if cfg.generators == "thread":
            threads.append(
                threading.Thread(target=_kafka_load, args=(client, rec, cfg.kafka_rate, reqs, stop), daemon=True)
            )
        if http_by == "thread" and cfg.http_rate > 0:
            threads.append(
                threading.Thread(target=_http_load, args=(stack.http_url, rec, cfg.http_rate, reqs, stop), daemon=True)
            )
        wait_serving(client)  # the recall worker holds the live model (its first requests got 'unavailable')
        procs = _Processes(stack.processes())
        windows: list[dict[str, Any]] = []
        sampler = _sampler(stack, env, cfg.busy_activities).start()
        _, refresh0, hist0 = _metrics(stack, ingest_port)
        hist_start = hist0
        t0 = time.monotonic()
        for thread in threads:
            thread.start()
        if cfg.generators == "process":
            loads.enter_context(KafkaLoad(kafka, stack.settings.recall, cfg.kafka_rate, reqs, rec.sink))
            if cfg.http_rate > 0 and http_by == "vegeta":
                bodies = [r.model_dump(mode="json", exclude_none=True) for r in reqs]
                loads.enter_context(VegetaLoad(f"{stack.http_url}/rec/recall", cfg.http_rate, bodies, rec.sink))
        try:
            lo = t0
            while lo < t0 + cfg.duration_s:
                hi = min(lo + cfg.window_s, t0 + cfg.duration_s)
                time.sleep(max(0.0, hi - time.monotonic()))
                stack.check_alive()
                ingest, refresh, hist = _metrics(stack, ingest_port)
                time.sleep(min(6.0, cfg.window_s / 4))  # let the window's last requests finish
                every = sampler.intervals()
                windows.append(
                    {
                        "t_end_s": round(hi - t0, 1),
                        "kafka": {**rec.window("kafka", lo, hi), **rec.by_class("kafka", every, lo, hi)},
                        "http": {**rec.window("http", lo, hi), **rec.by_class("http", every, lo, hi)},
                        "swaps": refresh.get("mindstream_swaps_total", 0) - refresh0.get("mindstream_swaps_total", 0),
                        "live_model_age_s": refresh.get("mindstream_live_model_age_seconds"),
                        "freshness": _freshness(hist0, hist),
                        "clicks_sent": sender.sent,
                        "clicks_applied": ingest.get("mindstream_ingest_events_applied_total", 0.0),
                        "new_items_born": len(stream.births.born),
                        "processes": procs.sample(),
                        "broker_topics": _broker_topics(conf, kafka.replies_topic, stack.kafka_cluster.data_dir),
                        "users_clicked": int(clicked.sum()),
                        "disk_bytes": disk_usage(parts, other_roots),
                        "load_average": [round(x, 2) for x in os.getloadavg()],
                        **stage_summary(sampler.intervals(lo, hi)),
                    }
                )
                print(f"window {len(windows)}: {windows[-1]}", flush=True)
                refresh0, hist0, lo = refresh, hist, hi
        finally:
            stop.set("duration reached")
            loads.close()  # the load processes stop and hand back the outcomes of what they sent
            for thread in threads:
                thread.join(timeout=60)
            sampler.stop()
            procs.close()
            # requests still in flight get their answer or their timeout before the client closes:
            # closing would cut them off, and they would count as failed replies of the stack
            settle = time.monotonic() + stack.settings.recall.client_timeout_s + 2.0
            while rec.pending("kafka") > 0 and time.monotonic() < settle:
                time.sleep(0.1)
            client.close()
        drain_began = time.monotonic()
        sent = sender.sent
        while True:
            ingest, _, _ = _metrics(stack, ingest_port)
            applied = ingest.get("mindstream_ingest_events_applied_total", 0.0)
            dead = ingest.get("mindstream_clicks_invalid_total", 0.0)
            if applied + dead >= sent or time.monotonic() - drain_began > cfg.drain_s:
                break
            time.sleep(2)
        drained_s = time.monotonic() - drain_began
        rounds = stack.refresh_rounds()
        end = {
            "users_clicked": int(clicked.sum()),
            "stream_users": len(users),
            "disk_bytes_end": disk_usage(parts, other_roots),  # after the drain
        }
        run = {
            "load_generators": {"kafka": cfg.generators, "http": http_by},
            **_serving_while_busy(rec, sampler, t0, t0 + cfg.duration_s),
            "freshness_run": _freshness(hist_start, hist0),  # hist0: the last window's end
            "live_model_age_s_run": percentiles(sampler.model_ages(t0, t0 + cfg.duration_s)),  # every second
        }
    return {**_summary(cfg, windows, rec, sender, applied, dead, rounds, drained_s), **run, **end}


def _serving_while_busy(rec: _Recorder, sampler: StageSampler, lo: float, hi: float) -> dict[str, Any]:
    """The busy/quiet figures of the whole load (``[lo, hi)``): the stage table and shares of
    :func:`bench.stage_sampler.stage_summary`, and each path's p99 of busy and quiet requests."""
    every = sampler.intervals()
    out: dict[str, Any] = stage_summary(sampler.intervals(lo, hi))
    for path in ("kafka", "http"):
        for key, value in rec.by_class(path, every, lo, hi).items():
            out[f"{path}_{key}"] = value
    out["stage_sampler"] = {
        "every_s": sampler.every_s,
        "scrapes": sampler.scrapes,
        "busy_activities": sampler.busy_activities,
    }
    return out


def _ratio(first: float | None, last: float | None) -> float | None:
    return round(last / first, 3) if first and last is not None else None


def _summary(
    cfg: SoakConfig,
    windows: list[dict[str, Any]],
    rec: _Recorder,
    sender: StreamSender,
    applied: float,
    dead: float,
    rounds: list[dict[str, Any]],
    drain_s: float,
) -> dict[str, Any]:
    first, last = (windows[0], windows[-1]) if windows else ({}, {})
    kafka_first = first.get("kafka", {}).get("p99_ms")
    kafka_last = last.get("kafka", {}).get("p99_ms")
    http_first, http_last = first.get("http", {}).get("p99_ms"), last.get("http", {}).get("p99_ms")
    failed = sum(o.kind != "ok" for o in rec.outcomes["kafka"]) + (rec.sent["kafka"] - len(rec.outcomes["kafka"]))
    growth = {
        name: _ratio(first["processes"][name]["rss_mb"], last["processes"][name]["rss_mb"])
        for name in first.get("processes", {})
    }
    return {
        "config": cfg.__dict__,
        "duration_s": cfg.duration_s,
        "windows": windows,
        "kafka_requests": rec.sent["kafka"],
        "http_requests": rec.sent["http"],
        "kafka_p99_ms_first": kafka_first,
        "kafka_p99_ms_last": kafka_last,
        "kafka_p99_ratio_last_to_first": _ratio(kafka_first, kafka_last),
        "http_p99_ms_first": http_first,
        "http_p99_ms_last": http_last,
        "http_p99_ratio_last_to_first": _ratio(http_first, http_last),
        "failed_replies": failed,
        "kafka_unanswered_at_end": rec.sent["kafka"] - len(rec.outcomes["kafka"]),
        "http_failed": sum(o.kind != "ok" for o in rec.outcomes["http"]),
        "clicks_sent": sender.sent,
        "clicks_delivery_failed": sender.failed,
        "clicks_applied": applied,
        "clicks_dead_lettered": dead,
        "lost_clicks": int(sender.sent - applied - dead),
        "drain_s": round(drain_s, 1),
        "rss_growth_ratio": growth,
        "rss_growth_ratio_max": max((g for g in growth.values() if g is not None), default=None),
        "refresh_rounds": len(rounds),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = result["windows"]
    t = [x["t_end_s"] / 60 for x in w]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    for path_name in ("kafka", "http"):
        for q in ("p50_ms", "p99_ms"):
            ax.plot(t, [x[path_name][q] for x in w], marker="o", label=f"{path_name} {q[:3]}")
    ax.set(title="recall latency per window", xlabel="minutes", ylabel="ms", yscale="log")
    ax.legend()
    ax = axes[0][1]
    for label in FRESHNESS:
        ys = [(x["freshness"].get(label) or {}).get("p99_s") for x in w]
        if any(y is not None for y in ys):
            ax.plot(t, [np.nan if y is None else y for y in ys], marker="o", label=f"{label} p99")
    ax.plot(t, [x["live_model_age_s"] for x in w], marker=".", label="live model age")
    ax.set(title="freshness per window (s)", xlabel="minutes")
    ax.legend()
    ax = axes[1][0]
    for name in w[0]["processes"] if w else []:
        ax.plot(t, [x["processes"][name]["rss_mb"] for x in w], marker="o", label=name)
    ax.set(title="RSS (MB)", xlabel="minutes")
    ax.legend(fontsize=7)
    ax = axes[1][1]
    for name in w[0]["processes"] if w else []:
        ax.plot(t, [x["processes"][name]["cpu"] for x in w], marker="o", label=name)
    ax2 = ax.twinx()
    ax2.plot(t, [x["kafka"]["timeouts"] + x["kafka"]["errors"] for x in w], "k--", label="kafka failed")
    ax2.plot(t, [x["swaps"] for x in w], "k:", label="swaps")
    ax.set(title="CPU (cores) per process; failures and swaps (dashed)", xlabel="minutes")
    ax.legend(fontsize=7)
    ax2.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.soak``: the soak alone (the shared command line of :mod:`bench.soak_cli`); its
    summary and windows in ``<results>/<out>.json``, the plot beside it."""
    from bench.soak_cli import parse, soak_config, soak_parser

    args = parse(soak_parser("python -m bench.soak", __doc__.splitlines()[0] if __doc__ else "", "soak"), argv or [])
    cfg = soak_config(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop like Ctrl-C: the stack closes its processes
    with tempfile.TemporaryDirectory(prefix=f"{args.out}-", dir=args.tmpdir) as tmp:
        result = run_soak(cfg, Path(tmp))
    args.results.mkdir(parents=True, exist_ok=True)
    plot(result, args.results / f"{args.out}.png")
    write_json(args.results, args.out, {"benchmark": args.out, "machine": machine(), **result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
