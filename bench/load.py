"""Open-loop recall load from processes of their own, so that a generator's scheduling is not measured as
the service's tail (a Python client on the stack's two cores added ~150 ms to an HTTP p99 of 44 ms).

* Kafka: :class:`KafkaLoad`, a spawned interpreter with its own ``RecallClient``, sending at a fixed rate
  whatever the replies do and handing each outcome back in batches;
* HTTP: :class:`VegetaLoad`, the compiled open-loop generator vegeta (``go install
  github.com/tsenart/vegeta/v12@latest``), its results streamed as CSV and read here.

Both report to a sink ``(path, Outcome)`` with the request's scheduled send time on this machine's
monotonic clock (shared by every process), so windows and busy seconds line up with the bench's own.
"""

from __future__ import annotations

import base64
import csv
import json
import logging
import multiprocessing as mp
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Final, Protocol

from schemas.messages import ErrorReply, RecallReply, RecallRequest
from workers.recall.client import RecallClient
from workers.settings import KafkaSettings, RecallSettings

__all__ = ["KafkaLoad", "Outcome", "VegetaLoad", "describe", "vegeta_binary"]

log = logging.getLogger(__name__)

BATCH_S: Final = 0.5  # how often a load process hands its outcomes over


@dataclass(frozen=True)
class Outcome:
    due: float  # scheduled send time, time.monotonic()
    ms: float | None  # None: failed
    kind: str  # ok | timeout | error
    detail: str | None = None  # what the error was (its code and message, the exception, the HTTP status)


Sink = Callable[[str, Outcome], None]


def describe(exc: BaseException) -> str:
    """An exception as a failed request's ``detail``."""
    return f"{type(exc).__name__}: {str(exc)[:120]}"


# -- Kafka ------------------------------------------------------------------------------------------


class Stoppable(Protocol):
    def is_set(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...


def kafka_open_loop(
    client: RecallClient,
    rate: float,
    reqs: list[RecallRequest],
    stop: Stoppable,
    report: Callable[[Outcome], None],
    sent: Callable[[], None] = lambda: None,
) -> None:
    """Send ``reqs`` round robin at ``rate`` until ``stop``, whatever the replies do (open loop); each
    request's outcome goes to ``report`` when it comes back (or fails), ``sent`` is called per send."""
    t0 = time.monotonic()
    i = 0
    while not stop.is_set():
        due = t0 + i / rate
        if (delay := due - time.monotonic()) > 0 and stop.wait(delay):
            break

        def done(f: Future[RecallReply | ErrorReply], due: float = due) -> None:
            exc = f.exception()
            now = time.monotonic()
            if isinstance(exc, TimeoutError):
                report(Outcome(due, None, "timeout"))
            elif exc is not None:
                report(Outcome(due, None, "error", describe(exc)))
            elif isinstance(reply := f.result(), ErrorReply):
                report(Outcome(due, None, "error", f"{reply.code}: {reply.message[:120]}"))
            else:
                report(Outcome(due, (now - due) * 1000, "ok"))

        try:
            client.request(reqs[i % len(reqs)]).add_done_callback(done)
            sent()
        except Exception as exc:
            report(Outcome(due, None, "error", f"not sent: {describe(exc)}"))
        i += 1


def _kafka_process(
    kafka: KafkaSettings, recall: RecallSettings, rate: float, bodies: list[str], stop: Event, out: Queue[Any]
) -> None:
    """The load process: ``"ready"``, then lists of outcomes every :data:`BATCH_S`, then ``None``."""
    reqs = [RecallRequest.model_validate_json(b) for b in bodies]
    lock = threading.Lock()
    pending: list[Outcome] = []
    flushed = threading.Event()

    def record(outcome: Outcome) -> None:
        with lock:
            pending.append(outcome)

    def flush() -> None:
        with lock:
            batch, pending[:] = list(pending), []
        if batch:
            out.put(batch)

    def flusher() -> None:
        while not flushed.wait(BATCH_S):
            flush()

    with RecallClient(kafka, recall) as client:
        out.put("ready")
        threading.Thread(target=flusher, name="flush", daemon=True).start()
        kafka_open_loop(client, rate, reqs, stop, record)
        settle = time.monotonic() + recall.client_timeout_s + 2.0  # in-flight requests get their outcome
        while time.monotonic() < settle and client.pending() > 0:
            time.sleep(0.1)
        flushed.set()
        flush()
    out.put(None)


class KafkaLoad:
    """``with KafkaLoad(...) as load: ...``: Kafka recall requests at ``rate`` from a process of its own
    until the block ends (or :meth:`stop`); outcomes go to ``sink`` as they come back."""

    def __init__(
        self, kafka: KafkaSettings, recall: RecallSettings, rate: float, reqs: list[RecallRequest], sink: Sink
    ) -> None:
        ctx = mp.get_context("spawn")  # a fresh interpreter: nothing of the bench's threads or heap
        self._stop = ctx.Event()
        self._out: Queue[Any] = ctx.Queue()
        bodies = [r.model_dump_json(exclude_none=True) for r in reqs]
        self._proc = ctx.Process(
            target=_kafka_process, args=(kafka, recall, rate, bodies, self._stop, self._out), name="kafka-load"
        )
        self._sink = sink
        self._drain = threading.Thread(target=self._read, name="kafka-load-reader", daemon=True)
        self._finished = threading.Event()
        self.sent = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def __enter__(self) -> KafkaLoad:
        self._proc.start()
        if self._out.get(timeout=120) != "ready":
            raise RuntimeError("the Kafka load process did not start")
        self._drain.start()
        return self

    def _read(self) -> None:
        while True:
            try:
                batch = self._out.get(timeout=1.0)
            except queue.Empty:
                if not self._proc.is_alive():
                    break
                continue
            if batch is None:
                break
            for outcome in batch:
                self.sent += 1
                self._sink("kafka", outcome)
        self._finished.set()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop sending; wait for the outcomes of what was sent (answered, failed or timed out)."""
        self._stop.set()
        self._finished.wait(timeout_s)
        self._proc.join(10)

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(10)


# -- HTTP (vegeta) ----------------------------------------------------------------------------------


def vegeta_binary() -> str | None:
    """vegeta on the PATH, else where ``go install`` puts it, else None."""
    found = shutil.which("vegeta")
    if found:
        return found
    gopath = os.environ.get("GOPATH") or str(Path.home() / "go")
    candidate = Path(gopath) / "bin" / "vegeta"
    return str(candidate) if candidate.exists() else None


class VegetaLoad:
    """``with VegetaLoad(url, rate, bodies, sink): ...``: POSTs of ``bodies`` (JSON) to ``url`` at ``rate``
    by vegeta's open-loop attack until the block ends; each result read from its CSV stream."""

    def __init__(self, url: str, rate: float, bodies: list[dict[str, Any]], sink: Sink, timeout_s: float = 5.0) -> None:
        binary = vegeta_binary()
        if binary is None:
            raise FileNotFoundError("vegeta not found: go install github.com/tsenart/vegeta/v12@latest")
        self._binary = binary
        self._dir = Path(tempfile.mkdtemp(prefix="vegeta-"))
        targets = self._dir / "targets.jsonl"
        header = {"Content-Type": ["application/json"]}
        with targets.open("w") as f:
            for body in bodies:
                raw = base64.b64encode(json.dumps(body).encode()).decode()
                f.write(json.dumps({"method": "POST", "url": url, "body": raw, "header": header}) + "\n")
        self._targets = targets
        self._rate = rate
        self._timeout_s = timeout_s
        self._sink = sink
        self._attack: subprocess.Popen[bytes] | None = None
        self._encode: subprocess.Popen[str] | None = None
        self._reader = threading.Thread(target=self._read, name="vegeta-reader", daemon=True)
        self._offset = time.time() - time.monotonic()  # wall -> monotonic
        self.sent = 0

    @property
    def pid(self) -> int | None:
        return self._attack.pid if self._attack is not None else None

    def __enter__(self) -> VegetaLoad:
        rate = f"{max(round(self._rate * 1000), 1)}/1000s"  # requests per 1000 s: fractional rates too
        self._attack = subprocess.Popen(
            [
                self._binary,
                "attack",
                "-format=json",
                f"-targets={self._targets}",
                f"-rate={rate}",
                "-duration=0",
                f"-timeout={self._timeout_s}s",
                "-keepalive=true",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._encode = subprocess.Popen(
            [self._binary, "encode", "-to=csv"], stdin=self._attack.stdout, stdout=subprocess.PIPE, text=True
        )
        assert self._attack.stdout is not None
        self._attack.stdout.close()  # the encoder holds the pipe now
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._encode is not None and self._encode.stdout is not None
        for row in csv.reader(self._encode.stdout):
            if len(row) < 6:
                continue
            due = int(row[0]) / 1e9 - self._offset  # the attack's send time
            code, latency_ms, error = int(row[1]), int(row[2]) / 1e6, row[5]
            self.sent += 1
            if code == 200:
                self._sink("http", Outcome(due, latency_ms, "ok"))
            elif "timeout" in error.lower() or "deadline" in error.lower():
                self._sink("http", Outcome(due, None, "timeout"))
            else:
                self._sink("http", Outcome(due, None, "error", f"HTTP {code}: {error[:120]}"))

    def stop(self) -> None:
        """Stop the attack (SIGINT: vegeta finishes its in-flight requests and writes their results)."""
        if self._attack is not None and self._attack.poll() is None:
            self._attack.send_signal(2)
            try:
                self._attack.wait(self._timeout_s + 10)
            except subprocess.TimeoutExpired:
                self._attack.kill()
        if self._encode is not None:
            try:
                self._encode.wait(30)
            except subprocess.TimeoutExpired:
                self._encode.kill()
        self._reader.join(30)

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
