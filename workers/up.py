"""``mindstream up``: the whole live system on one machine, on embedded defaults.

Embedded Tansu broker + embedded Milvus (or the configured external ones) -> first model trained
(or reused) -> ingest, refresh, recall and HTTP gateway workers as supervised processes -> held-out
users' clicks replayed as a live stream, with recall requests alongside -> a progress line.
Ctrl-C (or ``mindstream down``) stops everything; the state directory is kept for the next start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path

from confluent_kafka import Producer

from model.checkpoint import open_checkpoint
from model.export import external_heldout
from workers.infra.kafka import ensure_topics, make_producer
from workers.infra.milvus_server import open_milvus
from workers.infra.tansu import open_kafka
from workers.offline import checkpoint_root, load, run_train
from workers.recall.client import RecallClient
from workers.replay import Replayer, held_out_clicks
from workers.runtime import StopFlag, stop_on_signals
from workers.settings import Settings
from workers.status import quantile, scrape
from workers.supervisor import Child, Supervisor

log = logging.getLogger(__name__)

METRICS_PORTS = {"ingest": 9101, "refresh": 9102, "recall": 9103}  # ops/prometheus/prometheus.local.yml


def pid_file(settings: Settings) -> Path:
    return settings.state_dir / "up.pid"


def _child_env(settings: Settings, bootstrap: str, milvus_uri: str) -> dict[str, str]:
    env = dict(os.environ)
    env["MINDSTREAM_KAFKA__BOOTSTRAP_SERVERS"] = bootstrap
    env["MINDSTREAM_MILVUS__URI"] = milvus_uri
    env["MINDSTREAM_STATE_DIR"] = str(settings.state_dir.resolve())
    for name, port in METRICS_PORTS.items():
        env.setdefault(f"MINDSTREAM_{name.upper()}__METRICS_PORT", str(port))
    return env


def _children(settings: Settings, env: dict[str, str]) -> list[Child]:
    logs = settings.state_dir / "logs"
    names = ["refresh", "ingest", "recall", "gateway"]
    return [Child(name, [name], env, logs / f"{name}.log") for name in names]


class _RecallProbe:
    """Sends recall requests for replayed users at a steady rate and keeps recent latencies."""

    def __init__(self, client: RecallClient, histories: list[list[int]], rate: float) -> None:
        self.client = client
        self.histories = histories
        self.rate = rate
        self.latencies: deque[float] = deque(maxlen=2000)
        self.errors = 0
        self.versions: set[str] = set()

    def run(self, stop: StopFlag, live: threading.Event) -> None:
        while not live.is_set():  # no requests before the first live model: they could only fail
            if stop.wait(0.2):
                return
        i = 0
        while not stop.wait(1.0 / self.rate):
            began = time.perf_counter()
            try:
                reply = self.client.recall(hist_item=[self.histories[i % len(self.histories)]], top_k=50)
                self.latencies.append((time.perf_counter() - began) * 1000)
                self.versions.add(reply.model_version)
            except Exception as exc:
                self.errors += 1
                log.debug("recall probe: %s", exc)
            i += 1


def _progress(replayer: Replayer, probe: _RecallProbe, began: float, live: threading.Event) -> str:
    ingest = scrape(f"http://127.0.0.1:{METRICS_PORTS['ingest']}/metrics")
    refresh = scrape(f"http://127.0.0.1:{METRICS_PORTS['refresh']}/metrics")
    p99 = quantile(list(probe.latencies), 0.99)
    version = refresh.get("mindstream_live_model_version") or None
    age = refresh.get("mindstream_live_model_age_seconds")
    if version is not None:
        live.set()
    return (
        f"[{time.monotonic() - began:5.0f}s] sent {replayer.sent:,} | applied "
        f"{ingest.get('mindstream_ingest_events_applied_total', 0):,.0f} | dlq "
        f"{ingest.get('mindstream_dlq_messages_total', 0):,.0f} | live v{version:.0f} age {age:.0f}s"
        if version is not None and age is not None
        else f"[{time.monotonic() - began:5.0f}s] sent {replayer.sent:,} | waiting for the first live model"
    ) + (
        f" | swaps {refresh.get('mindstream_swaps_total', 0):.0f} | recall p99 "
        + (f"{p99:.1f} ms" if p99 is not None else "-")
        + f" errors {probe.errors}"
    )


def run_up(settings: Settings, *, rate: float, recall_rate: float, retrain: bool, duration_s: float | None) -> int:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    pid_file(settings).write_text(str(os.getpid()))
    dataset = load(settings)
    root = checkpoint_root(settings, dataset.name)
    if retrain or not (root / "BEST").exists():
        log.info("training the first model on %s (%d batches)", dataset.name, settings.train.batches)
        run_train(settings, dataset=dataset, resume=False)
    log.info("base model: %s", open_checkpoint(root, "best").manifest.version)
    with contextlib.ExitStack() as stack:
        bootstrap = stack.enter_context(open_kafka(settings.kafka, log_path=settings.state_dir / "logs" / "tansu.log"))
        milvus_uri = stack.enter_context(open_milvus(settings.milvus, settings.milvus_dir))
        conf = settings.kafka.client_config(bootstrap)
        kafka = settings.kafka
        ensure_topics(conf, [kafka.clicks_topic, kafka.clicks_dlq_topic, kafka.requests_topic, kafka.replies_topic])
        supervisor = Supervisor(_children(settings, _child_env(settings, bootstrap, milvus_uri)))
        stack.callback(supervisor.stop)
        supervisor.start()
        producer: Producer = make_producer(conf)
        client = stack.enter_context(RecallClient(kafka, settings.recall, bootstrap=bootstrap))
        replayer = Replayer(producer, kafka.clicks_topic, rate)
        # the stream and the requests speak the catalogue's item ids, not the model's rows
        valid, test = (external_heldout(h, dataset.vocab) for h in (dataset.valid, dataset.test))
        histories = [h.tolist() for h in test.histories if len(h)]
        probe = _RecallProbe(client, histories, recall_rate)
        print_urls(settings)
        stop = stack.enter_context(stop_on_signals(StopFlag()))
        live = threading.Event()
        threads = [
            threading.Thread(
                target=replayer.run, args=(held_out_clicks(valid, test), stop), daemon=True
            ),
            threading.Thread(target=probe.run, args=(stop, live), daemon=True),
        ]
        for thread in threads:
            thread.start()
        began = time.monotonic()
        while not stop.wait(2.0):
            supervisor.check()
            sys.stderr.write(_progress(replayer, probe, began, live) + "\n")
            if duration_s is not None and time.monotonic() - began >= duration_s:
                stop.set("duration reached")
        log.info(
            "stopping (%s): workers, then Milvus and the broker; state kept in %s", stop.reason, settings.state_dir
        )
        for thread in threads:
            thread.join(timeout=15)
    pid_file(settings).unlink(missing_ok=True)
    return 0


def print_urls(settings: Settings) -> None:
    base = f"http://{settings.http.host}:{settings.http.port}"
    lines = ["mindstream is up. Where to look:", f"  API docs      {base}/docs", f"  gateway       {base}/metrics"]
    lines += [f"  {name:<13} http://127.0.0.1:{port}/metrics" for name, port in METRICS_PORTS.items()]
    lines += [f"  worker logs   {settings.state_dir / 'logs'}", "  stop          Ctrl-C, or: mindstream down"]
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
