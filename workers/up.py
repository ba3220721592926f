"""``mindstream up``: the whole live system on one machine, on embedded defaults.

Embedded Apache Kafka broker + embedded Milvus (or the configured external ones) -> first model trained
(or reused) -> ingest, catalogue, refresh, recall and HTTP gateway workers as supervised processes -> held-out
users' clicks replayed as a live stream, then a continuous stream over the same catalogue (drifting
users, new items, bursts: ``workers.stream``), with recall requests alongside -> a progress line.
Ctrl-C (or ``mindstream down``) stops everything; the state directory is kept for the next start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import SecretStr

from model.checkpoint import open_checkpoint
from model.data.types import Dataset, IntArray
from model.export import external_heldout
from schemas.messages import DEFAULT_TOP_K
from workers.offline import checkpoint_root, load, run_train
from workers.recall.client import RecallClient
from workers.replay import held_out_clicks
from workers.runtime import StopFlag, stop_on_signals
from workers.settings import Settings
from workers.stack import METRICS_WORKERS, Stack
from workers.status import Buckets, quantile, scrape, scrape_histograms, window_quantile
from workers.stream import ClickStream, StreamSender, chunks_of

log = logging.getLogger(__name__)


def pid_file(settings: Settings) -> Path:
    return settings.state_dir / "up.pid"


class _Latencies:
    """Recent latencies (ms) with their time, errors counted; ``window(s)`` = what the last s seconds saw."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=200_000)
        self.errors: deque[float] = deque(maxlen=200_000)
        self.versions: set[str] = set()

    def ok(self, ms: float, version: str) -> None:
        self.samples.append((time.monotonic(), ms))
        self.versions.add(version)

    def error(self) -> None:
        self.errors.append(time.monotonic())

    def window(self, seconds: float) -> tuple[list[float], int]:
        since = time.monotonic() - seconds
        return [ms for t, ms in list(self.samples) if t >= since], sum(1 for t in list(self.errors) if t >= since)


class _RecallProbe:
    """Sends recall requests (over Kafka, or over HTTP) for replayed users' histories at a steady rate."""

    def __init__(self, send: Callable[[list[int]], str], histories: list[list[int]], rate: float) -> None:
        self.send = send
        self.histories = histories
        self.rate = rate
        self.latencies = _Latencies()

    def run(self, stop: StopFlag, live: threading.Event) -> None:
        while not live.is_set():  # no requests before the first live model: they could only fail
            if stop.wait(0.2):
                return
        i = 0
        while not stop.wait(1.0 / self.rate):
            began = time.perf_counter()
            try:
                version = self.send(self.histories[i % len(self.histories)])
                self.latencies.ok((time.perf_counter() - began) * 1000, version)
            except Exception as exc:
                self.latencies.error()
                log.debug("recall probe: %s", exc)
            i += 1


def _kafka_send(client: RecallClient) -> Callable[[list[int]], str]:
    def send(history: list[int]) -> str:
        return client.recall(hist_item=[history], top_k=DEFAULT_TOP_K).model_version

    return send


def _http_send(base_url: str, timeout_s: float) -> Callable[[list[int]], str]:
    def send(history: list[int]) -> str:
        body = json.dumps({"hist_item": [history], "top_k": DEFAULT_TOP_K}).encode()
        request = urllib.request.Request(
            f"{base_url}/rec/recall", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return str(json.loads(response.read())["model_version"])

    return send


FRESHNESS = {  # progress-line label -> (worker, histogram); absent histograms are left out
    "user": ("ingest", "mindstream_freshness_user_seconds"),
    "new item": ("refresh", "mindstream_freshness_new_item_seconds"),
    "click->version": ("refresh", "mindstream_freshness_click_to_version_seconds"),
}


class _Progress:
    """The progress line: counts since the start, freshness and recall latency over the last window."""

    def __init__(self, stack: Stack, sender: StreamSender, probes: dict[str, _RecallProbe], window_s: float) -> None:
        self.urls = {w: stack.metrics_url(w) for w in ("ingest", "refresh")}
        self.sender = sender
        self.probes = probes
        self.window_s = window_s
        self.began = time.monotonic()
        self.snapshots: deque[tuple[float, dict[str, Buckets]]] = deque()
        self.applied = 0.0  # as last scraped: the stop's summary line reports them
        self.version: float | None = None

    def _freshness(self) -> str:
        now = time.monotonic()
        current = {w: scrape_histograms(url) for w, url in self.urls.items()}
        self.snapshots.append((now, current))
        while len(self.snapshots) > 1 and self.snapshots[1][0] <= now - self.window_s:
            self.snapshots.popleft()
        before = self.snapshots[0][1]
        parts = []
        for label, (worker, name) in FRESHNESS.items():
            after = current[worker].get(name)
            if after is None:
                continue
            p99 = window_quantile(before.get(worker, {}).get(name, []), after, 0.99)
            parts.append(f"{label} p99 " + ("-" if p99 is None else f"<={p99:g}s"))
        return " | fresh " + ", ".join(parts) if parts else ""

    def line(self, live: threading.Event) -> str:
        ingest, refresh = scrape(self.urls["ingest"]), scrape(self.urls["refresh"])
        version = refresh.get("mindstream_live_model_version") or None
        age = refresh.get("mindstream_live_model_age_seconds")
        self.applied = ingest.get("mindstream_ingest_events_applied_total", self.applied)
        if version is not None:
            self.version = version
            live.set()
        head = f"[{time.monotonic() - self.began:5.0f}s] {self.sender.phase} sent {self.sender.sent:,}"
        if version is None or age is None:
            return head + " | waiting for the first live model"
        text = (
            f"{head} | applied {ingest.get('mindstream_ingest_events_applied_total', 0):,.0f} | dlq "
            f"{ingest.get('mindstream_dlq_messages_total', 0):,.0f} | live v{version:.0f} age {age:.0f}s | swaps "
            f"{refresh.get('mindstream_swaps_total', 0):.0f}"
        )
        text += self._freshness()
        for name, probe in self.probes.items():
            window, errors = probe.latencies.window(self.window_s)
            p99 = quantile(window, 0.99)
            text += f" | {name} p99 " + (f"{p99:.0f} ms" if p99 is not None else "-") + f" err {errors}"
        return text + f" (last {self.window_s:.0f}s)"


def ensure_admin_token(settings: Settings) -> tuple[str, bool]:
    """The local stack's admin token: the configured one, else the state dir's (created 0600 once)."""
    return _ensure_token(settings.http.admin_token, settings.admin_token_file)


def ensure_read_token(settings: Settings) -> tuple[str, bool]:
    """The local stack's read token (a user's history over HTTP): the configured one, else the state dir's."""
    return _ensure_token(settings.http.read_token, settings.read_token_file)


def _ensure_token(configured: SecretStr | None, path: Path) -> tuple[str, bool]:
    """``(token, created now)``: ``configured`` when set, else the one in ``path`` (created 0600 once)."""
    if configured is not None and configured.get_secret_value():
        return configured.get_secret_value(), False
    if path.exists():
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token, True


def _stream_users(dataset: Dataset, held_out: list[int], wanted: int) -> IntArray:
    """The replayed users first (they carry on), then fresh ids past every user of the data set."""
    known = [int(u) for u in dataset.train.user_ids] + held_out
    first_new = max(known, default=0) + 1
    extra = max(0, wanted - len(held_out))
    return np.asarray(held_out[:wanted] + list(range(first_new, first_new + extra)), dtype=np.int64)


def run_up(
    settings: Settings,
    *,
    rate: float,
    recall_rate: float,
    retrain: bool,
    duration_s: float | None,
    http_rate: float = 0.0,
    new_items_per_s: float | None = None,
    replay: bool = True,
) -> int:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    pid_file(settings).write_text(str(os.getpid()))
    stream_cfg = settings.stream.model_copy(
        update={
            "rate": rate,
            "new_items_per_s": settings.stream.new_items_per_s if new_items_per_s is None else new_items_per_s,
        }
    )
    dataset = load(settings)
    root = checkpoint_root(settings, dataset.name)
    if retrain or not (root / "BEST").exists():
        log.info("training the first model on %s (%d batches)", dataset.name, settings.train.batches)
        run_train(settings, dataset=dataset, resume=False)
    log.info("base model: %s", open_checkpoint(root, "best").manifest.version)
    token, created = ensure_admin_token(settings)
    read_token, read_created = ensure_read_token(settings)
    http = settings.http.model_copy(update={"admin_token": SecretStr(token), "read_token": SecretStr(read_token)})
    with contextlib.ExitStack() as stack:
        live = stack.enter_context(
            Stack(
                settings.model_copy(update={"http": http}),
                metrics_ports=settings.supervisor.metrics_ports,
                wait_ready=False,  # the progress line says when the first model is live
            )
        )
        kafka = live.settings.kafka
        conf = kafka.client_config()
        client = stack.enter_context(RecallClient(kafka, settings.recall))
        # the stream and the requests speak the catalogue's item ids, not the model's rows
        valid, test = (external_heldout(h, dataset.vocab) for h in (dataset.valid, dataset.test))
        histories = [h.tolist() for h in test.histories if len(h)]
        held_out = [int(u) for held in (valid, test) for u in held.user_ids]
        stream = ClickStream.from_dataset(dataset, _stream_users(dataset, held_out, stream_cfg.users), stream_cfg)
        sender = StreamSender(conf, kafka.clicks_topic, rate, linger_ms=stream_cfg.linger_ms)
        sources = [("replay", chunks_of(held_out_clicks(valid, test)))] if replay else []
        sources.append(("stream", stream.chunk))
        probes = {}
        if recall_rate > 0:
            probes["kafka"] = _RecallProbe(_kafka_send(client), histories, recall_rate)
        if http_rate > 0:
            probes["http"] = _RecallProbe(
                _http_send(live.http_url, settings.recall.client_timeout_s), histories, http_rate
            )
        print_urls(live)
        print_admin_token(settings, token, created)
        print_read_token(settings, read_token, read_created)
        stop = stack.enter_context(stop_on_signals(StopFlag()))
        serving = threading.Event()
        threads = [threading.Thread(target=sender.run, args=(sources, stop), daemon=True)]
        threads += [threading.Thread(target=p.run, args=(stop, serving), daemon=True) for p in probes.values()]
        for thread in threads:
            thread.start()
        progress = _Progress(live, sender, probes, stream_cfg.window_s)
        while not stop.wait(2.0):
            live.supervise()
            sys.stderr.write(
                progress.line(serving) + f" | new items {len(stream.births.born)}, bursts {stream.bursts}\n"
            )
            if duration_s is not None and time.monotonic() - progress.began >= duration_s:
                stop.set("duration reached")
        log.info("stopping (%s): the load, the workers, then Milvus and the broker", stop.reason)
        for thread in threads:
            thread.join(timeout=35)
    pid_file(settings).unlink(missing_ok=True)
    live_text = f"v{progress.version:.0f}" if progress.version is not None else "none"
    sys.stderr.write(
        f"mindstream stopped ({stop.reason}) after {time.monotonic() - progress.began:.0f} s: "
        f"{sender.sent:,} clicks sent, {progress.applied:,.0f} applied, live model {live_text}; "
        f"state kept in {settings.state_dir}\n"
    )
    return 0


def print_admin_token(settings: Settings, token: str, created: bool) -> None:
    """Printed once, when created; later starts say where it is."""
    base = f"http://{settings.http.host}:{settings.http.port}"
    if created:
        sys.stderr.write(
            f"  admin token   {token}\n"
            f"                (created once, kept in {settings.admin_token_file}, mode 0600); use it as:\n"
            f"                curl -X POST {base}/rec/insert_data "
            f'-H "Authorization: Bearer $(cat {settings.admin_token_file})"\n'
        )
    elif settings.http.admin_token is None:
        sys.stderr.write(f"  admin token   in {settings.admin_token_file} (Authorization: Bearer <token>)\n")


def print_read_token(settings: Settings, token: str, created: bool) -> None:
    """As :func:`print_admin_token`, for the token that opens a user's history (``user_ids``, the page's user id)."""
    base = f"http://{settings.http.host}:{settings.http.port}"
    if created:
        sys.stderr.write(
            f"  read token    {token}\n"
            f"                (created once, kept in {settings.read_token_file}, mode 0600): a user's history, for\n"
            f"                /ui's Explore by user id, or: curl {base}/rec/recall -H 'Content-Type: application/json' "
            f'-H "Authorization: Bearer $(cat {settings.read_token_file})" -d \'{{"user_ids": [1]}}\'\n'
        )
    elif settings.http.read_token is None:
        where = settings.read_token_file
        sys.stderr.write(f"  read token    in {where} (a user's history: Authorization: Bearer <token>)\n")


def print_urls(stack: Stack) -> None:
    base = stack.http_url
    lines = ["mindstream is up. Where to look:", f"  the page      {base}/ui  (live system, recommendations by title)"]
    lines += [f"  API docs      {base}/docs", f"  gateway       {base}/metrics"]
    lines += [f"  kafka         {stack.bootstrap} (bootstrap.servers for your own producers and consumers)"]
    lines += [f"  {name:<13} {stack.metrics_url(name)}" for name in METRICS_WORKERS]
    lines += [f"  worker logs   {stack.logs_dir}", "  stop          Ctrl-C, or: mindstream down"]
    sys.stderr.write("\n".join(lines) + "\n")


def down(settings: Settings) -> int:
    """Ask a running ``mindstream up`` (same state directory) to stop."""
    path = pid_file(settings)
    if not path.exists():
        sys.stderr.write(f"nothing to stop: no {path}\n")
        return 1
    pid = int(path.read_text().strip())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        sys.stderr.write(f"process {pid} is gone; removed the stale {path}\n")
        return 1
    for _ in range(120):
        time.sleep(0.5)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return 0
    sys.stderr.write(f"process {pid} still running after 60 s\n")
    return 1
