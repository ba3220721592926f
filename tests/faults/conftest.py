"""Fault-injection helpers: workers as real subprocesses (so ``kill -9`` is real), their environment,
seeded kill points, a tiny served model, and polling with a deadline.

Every worker is started as the stack starts its workers (:class:`workers.supervisor.Child`:
``python -m workers.cli <kind>``, or ``tests.faults.refresh_crash``, which wraps the same CLI with a
deterministic crash point), configured only through the ``MINDSTREAM_*`` variables ``Settings.to_env``
renders, pointing at the broker, Milvus and a per-test state directory.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from model.checkpoint import Checkpoint, save_checkpoint
from model.config import MindConfig, TrainConfig
from model.export import item_table
from model.net import MindNet
from schemas.messages import ClickEvent
from tests.waiting import wait_until as wait_until  # re-exported: the fault tests import it from here
from workers.infra.vector_store import VectorStore
from workers.ingest.state_store import PartitionStore
from workers.refresh.registry import ModelRegistry
from workers.settings import ENV_PREFIX, Settings
from workers.supervisor import Child

ROOT = Path(__file__).resolve().parents[2]
MIND = MindConfig(dim=8, k_max=2, maxlen=6)
TRAIN = TrainConfig(batch_size=32, negatives=16, lr=0.02, seed=5, threads=1)
SESSION_MS = 2000  # small group session: a killed member's partitions move on within ~2 s
SYNTHETIC_ITEMS = 5001  # item_count of the synthetic data set the refresh CLI replays (DEFAULT_SYNTHETIC)


def pytest_configure(config: pytest.Config) -> None:
    # Until pyproject declares it: "fault: fault-injection tests (kill -9, restarts)".
    config.addinivalue_line("markers", "fault: fault-injection tests (kill -9, restarts)")


def kill_points(seed: int, n: int, low: float, high: float) -> list[float]:
    """``n`` seeded delays in ``[low, high)`` seconds: where the kills land, reproducibly."""
    return np.random.default_rng(seed).uniform(low, high, size=n).round(2).tolist()


@dataclass
class Names:
    """Topic, group and alias names no other test uses."""

    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def alias(self) -> str:
        return f"fault_{self.suffix}"

    def env(self) -> dict[str, str]:
        s = self.suffix
        return {
            "MINDSTREAM_MILVUS__ALIAS": self.alias,
            "MINDSTREAM_KAFKA__CLICKS_TOPIC": f"clicks-{s}",
            "MINDSTREAM_KAFKA__CLICKS_DLQ_TOPIC": f"clicks-dlq-{s}",
            "MINDSTREAM_KAFKA__REQUESTS_TOPIC": f"requests-{s}",
            "MINDSTREAM_KAFKA__REPLIES_TOPIC": f"replies-{s}",
            "MINDSTREAM_KAFKA__INGEST_GROUP": f"ingest-{s}",
            "MINDSTREAM_KAFKA__RECALL_GROUP": f"recall-{s}",
        }


def fault_settings(state_dir: Path, names: Names, *, bootstrap: str, milvus_uri: str | None = None) -> Settings:
    """A worker's settings here: tiny model, FLAT index, small batches, fast triggers, ``names``' topics."""
    overrides = {
        **names.env(),
        "MINDSTREAM_STATE_DIR": str(state_dir),
        "MINDSTREAM_LOG_LEVEL": "INFO",
        "MINDSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "MINDSTREAM_KAFKA__SESSION_TIMEOUT_MS": str(SESSION_MS),
        "MINDSTREAM_MIND__DIM": str(MIND.dim),
        "MINDSTREAM_MIND__K_MAX": str(MIND.k_max),
        "MINDSTREAM_MIND__MAXLEN": str(MIND.maxlen),
        "MINDSTREAM_TRAIN__BATCH_SIZE": str(TRAIN.batch_size),
        "MINDSTREAM_TRAIN__NEGATIVES": str(TRAIN.negatives),
        "MINDSTREAM_TRAIN__LR": str(TRAIN.lr),
        "MINDSTREAM_TRAIN__SEED": str(TRAIN.seed),
        "MINDSTREAM_TRAIN__THREADS": "1",
        "MINDSTREAM_EVAL__TOP_N": "10",
        "MINDSTREAM_DATA__DATASET": "synthetic",  # generated in ~10 ms; its train split is the replay
        "MINDSTREAM_MILVUS__INDEX_TYPE": "FLAT",
        "MINDSTREAM_MILVUS__TIMEOUT_S": "10",
        "MINDSTREAM_INGEST__BATCH_SIZE": "500",
        "MINDSTREAM_INGEST__BATCH_TIMEOUT_S": "0.1",
        "MINDSTREAM_INGEST__STATS_INTERVAL_MS": "0",
        "MINDSTREAM_REFRESH__INTERVAL_S": "0.3",
        "MINDSTREAM_REFRESH__MIN_NEW_EVENTS": "1",
        "MINDSTREAM_REFRESH__TRAIN_BATCHES": "15",
        "MINDSTREAM_REFRESH__REPLAY_USERS": "20",
        "MINDSTREAM_REFRESH__QUALITY_USERS": "0",
        "MINDSTREAM_REFRESH__PROBE_ITEMS": "5",
        "MINDSTREAM_REFRESH__GRACE_PERIOD_S": "0",
        "MINDSTREAM_REFRESH__KEEP_PREVIOUS": "1",
        "MINDSTREAM_REFRESH__POLL_S": "0.2",
        "MINDSTREAM_RECALL__ALIAS_CHECK_S": "0.2",
        "MINDSTREAM_RECALL__CLIENT_TIMEOUT_S": "20",
    }
    if milvus_uri is not None:
        overrides["MINDSTREAM_MILVUS__URI"] = milvus_uri
    return Settings.from_env(overrides)


def worker_env(state_dir: Path, names: Names, *, bootstrap: str, milvus_uri: str | None = None) -> dict[str, str]:
    """The environment of a worker: :func:`fault_settings` rendered as ``MINDSTREAM_*`` (as
    :class:`workers.stack.Stack` renders them), nothing else ``MINDSTREAM_*`` of this process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return env | fault_settings(state_dir, names, bootstrap=bootstrap, milvus_uri=milvus_uri).to_env()


class Worker(Child):
    """One worker subprocess, started as the stack starts its workers (:class:`workers.supervisor.Child`);
    ``kill9`` is a real SIGKILL, ``start`` again runs the same command (with ``env`` as it is then)."""

    def __init__(self, argv: list[str], env: Mapping[str, str], log_path: Path) -> None:
        assert argv[:2] == [sys.executable, "-m"], f"a python -m command, not {argv}"
        super().__init__(argv[2], argv[3:], dict(env), log_path, module=argv[2], cwd=ROOT)
        self.argv = argv
        self.starts = 0

    @classmethod
    def cli(cls, kind: str, env: Mapping[str, str], log_path: Path, *args: str) -> Worker:
        return cls([sys.executable, "-m", "workers.cli", kind, *args], env, log_path)

    def start(self) -> Worker:  # type: ignore[override]
        assert not self.alive(), "already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            out.write(f"\n===== start {self.starts + 1}: {' '.join(self.argv[1:])}\n".encode())
        super().start()
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.running

    def assert_alive(self) -> None:
        assert self.alive(), f"worker exited with {self.proc and self.proc.returncode}: {self.tail()}"

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:  # type: ignore[override]
        """SIGTERM (the worker finishes its batch and commits), SIGKILL if it does not exit in time."""
        super().stop(timeout)
        return self.proc.returncode if self.proc is not None else None

    def tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Register every started worker here: whatever a failing test leaves running is killed."""
    started: list[Worker] = []
    yield started
    for worker in started:
        if worker.alive():
            worker.kill9()


def save_v1(models_dir: Path, item_count: int, seed: int = 0) -> tuple[Checkpoint, MindNet]:
    """An untrained tiny MIND saved as ``v1`` of the served-model registry."""
    net = MindNet(MIND, item_count, seed=seed)
    ckpt = save_checkpoint(models_dir, net, None, parent=None, step=0, data_fingerprint="fault", train={}, metrics={})
    return ckpt, net


def publish_live(store: VectorStore, registry: ModelRegistry, net: MindNet, version: str) -> str:
    """Fill ``<alias>_<version>`` (FLAT, loaded, exact count checked) and point the alias at it."""
    name = registry.collection_for(version)
    table = item_table(net)
    store.create_collection(name, MIND.dim)
    store.build_index(name)
    store.insert(name, np.arange(1, net.item_count, dtype=np.int64), table[1:], model_version=version)
    store.load(name)
    assert store.count(name) == net.item_count - 1
    store.point_alias(registry.alias, name)
    return name


def click_batch(first_user: int, users: int, clicks: int, ts0: int, rng: np.random.Generator) -> list[ClickEvent]:
    """``users`` new users with ``clicks`` clicks each on items 1..40 (enough to train on)."""
    events, ts = [], ts0
    for user in range(first_user, first_user + users):
        for _ in range(clicks):
            ts += 1
            item = int(rng.integers(1, 41))
            events.append(ClickEvent(event_id=f"u{user}-{ts}", user_id=user, item_id=item, ts=ts))
    return events


class StateFeeder:
    """Writes clicks straight into the ingest state (partition 0), as an ingest worker would."""

    def __init__(self, state_dir: Path, topic: str, seed: int) -> None:
        self.store = PartitionStore.open(state_dir, topic, 0)
        self.topic = topic
        self.rng = np.random.default_rng(seed)
        self.offset = -1
        self.user = 10_000
        self.total = 0

    def feed(self, users: int = 4, clicks: int = 6) -> int:
        events = click_batch(self.user, users, clicks, self.user * 100, self.rng)
        self.user += users
        self.offset += len(events)
        self.store.apply(events, self.topic, 0, self.offset)
        self.total += len(events)
        return len(events)

    def close(self) -> None:
        self.store.close()
