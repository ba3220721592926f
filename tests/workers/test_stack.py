"""``workers.stack.Stack``: the one launcher of the live system, on the real broker and Milvus.

Workers start configured only by the settings' environment, count as ready when their ``/readyz``
says so, a ``kill -9`` is seen, a restart brings the worker back ready under a new pid, a stop is
clean (exit 0), and closing the stack leaves no process behind. A stack without a broker or Milvus of
its own starts the embedded ones, with the topics, and stops them too.
"""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.faults.conftest import SYNTHETIC_ITEMS, Names, fault_settings, save_v1
from workers.infra.kafka import make_admin
from workers.infra.ports import free_port
from workers.recall.client import RecallClient
from workers.settings import Settings
from workers.stack import Stack, WorkerExited

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_stack_starts_ready_workers_kills_restarts_and_stops_them(
    kafka_bootstrap: str, milvus_uri: str, tmp_path: Path
) -> None:
    settings = fault_settings(tmp_path / "state", Names(), bootstrap=kafka_bootstrap, milvus_uri=milvus_uri)
    save_v1(settings.models_dir, SYNTHETIC_ITEMS)  # what the refresh worker's bootstrap publishes
    with Stack(settings, ["refresh", "ingest", "recall"], ready_timeout_s=300) as stack:
        assert stack.broker is None and stack.milvus is None  # the given ones are used
        assert Settings.from_env(stack.env) == stack.settings  # the workers' whole configuration
        ports = {name: getattr(stack.settings, name).metrics_port for name in ("refresh", "ingest", "recall")}
        assert None not in ports.values() and len(set(ports.values())) == 3  # free ports, for /readyz
        assert all(stack.is_ready(name) for name in ("refresh", "ingest", "recall"))
        first = stack.pids
        assert set(first) == {"refresh", "ingest", "recall"} and all(psutil.pid_exists(p) for p in first.values())
        with RecallClient(stack.settings.kafka, stack.settings.recall, bootstrap=stack.bootstrap) as client:
            assert client.recall(hist_item=[[1, 2, 3]], top_k=5).model_version == "v1"

        assert stack.kill("ingest") == -signal.SIGKILL
        assert not stack.is_ready("ingest") and "ingest" not in stack.pids
        with pytest.raises(WorkerExited, match="ingest exited with -9"):
            stack.check_alive()
        new_pid = stack.restart("ingest")
        assert new_pid != first["ingest"] and stack.pids["ingest"] == new_pid and stack.is_ready("ingest")
        with urllib.request.urlopen(stack.metrics_url("ingest"), timeout=5) as response:
            assert b"mindstream_" in response.read()

        assert stack.stop_worker("recall") == 0  # SIGTERM: finishes, commits, exits cleanly
        assert set(stack.pids) == {"refresh", "ingest"}
        assert "bootstrapped live model v1" in stack.log_path("refresh").read_text()  # its own log
        every = {**first, "ingest": new_pid}
    assert not any(psutil.pid_exists(pid) for pid in every.values())


def test_stack_starts_and_stops_the_embedded_broker_and_milvus(tmp_path: Path) -> None:
    base = Settings.from_env(
        {
            "MINDSTREAM_STATE_DIR": str(tmp_path / "state"),
            "MINDSTREAM_KAFKA__EMBEDDED_PORT": str(free_port()),
            "MINDSTREAM_KAFKA__EMBEDDED_CONTROLLER_PORT": str(free_port()),
            "MINDSTREAM_MILVUS__EMBEDDED_PORT": str(free_port()),
        }
    )
    with Stack(base, []) as stack:
        assert stack.broker is not None and stack.milvus is not None
        servers = {stack.broker.pid(1), stack.milvus.pid}
        assert stack.bootstrap == stack.broker.bootstrap and stack.milvus_uri == stack.milvus.uri
        topics = make_admin(stack.settings.kafka.client_config()).list_topics(timeout=10).topics
        assert {base.kafka.clicks_topic, base.kafka.requests_topic, base.kafka.items_topic} <= set(topics)
        assert stack.settings.state_dir.is_absolute()
    assert None not in servers and not any(psutil.pid_exists(pid) for pid in servers if pid is not None)
