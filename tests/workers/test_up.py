"""``mindstream up``: the admin and read tokens of the local stack, the continuous stream, and the whole
command on a small synthetic catalogue: it keeps streaming after the replay, the seed's admin calls work,
a user's history answers with the read token only, a
killed worker is restarted with a growing delay, Ctrl-C stops it quietly with one summary line, and the
embedded broker keeps its topics and the clicks produced while the stack was down."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from model.data.synthetic import SyntheticSpec, synthetic_dataset
from schemas.codec import encode
from schemas.messages import ClickEvent
from workers.infra.kafka import make_admin, make_producer
from workers.infra.kafka_broker import KafkaCluster, NodePorts
from workers.infra.ports import free_port
from workers.ingest.state_reader import StateReader
from workers.settings import HttpSettings, KafkaSettings, Settings, StreamSettings
from workers.stream import ClickStream
from workers.up import ensure_admin_token, ensure_read_token, print_read_token


def test_admin_token_is_created_once_owner_only(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    token, created = ensure_admin_token(settings)
    assert created and len(token) >= 32
    assert stat.S_IMODE(settings.admin_token_file.stat().st_mode) == 0o600
    assert ensure_admin_token(settings) == (token, False)  # reused, not printed again
    configured = settings.model_copy(update={"http": HttpSettings(admin_token=SecretStr("mine"))})
    assert ensure_admin_token(configured) == ("mine", False)


def test_read_token_is_created_once_owner_only_and_printed_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    token, created = ensure_read_token(settings)
    assert created and len(token) >= 32 and token != ensure_admin_token(settings)[0]
    assert stat.S_IMODE(settings.read_token_file.stat().st_mode) == 0o600
    assert settings.read_token_file.read_text().strip() == token
    assert ensure_read_token(settings) == (token, False)
    print_read_token(settings, token, created=True)
    assert token in capsys.readouterr().err  # shown once, when created
    print_read_token(settings, token, created=False)
    later = capsys.readouterr().err
    assert token not in later and str(settings.read_token_file) in later  # later: where it is
    configured = settings.model_copy(update={"http": HttpSettings(read_token=SecretStr("mine"))})
    assert ensure_read_token(configured) == ("mine", False)


def test_the_stream_speaks_catalogue_ids_and_births_fresh_ones() -> None:
    data = synthetic_dataset(SyntheticSpec(num_users=300, num_items=400, num_clusters=10), seed=1)
    cfg = StreamSettings(new_items_per_s=2.0, burst_every_s=1.0, burst_s=0.5, seed=3)
    users = np.arange(10_000, 10_050, dtype=np.int64)

    def run() -> tuple[list[int], ClickStream]:
        stream = ClickStream.from_dataset(data, users, cfg)
        items: list[int] = []
        for step in range(100):
            who, what = stream.chunk(50, 1000.0 + step * 0.1)
            assert set(who.tolist()) <= set(users.tolist())
            items += what.tolist()
        return items, stream

    items, stream = run()
    assert items == run()[0]  # seeded
    catalogue = set(data.vocab.ids[1:].tolist())
    born = set(stream.births.born)
    assert len(born) == 20  # 10 s at 2 per second
    assert not born & catalogue and not data.vocab.contains(np.array(sorted(born), dtype=np.int64)).any()
    assert set(items) <= catalogue | born
    assert born & set(items) and stream.bursts >= 1  # new items get clicked; bursts happen


@pytest.mark.integration
@pytest.mark.slow
def test_up_streams_after_the_replay_restarts_killed_workers_stops_quietly_and_keeps_the_broker_log(
    tmp_path: Path,
) -> None:
    http_port = free_port()
    env = {
        **os.environ,
        "MINDSTREAM_STATE_DIR": str(tmp_path / "state"),
        "MINDSTREAM_DATA__DATASET": "synthetic",
        "MINDSTREAM_TRAIN__BATCHES": "20",
        "MINDSTREAM_REFRESH__TRAIN_BATCHES": "10",
        # one bootstrap publish, then no round holds the publish lock (the admin calls would get 409)
        "MINDSTREAM_REFRESH__INTERVAL_S": "100000",
        "MINDSTREAM_REFRESH__MIN_NEW_EVENTS": "100000000",
        "MINDSTREAM_REFRESH__QUALITY_USERS": "0",
        "MINDSTREAM_KAFKA__EMBEDDED_PORT": str(free_port()),
        "MINDSTREAM_KAFKA__EMBEDDED_CONTROLLER_PORT": str(free_port()),
        "MINDSTREAM_MILVUS__EMBEDDED_PORT": str(free_port()),
        "MINDSTREAM_MILVUS__INDEX_TYPE": "FLAT",
        "MINDSTREAM_HTTP__PORT": str(http_port),
        "MINDSTREAM_INGEST__METRICS_PORT": str(free_port()),
        "MINDSTREAM_REFRESH__METRICS_PORT": str(free_port()),
        "MINDSTREAM_RECALL__METRICS_PORT": str(free_port()),
    }
    env.pop("MINDSTREAM_HTTP__ADMIN_TOKEN", None)
    env.pop("MINDSTREAM_HTTP__READ_TOKEN", None)
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "up", "--rate", "2000", "--recall-rate", "5", "--http-rate", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{http_port}"
    token_file = tmp_path / "state" / "admin-token"
    try:
        streamed = _wait_for(log, proc, lambda text: _sent_in_phase(text, "stream") >= 2, 600)
        assert "replay sent" in streamed  # the held-out replay ran first and ended
        first = _sent_in_phase(streamed, "stream")
        _wait_for(log, proc, lambda text: "stream sent" in text and "live v" in text.rsplit("stream sent", 1)[1], 600)
        _wait_for(log, proc, lambda text: _sent_in_phase(text, "stream") > first + 10_000, 120)
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert token in log.read_text()  # printed once, with how to use it
        # the seed's calls: refused without the token, served with it
        assert _post(f"{base}/rec/insert_data", None) == 401
        assert _post(f"{base}/qa/drop", "wrong") == 403
        read_file = tmp_path / "state" / "read-token"
        assert stat.S_IMODE(read_file.stat().st_mode) == 0o600
        read_token = read_file.read_text().strip()
        assert read_token in log.read_text()
        # a user's history: the read token opens it, nothing else does
        assert _recall_by_user(base, None) == 401 and _recall_by_user(base, "wrong") == 403
        assert _recall_by_user(base, read_token) == 200
        assert _post_retrying(f"{base}/rec/insert_data", token) == 200
        assert _post_retrying(f"{base}/qa/drop", token) == 200
        # the supervisor: a killed worker comes back, each time after a longer delay
        for _ in range(2):
            before = log.read_text()
            pid = _child_pid(before, "ingest")
            os.kill(pid, signal.SIGKILL)
            _wait_for(log, proc, lambda text, p=pid: _child_pid(text, "ingest") not in (None, p), 60)
        delays = [float(d) for d in re.findall(r"ingest exited with -9; restarting in (\d+) s", log.read_text())]
        assert delays == [1.0, 2.0], delays
    finally:
        _stop(proc)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    stopping = text.rindex("stopping (SIGINT")
    assert "Connect to" not in text[stopping:], "clients still ran after the broker stopped"
    assert text.strip().splitlines()[-1].startswith("mindstream stopped (SIGINT) after "), text[-1000:]

    # while the stack is down: the broker alone (same storage and ports) still has the topics, and takes
    # clicks that the next `up` applies
    kafka = KafkaSettings(
        embedded_port=int(env["MINDSTREAM_KAFKA__EMBEDDED_PORT"]),
        embedded_controller_port=int(env["MINDSTREAM_KAFKA__EMBEDDED_CONTROLLER_PORT"]),
    )
    ports = [NodePorts(kafka.embedded_port, kafka.embedded_controller_port)]
    with KafkaCluster(tmp_path / "state" / "kafka", ports=ports) as broker:
        conf = {"bootstrap.servers": broker.bootstrap}
        topics = make_admin(conf).list_topics(timeout=10).topics
        assert {kafka.clicks_topic, kafka.clicks_dlq_topic, kafka.requests_topic, kafka.replies_topic} <= set(topics)
        producer = make_producer(conf)
        for n in range(300):
            event = ClickEvent(event_id=f"offline-{n}", user_id=OFFLINE_USER, item_id=n % 50 + 1, ts=n)
            producer.produce(kafka.clicks_topic, encode(event), key=event.kafka_key())
        assert producer.flush(30) == 0
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "up", "--no-replay", "--rate", "50", "--recall-rate", "0"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with StateReader(tmp_path / "state", kafka.clicks_topic) as reader:
            deadline = time.monotonic() + 300
            while len(reader.history(OFFLINE_USER, 1000)) < 300 and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(1)
            assert len(reader.history(OFFLINE_USER, 1000)) == 300, "clicks produced while up was down"
    finally:
        _stop(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]


OFFLINE_USER = 987_654_321


def _child_pid(text: str, name: str) -> int | None:
    found = re.findall(rf"started {name} \(pid (\d+)\)", text)
    return int(found[-1]) if found else None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _sent_in_phase(text: str, phase: str) -> int:
    found = re.findall(rf"\] {phase} sent ([\d,]+)", text)
    return int(found[-1].replace(",", "")) if found else -1


def _wait_for(log: Path, proc: subprocess.Popen[bytes], done: object, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if callable(done) and done(text):
            return text
        assert proc.poll() is None, text[-3000:]
        time.sleep(1)
    raise AssertionError(log.read_text(errors="replace")[-3000:])


def _post(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, data=b"", headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            json.loads(response.read())
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _recall_by_user(base: str, token: str | None) -> int:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    body = json.dumps({"user_ids": [1, 2], "top_k": 5}).encode()
    request = urllib.request.Request(f"{base}/rec/recall", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            assert len(json.loads(response.read())["items"]) == 2
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _post_retrying(url: str, token: str) -> int:
    """409 while a refresh round holds the publish lock: the seed's caller tries again."""
    for _ in range(60):
        status = _post(url, token)
        if status != 409:
            return status
        time.sleep(2)
    return 409
