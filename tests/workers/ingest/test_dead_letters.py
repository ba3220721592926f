"""Dead letters that always fit (pure logic) and a worker that outlives any one click (real broker)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import ConfigResource, ResourceType
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from schemas.dlq import DLQ_TRUNCATED, DeadLetter
from schemas.headers import get_header
from workers.infra.kafka import TopicSpec, ensure_topics, make_admin, make_producer, record_bytes
from workers.ingest.dead_letters import MAX_KEY_BYTES, Letter, bare, fitted
from workers.ingest.metrics import IngestMetrics
from workers.ingest.state_reader import Cursor, StateReader
from workers.ingest.worker import BatchOutcome, IngestWorker
from workers.settings import KafkaSettings

from .test_worker import _click, _read_all

LETTER = DeadLetter("malformed JSON: EOF", "clicks", 3, 12345)
LIMIT = 20_000


def test_a_letter_that_fits_is_the_original_record_plus_the_dlq_headers() -> None:
    letter = fitted(LETTER, b"k", b"v" * 100, [("trace", b"t")], LIMIT)
    assert (letter.key, letter.value) == (b"k", b"v" * 100)
    assert letter.headers == LETTER.headers([("trace", b"t")])
    assert get_header(letter.headers, DLQ_TRUNCATED) is None


def test_a_letter_too_large_is_cut_to_the_limit_and_says_its_original_size() -> None:
    value, key, original = b"x" * 50_000, b"k" * 5_000, [("big", b"h" * 30_000), ("small", b"s")]
    letter = fitted(LETTER, key, value, original, LIMIT)
    assert letter.size <= LIMIT
    assert get_header(letter.headers, DLQ_TRUNCATED) == str(record_bytes(value, key, original))
    assert DeadLetter.from_headers(letter.headers) == LETTER
    assert letter.key == key[:MAX_KEY_BYTES]
    assert letter.value is not None and value.startswith(letter.value) and len(letter.value) > LIMIT // 3
    assert get_header(letter.headers, "big") is None  # did not fit in half the room: dropped


@settings(max_examples=200, deadline=None)
@given(
    key=st.one_of(st.none(), st.binary(max_size=40_000)),
    value=st.one_of(st.none(), st.binary(max_size=60_000)),
    original=st.lists(st.tuples(st.text(max_size=50), st.one_of(st.none(), st.binary(max_size=20_000))), max_size=6),
)
def test_every_letter_fits_and_keeps_its_reason(
    key: bytes | None, value: bytes | None, original: list[tuple[str, bytes | None]]
) -> None:
    letter = fitted(LETTER, key, value, list(original), LIMIT)
    assert letter.size <= LIMIT
    assert DeadLetter.from_headers(letter.headers) == LETTER
    cut = bare(letter)
    assert (cut.key, cut.value) == (None, None) and DeadLetter.from_headers(cut.headers) == LETTER
    assert get_header(cut.headers, DLQ_TRUNCATED) is not None


def test_bare_keeps_the_original_size_of_a_whole_letter() -> None:
    whole = Letter(b"k", b"v" * 10, LETTER.headers([("a", b"b")]))
    assert get_header(bare(whole).headers, DLQ_TRUNCATED) == str(record_bytes(b"v" * 10, b"k", [("a", b"b")]))


def _worker(conf: dict[str, str | int], topic: str, dlq: str, state: Path, metrics: IngestMetrics) -> IngestWorker:
    return IngestWorker(
        conf,
        topic=topic,
        dlq_topic=dlq,
        group_id=f"{topic}-ingest",
        session_timeout_ms=6000,
        state_dir=state,
        batch_size=64,
        batch_timeout_s=0.2,
        dlq_flush_timeout_s=3.0,
        stats_interval_ms=0,
        metrics=metrics,
        retry_backoff_s=0.1,
    )


def _run_until(worker: IngestWorker, consumed: int, timeout: float = 30) -> list[BatchOutcome]:
    outcomes: list[BatchOutcome] = []
    deadline = time.monotonic() + timeout
    while sum(o.consumed for o in outcomes) < consumed and time.monotonic() < deadline:
        outcomes.append(worker.run_once())
    return outcomes


@pytest.mark.integration
def test_a_click_of_almost_a_megabyte_is_dead_lettered_cut_and_the_stream_goes_on(
    kafka_settings: KafkaSettings, topic_name: str, tmp_path: Path
) -> None:
    """The junk value a default producer accepts (999,950 bytes) plus its headers does not fit in the
    dead-letter topic: the letter is cut, says so, and the clicks around it are applied exactly once."""
    conf = kafka_settings.client_config()
    dlq = f"{topic_name}.dlq"
    ensure_topics(conf, [topic_name, dlq])
    producer = make_producer(conf)
    for n in range(5):
        producer.produce(topic_name, key=_click(n)[0], value=_click(n)[1])
    junk = b"\x01" * 999_950
    producer.produce(topic_name, key=b"7", value=junk)
    for n in range(5, 10):
        producer.produce(topic_name, key=_click(n)[0], value=_click(n)[1])
    assert producer.flush(10) == 0
    metrics = IngestMetrics(CollectorRegistry())
    worker = _worker(conf, topic_name, dlq, tmp_path, metrics)
    try:
        outcomes = _run_until(worker, 11)
    finally:
        worker.close()
    assert sum(o.consumed for o in outcomes) == 11
    assert sum(o.applied for o in outcomes) == 10 and sum(o.dead_lettered for o in outcomes) == 1
    (letter,) = _read_all(conf, dlq, 1, 1)
    assert DeadLetter.from_headers(letter.headers()) is not None
    assert int(get_header(letter.headers(), DLQ_TRUNCATED) or 0) > len(junk)
    assert junk.startswith(letter.value()) and len(letter.value()) > 900_000
    assert metrics.dead_letters_truncated._value.get() == 1
    with StateReader(tmp_path, topic_name) as reader:
        assert len(reader.events_since(Cursor())[0]) == 10


@pytest.mark.integration
def test_a_letter_the_dead_letter_topic_refuses_for_its_size_is_sent_again_bare(
    kafka_settings: KafkaSettings, topic_name: str, tmp_path: Path
) -> None:
    """A dead-letter topic whose records are capped at 1 KB refuses the 5-KB letter: it is sent again
    without the original bytes (marked truncated), the clicks around it are applied exactly once."""
    conf = kafka_settings.client_config()
    dlq = f"{topic_name}.dlq"
    ensure_topics(conf, [topic_name, TopicSpec(dlq, 1, -1, {"max.message.bytes": "1024"})])
    producer = make_producer(conf)
    producer.produce(topic_name, key=b"1", value=random.Random(3).randbytes(5000))  # lz4 cannot shrink it
    for n in range(3):
        producer.produce(topic_name, key=_click(n)[0], value=_click(n)[1])
    assert producer.flush(10) == 0
    metrics = IngestMetrics(CollectorRegistry())
    worker = _worker(conf, topic_name, dlq, tmp_path, metrics)
    try:
        outcomes = _run_until(worker, 4)
    finally:
        worker.close()
    assert sum(o.applied for o in outcomes) == 3 and sum(o.dead_lettered for o in outcomes) == 1
    (letter,) = _read_all(conf, dlq, 1, 1)
    assert letter.value() is None and get_header(letter.headers(), DLQ_TRUNCATED) is not None


@pytest.mark.integration
def test_a_dead_letter_nobody_accepts_holds_the_batch_until_it_is_accepted(
    kafka_settings: KafkaSettings, topic_name: str, tmp_path: Path
) -> None:
    """A letter refused even bare (here: the topic takes no record above 50 bytes) is a failure the
    operator must fix, not a reason to lose or skip the click: nothing of the batch is applied, the batch
    is read again and again while the worker keeps running; once the topic accepts letters, the clicks
    are applied exactly once and the bad one dead-lettered."""
    conf = kafka_settings.client_config()
    dlq = f"{topic_name}.dlq"
    ensure_topics(conf, [topic_name, TopicSpec(dlq, 1, -1, {"max.message.bytes": "50"})])
    producer = make_producer(conf)
    producer.produce(topic_name, key=b"1", value=b"not json")
    for n in range(3):
        producer.produce(topic_name, key=_click(n)[0], value=_click(n)[1])
    assert producer.flush(10) == 0
    metrics = IngestMetrics(CollectorRegistry())
    worker = _worker(conf, topic_name, dlq, tmp_path, metrics)
    try:
        held: list[BatchOutcome] = []
        deadline = time.monotonic() + 30
        while metrics.batch_retries._value.get() < 3 and time.monotonic() < deadline:
            held.append(worker.run_once())
        assert metrics.batch_retries._value.get() == 3 and all(o.applied == 0 for o in held)
        resource = ConfigResource(ResourceType.TOPIC, dlq, set_config={"max.message.bytes": "1048588"})
        admin = make_admin(conf)  # kept referenced until its futures resolve
        for future in admin.alter_configs([resource]).values():
            future.result(10)
        outcomes = _run_until(worker, 4)
    finally:
        worker.close()
    assert sum(o.applied for o in outcomes) == 3 and sum(o.dead_lettered for o in outcomes) == 1
    (letter,) = _read_all(conf, dlq, 1, 1)
    assert letter.value() == b"not json"
