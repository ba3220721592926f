"""The live system for the end-to-end benchmarks, started as ``mindstream up`` starts it.

Embedded Apache Kafka broker + embedded Milvus in the benchmark process; the refresh, ingest, recall (and
optionally gateway) workers as their own processes (``python -m workers.cli <name>``) configured
through ``MINDSTREAM_*`` environment variables. The first model is a MIND net on a synthetic
catalogue of ``items`` items (trained ``base_batches`` batches, 0 = untrained), written where the
refresh worker looks for it, so its bootstrap publishes it as ``v1``.

Also here: a sampler of the resident memory of every process of the stack (psutil), the refresh
rounds read back from the refresh worker's log, and small helpers shared by the benchmarks.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import psutil

from model.config import MindConfig, TrainConfig
from model.data.synthetic import SyntheticSpec, synthetic_dataset
from model.train import Trainer, train
from workers.infra.kafka_broker import KafkaCluster
from workers.infra.milvus_server import EmbeddedMilvus
from workers.infra.ports import free_port
from workers.infra.topics import ensure_stack_topics
from workers.infra.vector_store import VectorStore
from workers.offline import checkpoint_root
from workers.recall.client import RecallClient, RecallError
from workers.settings import KafkaSettings, MilvusSettings, Settings

WORKERS = ("refresh", "ingest", "recall", "gateway")
_CLICK = '{"schema_version":1,"event_id":"%s%d","user_id":%d,"item_id":%d,"ts":%d}'  # a ClickEvent, fast


def percentiles(values: list[float] | np.ndarray, digits: int = 2) -> dict[str, float | int | None]:
    """p50/p90/p99/max and the count; ``None`` values when there is nothing to summarise."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    return {
        "n": int(arr.size),
        **{f"p{q}": round(float(np.percentile(arr, q)), digits) for q in (50, 90, 99)},
        "max": round(float(arr.max()), digits),
    }


def catalogue_spec(items: int, users: int, seed: int = 0) -> SyntheticSpec:
    """The synthetic catalogue of the stack: ~1,000 items per interest cluster, at least 10 clusters."""
    return SyntheticSpec(
        num_users=users,
        num_items=items,
        num_clusters=max(10, min(items // 1000, 1000)),
        mean_clicks_per_user=20.0,
        seed=seed,
    )


@dataclass
class StackConfig:
    items: int = 100_000
    base_batches: int = 200
    base_users: int = 20_000
    refresh_interval_s: float = 10.0
    train_batches: int | None = None  # None: the settings' default
    workers: tuple[str, ...] = ("refresh", "ingest", "recall")
    env: dict[str, str] = field(default_factory=dict)  # extra MINDSTREAM_* overrides
    ready_timeout_s: float = 600.0


class MemorySampler:
    """Samples the RSS of every process of the stack every ``every_s``; keeps the peak per process."""

    def __init__(self, processes: dict[str, int], every_s: float = 0.5) -> None:
        self.processes = processes
        self.every_s = every_s
        self.peak_mb: dict[str, float] = {}
        self.last_mb: dict[str, float] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def sample(self) -> None:
        for name, pid in self.processes.items():
            try:
                rss = psutil.Process(pid).memory_info().rss  # the process alone, not its children
            except psutil.Error:
                continue
            mb = round(rss / 2**20, 1)
            self.last_mb[name] = mb
            self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), mb)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()
        return {
            "peak_rss_mb": dict(sorted(self.peak_mb.items())),
            "last_rss_mb": dict(sorted(self.last_mb.items())),
            "peak_rss_total_mb": round(sum(self.peak_mb.values()), 1),
            "samples": self.samples,
            "every_s": self.every_s,
        }


def write_base_model(settings: Settings, spec: SyntheticSpec, batches: int) -> dict[str, Any]:
    """The first model, where ``mindstream refresh`` looks for it (``<checkpoints>/synthetic/BEST``)."""
    began = time.perf_counter()
    root = checkpoint_root(settings, "synthetic")
    data = synthetic_dataset(spec, seed=settings.data.split_seed)
    trainer = Trainer(data.train, settings.mind, settings.train, vocab=data.vocab)
    if batches > 0:
        train(trainer, batches=batches, checkpoint_dir=None)
    trainer.checkpoint(root, {}, best=True)
    return {"base_batches": batches, "base_users": spec.num_users, "base_s": round(time.perf_counter() - began, 1)}


def section_env(env: Mapping[str, str], section: str) -> dict[str, Any]:
    """The ``MINDSTREAM_<SECTION>__*`` entries of ``env`` as that settings section's fields (the JSON of
    Milvus' ``embedded_config`` parsed), so what this process starts and creates (the embedded server, the
    topics) and its own searches see what the workers see."""
    prefix = f"MINDSTREAM_{section.upper()}__"
    fields: dict[str, Any] = {k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)}
    if section == "milvus" and "embedded_config" in fields:
        fields["embedded_config"] = json.loads(fields["embedded_config"])
    return fields


class LiveStack:
    """``with LiveStack(cfg, workdir) as stack:`` everything up, the first model live and answering."""

    def __init__(self, cfg: StackConfig, workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stack = contextlib.ExitStack()
        self.setup: dict[str, Any] = {}
        self.http_port = free_port()
        self.refresh_metrics_port = free_port()
        # the gateway's read token: HTTP recalls by user_ids (a user's history) must send it
        self.read_token = cfg.env.get("MINDSTREAM_HTTP__READ_TOKEN") or secrets.token_urlsafe(32)
        self.settings = Settings(
            state_dir=workdir / "state",
            # the workers' index (child_env) and the one this process searches with must agree
            # and the embedded server this process starts takes the configured milvus.yaml overrides
            milvus=MilvusSettings.model_validate({"index_type": "HNSW", **section_env(cfg.env, "milvus")}),
            mind=MindConfig(),
            train=TrainConfig(),
        )
        self.spec = catalogue_spec(cfg.items, cfg.base_users)

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _start(self) -> None:
        began = time.perf_counter()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.broker = self._stack.enter_context(KafkaCluster(self.workdir / "kafka"))
        self.milvus = self._stack.enter_context(
            EmbeddedMilvus(
                self.workdir / "milvus",
                port=free_port(),
                config=self.settings.milvus.embedded_config,
                search_nice=self.settings.milvus.embedded_search_nice,
            )
        )
        # The topics are created here, before any worker starts: with the retention the workers are given
        # (a worker finding them created leaves their configs as they are).
        self.kafka = KafkaSettings.model_validate(
            {**section_env(self.cfg.env, "kafka"), "bootstrap_servers": self.broker.bootstrap}
        )
        self.settings = self.settings.model_copy(update={"kafka": self.kafka})
        ensure_stack_topics(self.kafka.client_config(), self.kafka)
        self.setup.update(write_base_model(self.settings, self.spec, self.cfg.base_batches))
        self.store = self._stack.enter_context(VectorStore(self.milvus.uri, self.settings.milvus))
        env = self.child_env()
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        for name in self.cfg.workers:
            with (logs / f"{name}.log").open("wb") as out:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "workers.cli", name],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        self.wait_ready()
        self.setup["startup_s"] = round(time.perf_counter() - began, 1)

    def child_env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "MINDSTREAM_STATE_DIR": str(self.settings.state_dir.resolve()),
            "MINDSTREAM_KAFKA__BOOTSTRAP_SERVERS": self.broker.bootstrap,
            "MINDSTREAM_MILVUS__URI": self.milvus.uri,
            "MINDSTREAM_MILVUS__INDEX_TYPE": self.settings.milvus.index_type,
            "MINDSTREAM_DATA__DATASET": "synthetic",
            "MINDSTREAM_REFRESH__INTERVAL_S": str(self.cfg.refresh_interval_s),
            # The quality gate's held-out users come from the default synthetic data set, not from this
            # catalogue: a gate on them would measure nothing here. Freshness is what is measured.
            "MINDSTREAM_REFRESH__QUALITY_USERS": "0",
            "MINDSTREAM_REFRESH__GRACE_PERIOD_S": "5",
            "MINDSTREAM_HTTP__PORT": str(self.http_port),
            "MINDSTREAM_HTTP__READ_TOKEN": self.read_token,
            "MINDSTREAM_REFRESH__METRICS_PORT": str(self.refresh_metrics_port),
            "MINDSTREAM_LOG_LEVEL": "INFO",
        }
        if self.cfg.train_batches is not None:
            env["MINDSTREAM_REFRESH__TRAIN_BATCHES"] = str(self.cfg.train_batches)
        env.update(self.cfg.env)
        return env

    def wait_ready(self) -> None:
        """The first model live (refresh bootstrapped it), and each serving worker answering."""
        deadline = time.monotonic() + self.cfg.ready_timeout_s
        while self.live() is None:
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError("no live model: see the refresh log")
            time.sleep(0.5)
        if "gateway" in self.cfg.workers:
            while not self._http_ready():
                self.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError("gateway not ready")
                time.sleep(0.5)

    def _http_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = self.log_tail(name)
                raise RuntimeError(f"worker {name} exited with {proc.returncode}:\n{tail}")

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def close(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.setup["exit_codes"] = {n: p.returncode for n, p in self.procs.items()}
        self._stack.close()

    # -- observations ------------------------------------------------------------------------------

    @property
    def alias(self) -> str:
        return self.settings.milvus.alias

    def live(self) -> str | None:
        try:
            return self.store.resolve_alias(self.alias) if hasattr(self, "store") else None
        except Exception:
            return None

    def generation(self, collection: str) -> int:
        """The fast-path generation announced for ``collection`` (0 when none)."""
        from workers.refresh.generations import announced_generation

        return announced_generation(self.store, collection)

    def live_version(self, collection: str) -> str | None:
        """The version served from ``collection``: announced there by a delta, else the one it is named after."""
        from workers.refresh.generations import Generations
        from workers.refresh.registry import ModelRegistry

        announced = Generations.load(self.store, collection).version
        return announced or ModelRegistry(self.settings.models_dir, self.alias).version_of(collection)

    def versions_served(self, collection: str) -> set[str]:
        """Every version served from ``collection``: the one it is named after and those announced there."""
        from workers.refresh.generations import Generations
        from workers.refresh.registry import ModelRegistry

        state = Generations.load(self.store, collection)
        own = ModelRegistry(self.settings.models_dir, self.alias).version_of(collection)
        return {v for v in (own, state.version, *(v for _, v in state.history)) if v is not None}

    def live_created_at(self, collection: str) -> float | None:
        """When the model version served from ``collection`` was built (its checkpoint manifest)."""
        from workers.refresh.registry import ModelRegistry

        registry = ModelRegistry(self.settings.models_dir, self.alias)
        version = self.live_version(collection)
        try:
            return registry.checkpoint(version).manifest.created_at if version else None
        except FileNotFoundError:
            return None

    def trigger_refresh(self) -> None:
        """What ``mindstream refresh --now`` does: the running loop starts a round on its next poll."""
        from workers.refresh.worker import request_refresh

        request_refresh(self.store, self.alias)

    def processes(self) -> dict[str, int]:
        pids = {name: p.pid for name, p in self.procs.items()}
        if (pid := self.milvus.pid) is not None:
            pids["milvus"] = pid
        if (pid := self.broker.pid(1)) is not None:
            pids["broker"] = pid
        pids["bench"] = os.getpid()
        return pids

    def refresh_phase_totals(self) -> dict[str, dict[str, float]]:
        """Per phase (train included) from the refresh worker's Prometheus histogram: count, mean seconds."""
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.refresh_metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                phase = sample.labels.get("phase")
                if phase and sample.name == "mindstream_refresh_phase_seconds_sum":
                    sums[phase] = sample.value
                elif phase and sample.name == "mindstream_refresh_phase_seconds_count":
                    counts[phase] = sample.value
        return {
            ph: {"count": int(counts[ph]), "mean_s": round(sums.get(ph, 0.0) / counts[ph], 3)}
            for ph in sorted(counts)
            if counts[ph]
        }

    def refresh_rounds(self) -> list[dict[str, Any]]:
        """The refresh worker's ``refresh round: {...}`` log lines, parsed."""
        path = self.workdir / "logs" / "refresh.log"
        rounds = []
        for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
            _, sep, rest = line.partition("refresh round: ")
            if sep:
                with contextlib.suppress(ValueError, SyntaxError):
                    rounds.append(ast.literal_eval(rest.strip()))
        return rounds


def phase_summary(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Per refresh phase (export, insert, index, verify, swap): p50/p90/p99/max over the rounds, seconds."""
    phases: dict[str, list[float]] = {}
    for r in rounds:
        for phase, seconds in (r.get("phases") or {}).items():
            phases.setdefault(phase, []).append(float(seconds))
        total = sum(float(s) for s in (r.get("phases") or {}).values())
        if total:
            phases.setdefault("publish_total", []).append(total)
    return {k: percentiles(v, 3) for k, v in phases.items()}


def wait_serving(client: RecallClient, timeout_s: float = 120.0) -> None:
    """Until the recall worker answers with a live model (it replies 'unavailable' before the refresh
    worker published the first one)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.recall(hist_item=[[1, 2, 3]], timeout=60)
            return
        except RecallError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


class ClickStreamer:
    """Synthetic clicks on the clicks topic at a fixed rate, with brand-new items appearing over time.

    Every ``new_item_every_s`` (while ``new_items_open``) a new item id (past the catalogue) is born
    in a random interest cluster; for ``new_item_active_s`` after that, a click on that cluster is
    redirected to the new item with probability ``new_item_share``. ``first_click`` and
    ``clickers`` record, per new item, the monotonic time of its first click and its latest clickers.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        spec: SyntheticSpec,
        rate: float,
        *,
        new_item_every_s: float = 0.0,
        new_item_share: float = 0.3,
        new_item_active_s: float = 30.0,
        seed: int = 1,
    ) -> None:
        from model.data.synthetic import item_clusters

        self.kafka = kafka
        self.spec = spec
        self.rate = rate
        self.new_item_every_s = new_item_every_s
        self.new_item_share = new_item_share
        self.new_item_active_s = new_item_active_s
        self.seed = seed
        self.prefix = f"b{seed}-{os.getpid()}-{int(time.time())}-"  # event ids unique across streamers
        self.rng = np.random.default_rng(seed)
        self.clusters = item_clusters(spec)
        self.sent = 0
        self.behind_max = 0
        self.new_items_open = threading.Event()
        self.new_items_open.set()
        self.born: dict[int, float] = {}
        self.first_click: dict[int, float] = {}
        self.clickers: dict[int, list[int]] = {}
        self.last_click: tuple[int, int, float] | None = None  # (user, item, time.time() when produced)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="click-streamer", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _events(self) -> Any:
        from model.data.synthetic import iter_events

        # A stream long enough for any run: users are generated lazily, batch by batch.
        stream = SyntheticSpec(**{**self.spec.__dict__, "num_users": 10_000_000, "seed": self.spec.seed + self.seed})
        for chunk in iter_events(stream, chunk_size=10_000):
            yield from zip(chunk.user_ids.tolist(), chunk.item_ids.tolist(), strict=True)

    def _run(self) -> None:
        from workers.infra.kafka import make_producer

        producer = make_producer(self.kafka.client_config(), {"linger.ms": 5})
        topic = self.kafka.clicks_topic
        events = self._events()
        next_id = self.spec.num_items + 1
        active: dict[int, tuple[int, float]] = {}  # cluster -> (new item, born at)
        t0 = time.monotonic()
        next_birth = t0
        while not self._stop.wait(0.01):
            now = time.monotonic()
            if self.new_item_every_s > 0 and self.new_items_open.is_set() and now >= next_birth:
                cluster = int(self.rng.integers(0, self.spec.num_clusters))
                active[cluster] = (next_id, now)
                with self.lock:
                    self.born[next_id] = now
                next_id += 1
                next_birth += self.new_item_every_s
            active = {c: (i, b) for c, (i, b) in active.items() if now - b < self.new_item_active_s}
            due = int((now - t0) * self.rate) - self.sent
            self.behind_max = max(self.behind_max, due)
            wall_ms = int(time.time() * 1000)
            for _ in range(max(due, 0)):
                user, item = next(events)
                new = active.get(int(self.clusters[item]))
                if new is not None and self.rng.random() < self.new_item_share:
                    item = new[0]
                    with self.lock:
                        self.first_click.setdefault(item, time.monotonic())
                        self.clickers.setdefault(item, []).append(user)
                body = _CLICK % (self.prefix, self.sent, user, item, wall_ms)
                while True:
                    try:
                        producer.produce(topic, key=str(user).encode(), value=body.encode())
                        break
                    except BufferError:
                        producer.poll(0.01)
                self.sent += 1
                self.last_click = (user, item, time.time())
            producer.poll(0)
        producer.flush(10)
