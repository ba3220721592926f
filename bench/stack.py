"""The live system for the end-to-end benchmarks, started as ``mindstream up`` starts it.

:class:`workers.stack.Stack`, the launcher of ``mindstream up``: embedded Apache Kafka broker + embedded
Milvus in the benchmark process; the refresh, ingest, recall (and optionally gateway) workers as their
own processes (``python -m workers.cli <name>``) configured only by the ``MINDSTREAM_*`` variables the
settings render (:func:`stack_settings`: the stack's choices, then ``StackConfig.env``). The first model
is a MIND net on a synthetic catalogue of ``items`` items (trained ``base_batches`` batches, 0 = untrained),
written where the refresh worker looks for it, so its bootstrap publishes it as ``v1``.

Also here: a sampler of the resident memory of every process of the stack (psutil), the refresh
rounds read back from the refresh worker's log, and small helpers shared by the benchmarks.
"""

from __future__ import annotations

import ast
import contextlib
import os
import secrets
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import psutil

from model.data.synthetic import SyntheticSpec, synthetic_dataset
from model.train import Trainer, train
from workers.infra.kafka_broker import KafkaCluster
from workers.infra.milvus_server import EmbeddedMilvus
from workers.infra.vector_store import VectorStore
from workers.offline import checkpoint_root
from workers.recall.client import RecallClient, RecallError
from workers.settings import ENV_PREFIX, KafkaSettings, Settings
from workers.stack import Stack, on_free_ports

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
    ready_timeout_s: float | None = None  # None: the settings' (supervisor.ready_timeout_s)


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


def stack_settings(cfg: StackConfig, workdir: Path, read_token: str) -> Settings:
    """The benchmark stack's settings: this process's ``MINDSTREAM_*``, then the stack's own choices (HNSW,
    the synthetic catalogue, free ports ...), then ``cfg.env`` on top. The workers are given exactly these
    (``Settings.to_env``), and this process's searches, topics and embedded servers follow them too."""
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    env |= {
        "MINDSTREAM_STATE_DIR": str((workdir / "state").resolve()),
        "MINDSTREAM_MILVUS__INDEX_TYPE": "HNSW",
        "MINDSTREAM_DATA__DATASET": "synthetic",
        "MINDSTREAM_REFRESH__INTERVAL_S": str(cfg.refresh_interval_s),
        # The quality gate's held-out users come from the default synthetic data set, not from this
        # catalogue: a gate on them would measure nothing here. Freshness is what is measured.
        "MINDSTREAM_REFRESH__QUALITY_USERS": "0",
        "MINDSTREAM_REFRESH__GRACE_PERIOD_S": "5",
        "MINDSTREAM_HTTP__READ_TOKEN": read_token,
        "MINDSTREAM_LOG_LEVEL": "INFO",
    }
    if cfg.train_batches is not None:
        env["MINDSTREAM_REFRESH__TRAIN_BATCHES"] = str(cfg.train_batches)
    chosen = Settings.from_env(env | cfg.env)
    # the ports cfg.env does not fix are free ones: a benchmark may run beside `mindstream up`
    free = on_free_ports(chosen)
    pinned = {key for key in cfg.env if key.endswith("_PORT")}
    return chosen.model_copy(
        update={
            "kafka": chosen.kafka if "MINDSTREAM_KAFKA__EMBEDDED_PORT" in pinned else free.kafka,
            "milvus": chosen.milvus if "MINDSTREAM_MILVUS__EMBEDDED_PORT" in pinned else free.milvus,
            "http": chosen.http if "MINDSTREAM_HTTP__PORT" in pinned else free.http,
        }
    )


class LiveStack(Stack):
    """``with LiveStack(cfg, workdir) as stack:`` everything up, the first model live and answering.

    A thin layer on :class:`workers.stack.Stack` (what ``mindstream up`` runs): it adds the synthetic
    catalogue's first model before the workers start, and the benchmarks' observations."""

    def __init__(self, cfg: StackConfig, workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.setup: dict[str, Any] = {}
        # the gateway's read token: HTTP recalls by user_ids (a user's history) must send it
        self.read_token = cfg.env.get("MINDSTREAM_HTTP__READ_TOKEN") or secrets.token_urlsafe(32)
        self.spec = catalogue_spec(cfg.items, cfg.base_users)
        settings = stack_settings(cfg, workdir, self.read_token)
        super().__init__(settings, cfg.workers, logs_dir=workdir / "logs", ready_timeout_s=cfg.ready_timeout_s)

    def start(self) -> None:
        """The first model, then broker, Milvus, topics (with the retention the workers are given) and the
        workers, until every one is ready (the refresh worker: once the first model is live)."""
        began = time.perf_counter()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.setup.update(write_base_model(self.settings, self.spec, self.cfg.base_batches))
        super().start()
        self.kafka = self.settings.kafka
        self.store = VectorStore(self.milvus_uri, self.settings.milvus)
        self.setup["startup_s"] = round(time.perf_counter() - began, 1)

    @property
    def kafka_cluster(self) -> KafkaCluster:
        assert self.broker is not None, "the stack runs its own broker"
        return self.broker

    @property
    def milvus_server(self) -> EmbeddedMilvus:
        assert self.milvus is not None, "the stack runs its own Milvus"
        return self.milvus

    @property
    def refresh_metrics_port(self) -> int:
        port = self.settings.refresh.metrics_port
        assert port is not None, "the stack gives every worker a metrics port"
        return port

    def close(self) -> None:
        if hasattr(self, "store"):
            self.store.close()
        super().close()
        self.setup["exit_codes"] = {c.name: c.proc.returncode for c in self.children.values() if c.proc is not None}

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
        pids = self.pids
        if (pid := self.milvus_server.pid) is not None:
            pids["milvus"] = pid
        if (pid := self.kafka_cluster.pid(1)) is not None:
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
        path = self.log_path("refresh")
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
