"""The one settings object. Every default lives here (or in ``model.config``) and nowhere else.

Environment variables: prefix ``MINDSTREAM_``, nested sections joined with ``__``, e.g.
``MINDSTREAM_MILVUS__URI=http://milvus:19530`` or ``MINDSTREAM_TRAIN__BATCHES=500``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from model.config import ColdStartRule, ColdStartSteps, MindConfig, TrainConfig, recommended_k_max
from model.data import AMAZONBOOK_DEMO_DIR, Dataset, load_dataset
from model.data.custom import dataset_name, load_path
from model.data.items import ItemCatalogue, find_item_file, read_item_file
from model.data.movielens import locate_ml100k, ml100k_items

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")  # http.allowed_hosts' names for a loopback gateway
ANY_ADDRESS = ("0.0.0.0", "::", "[::]")  # bind addresses that name no host of their own
_DOTTED_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+")
ENV_PREFIX = "MINDSTREAM_"
MetricsWorker = Literal["ingest", "refresh", "recall", "catalogue"]  # the workers with a metrics_port
ENV_NONE = "null"  # an unset (None) field in the environment (Settings.to_env renders None so)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MilvusSettings(_Section):
    uri: str | None = Field(None, description="External Milvus URI; unset = start the embedded server")
    token: SecretStr | None = Field(None, description="Milvus token (user:password or API key)")
    embedded_host: str = "127.0.0.1"
    embedded_port: int = Field(19530, ge=1, le=65535)
    alias: str = Field("mindstream_items", description="Alias the recall side searches (the live collection)")
    index_type: Literal["AUTO", "HNSW", "IVF_FLAT", "FLAT"] = Field(
        "AUTO", description="AUTO: FLAT up to flat_max_items (exact), IVF_FLAT above (docs/benchmarks.md: Index choice)"
    )
    flat_max_items: int = Field(50_000, ge=0, description="AUTO picks FLAT (exact search) up to this many items")
    metric_type: Literal["IP", "COSINE", "L2"] = "IP"
    hnsw_m: int = Field(16, ge=2)
    hnsw_ef_construction: int = Field(200, ge=8)
    search_ef: int = Field(128, ge=1, description="HNSW ef at search time (>= top_k)")
    search_consistency: Literal["Strong", "Bounded", "Session", "Eventually"] = Field(
        "Eventually",
        description="Consistency of recall searches: Eventually searches what the server has applied (no wait), "
        "Bounded first waits until it has applied the writes of up to 5 s ago; probes and counts are always Strong",
    )
    insert_batch: int = Field(10_000, ge=1)
    timeout_s: float = Field(30.0, gt=0, description="Timeout of one Milvus call; transient failures are retried")
    serving_search_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Timeout of a recall search (recall worker, gateway), tried once: a failure opens the circuit "
        "breaker (recall.breaker_open_s) instead of holding every batch for timeout_s and retries",
    )
    embedded_config: dict[str, StrictBool | StrictInt | StrictFloat | str] = Field(
        {},
        description="milvus.yaml keys (dotted, e.g. queryNode.scheduler.maxReadConcurrentRatio) set for the embedded "
        "server, over its shipped limits (docs/retention.md); as JSON in the environment; a key its milvus.yaml "
        "template lacks is refused at start",
    )

    embedded_search_nice: int = Field(
        0,
        ge=0,
        le=19,
        description="CPU niceness of the embedded server's search threads (Knowhere_Search*). Its vector library "
        "starts them at 19, the lowest priority, so on a busy machine every other process ran before a "
        "search (docs/serving.md); 0 = the rest of the server's. Lowering a niceness needs CAP_SYS_NICE or "
        "RLIMIT_NICE (`ulimit -e 20`); without, a warning and the threads keep 19. 19 = leave them",
    )

    @field_validator("embedded_config")
    @classmethod
    def _dotted_keys(cls, value: dict[str, bool | int | float | str]) -> dict[str, bool | int | float | str]:
        bad = [key for key in value if not _DOTTED_KEY.fullmatch(key)]
        if bad:
            raise ValueError(f"not a dotted milvus.yaml key: {bad} (expected e.g. 'queryNode.scheduler.cpuRatio')")
        return value


class KafkaSettings(_Section):
    bootstrap_servers: str | None = Field(
        None, description="Kafka bootstrap servers; unset = start the embedded Apache Kafka broker"
    )
    embedded_host: str = "127.0.0.1"
    embedded_port: int = Field(19092, ge=1, le=65535, description="Embedded broker's client (PLAINTEXT) port")
    embedded_controller_port: int = Field(19093, ge=1, le=65535, description="Embedded broker's KRaft controller port")
    embedded_version: str = Field(
        "4.1.1", pattern=r"^\d+\.\d+\.\d+$", description="Apache Kafka version of the embedded broker (Maven Central)"
    )
    embedded_heap_mb: int = Field(256, ge=128, description="JVM heap of each embedded broker node")
    embedded_cache_dir: Path | None = Field(
        None, description="Where the embedded broker's jars are cached; unset = $XDG_CACHE_HOME/mindstream/kafka"
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None
    session_timeout_ms: int = Field(6000, ge=1000, description="Consumer group session timeout")
    clicks_topic: str = "clicks"
    clicks_dlq_topic: str = "clicks.dlq"
    requests_topic: str = "recall.requests"
    replies_topic: str = "recall.replies"
    ingest_group: str = "mindstream-ingest"
    recall_group: str = "mindstream-recall"
    items_topic: str = Field("items", description="The item catalogue: ItemEvent keyed by item id, compacted")
    items_dlq_topic: str = Field(
        "items.dlq",
        description="Dead letters of the items topic (its own: a lost withdrawal must be found and replayed "
        "without sifting click junk)",
    )
    catalogue_group: str = Field("mindstream-catalogue", description="Consumer group of the catalogue worker")
    items_partitions: int = Field(1, ge=1, description="Partitions of the items topic and its DLQ (created so)")
    items_delete_retention_ms: int = Field(
        86_400_000,
        ge=0,
        description="How long compaction keeps an item's tombstone (null value) readable: a catalogue state "
        "rebuilt from the topic later than this after a deletion does not see it",
    )
    clicks_partitions: int = Field(1, ge=1, description="Partitions of the clicks topic and its DLQ (created so)")
    requests_partitions: int = Field(1, ge=1, description="Partitions of the requests topic (created so)")
    replication_factor: int = Field(
        -1, description="Replication of the topics the stack creates; -1 = the cluster's default.replication.factor"
    )
    min_insync_replicas: int | None = Field(
        None, ge=1, description="min.insync.replicas of the topics the stack creates; unset = the cluster's default"
    )
    clicks_retention_ms: int = Field(
        86_400_000, ge=-1, description="Retention of the clicks topic (-1 = forever); the ingest state keeps its own"
    )
    clicks_retention_bytes: int = Field(
        1 << 30, ge=-1, description="... and its size bound per partition (-1 = none), whichever comes first"
    )
    dlq_retention_ms: int = Field(7 * 86_400_000, ge=-1, description="Retention of the dead-letter topic")
    request_retention_ms: int = Field(
        600_000, ge=1000, description="Retention of requests and replies (only useful within a client timeout)"
    )
    max_message_bytes: int = Field(
        1_000_000,
        ge=16_384,
        description="Largest record a worker produces (replies, dead letters: the producers' message.max.bytes); at "
        "most the topics' max.message.bytes (the broker's default 1,048,588). A reply that would not fit is "
        "answered too_large, a dead letter that would not fit is truncated (docs/operations.md: hostile input)",
    )

    def client_config(self, bootstrap: str | None = None) -> dict[str, str | int]:
        """librdkafka's dotted keys for producers, consumers and admin clients."""
        servers = bootstrap or self.bootstrap_servers
        if not servers:
            raise ValueError(
                "no bootstrap servers: set MINDSTREAM_KAFKA__BOOTSTRAP_SERVERS or start the embedded broker"
            )
        conf: dict[str, str | int] = {"bootstrap.servers": servers, "security.protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            if not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
                raise ValueError("SASL needs sasl_mechanism, sasl_username and sasl_password")
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        optional = {
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
        }
        conf.update({k: str(v) for k, v in optional.items() if v is not None})
        if self.ssl_key_password is not None:
            conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        return conf


class EvalSettings(_Section):
    top_n: int = Field(50, ge=1, le=1000, description="N of Recall@N / NDCG@N / HitRate@N")
    backend: Literal["exact", "milvus"] = "exact"
    chunk_users: int = Field(1024, ge=1, description="Users scored per chunk by the exact backend")


class DataSettings(_Section):
    dataset: Literal["ml-100k", "amazonbook-demo", "synthetic"] = "ml-100k"
    amazonbook_dir: Path = AMAZONBOOK_DEMO_DIR
    split_seed: int = 2026
    core: int = Field(5, ge=1, description="k-core filter for MovieLens (items >= k, then users >= k)")
    history_share: float = Field(0.8, gt=0, lt=1, description="Held-out users: share of clicks used as history")

    path: Path | None = Field(
        None, description="Your own data: a PaddleRec-format directory or a CSV/TSV log (overrides dataset)"
    )
    items: Path | None = Field(
        None,
        description="Item file of your own data (header item_id, category; optional title): categories for the "
        "beyond-accuracy metrics and the `diversity` merge; default: items.csv / items.tsv in a data directory",
    )

    @property
    def name(self) -> str:
        """The configured data set's name (checkpoints live under ``<checkpoints>/<name>``)."""
        return dataset_name(self.path) if self.path is not None else self.dataset

    def load(self, name: str | None = None) -> Dataset:
        """Load ``name`` (default: the configured data set, or ``path``) with these split parameters."""
        if name is None and self.path is not None:
            return load_path(
                self.path, seed=self.split_seed, core=self.core, history_share=self.history_share, items=self.items
            )
        return load_dataset(
            name or self.dataset,
            split_seed=self.split_seed,
            core=self.core,
            history_share=self.history_share,
            amazonbook_dir=self.amazonbook_dir,
        )

    def item_catalogue(self) -> ItemCatalogue | None:
        """The configured data's item categories (by external id) without loading its clicks: ML-100K's
        genres, your own item file, else None (the `diversity` merge then compares item vectors)."""
        if self.items is not None:
            return read_item_file(self.items)
        if self.path is not None:
            found = find_item_file(self.path) if self.path.is_dir() else None
            return read_item_file(found) if found is not None else None
        if self.dataset == "ml-100k":
            try:
                return ml100k_items(locate_ml100k())
            except FileNotFoundError:
                return None
        return None


class StateRetentionSettings(_Section):
    """What the ingest state keeps (docs/retention.md): disk follows users x ``history`` + the window."""

    enabled: bool = Field(True, description="Delete rows outside the kept set, a small batch between ingest batches")
    history: int = Field(
        200,
        ge=1,
        description="Clicks kept per user (newest by event time): at least what the refresh's training histories "
        "(refresh.train_history, 200), the tower (mind.maxlen) and the fast path's co-click reads (mind.maxlen) take",
    )
    window: int = Field(
        1_000_000,
        ge=1,
        description="Newest events of each partition file kept whatever the refresh consumed (the training "
        "buffer's window; one refresh round's worth by default)",
    )
    max_unconsumed: int | None = Field(
        None,
        ge=1,
        description="At most this many events the refresh has not consumed are kept per file (a stopped refresh "
        "must not fill the disk); unset = kept until consumed",
    )
    batch: int = Field(1000, ge=1, description="Rows scanned per retention step (one short transaction)")
    interval_s: float = Field(1.0, gt=0, description="Pause between steps once a pass has caught up")
    budget_s: float = Field(
        0.2,
        gt=0,
        description="While rows are left, steps repeat between two ingest batches for up to this long (the "
        "user-side freshness pays it at most once per batch)",
    )
    vacuum_pages: int = Field(
        1024, ge=0, description="Free pages given back to the file system per step (incremental vacuum)"
    )


class StateSettings(_Section):
    """Where the ingest state lives (docs/state-store.md): user histories, the training stream, dedupe, offsets."""

    backend: Literal["sqlite", "redis"] = Field(
        "sqlite",
        description="sqlite: one file per partition under state_dir (one host); redis: a Redis server that workers "
        "on many hosts share (state.redis_url)",
    )
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="The Redis server of the redis backend (redis://[user:password@]host:port/db, rediss:// for TLS)",
    )
    redis_timeout_s: float = Field(
        10.0, gt=0, description="Socket timeout of every Redis call (connect, read): a server that hangs fails the call"
    )


class ModelStoreSettings(_Section):
    """Where model versions are shared between the refresh worker (writer) and the readers."""

    store_url: str = Field(
        "",
        description="Empty: the local models directory under state_dir (one host); s3://bucket/prefix: an "
        "S3-compatible bucket (the MinIO Milvus uses) that workers on many hosts share",
    )
    endpoint_url: str = Field("", description="The S3 endpoint (e.g. http://minio:9000); empty: AWS")
    access_key: SecretStr | None = Field(None, description="S3 access key id; None: the default credential chain")
    secret_key: SecretStr | None = Field(None, description="S3 secret access key")
    cache_versions: int = Field(
        3, ge=1, description="Versions a reader keeps in its local cache (state_dir/model-cache) of a remote store"
    )


class IngestSettings(_Section):
    batch_size: int = Field(5000, ge=1, description="A batch closes at this many messages ...")
    batch_timeout_s: float = Field(0.5, gt=0, description="... or after this long, whichever first")
    dlq_flush_timeout_s: float = Field(
        10.0, gt=0, description="A batch whose dead letters are not acknowledged in this time is read again"
    )
    retry_backoff_s: float = Field(
        1.0, ge=0, description="Pause before reading a batch again after its dead letters were not acknowledged"
    )
    stats_interval_ms: int = Field(5000, ge=0, description="librdkafka stats (consumer lag gauge); 0 = off")
    dedupe_window: int | None = Field(
        5_000_000,
        ge=1,
        description="Event ids remembered per partition to drop re-sent copies: the last this-many to twice as "
        "many events (16 bytes each); a copy arriving later is applied again. Unset = every event, forever",
    )
    retention: StateRetentionSettings = Field(StateRetentionSettings(), description="What the state files keep")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve /metrics here; unset = off")


class RefreshSettings(_Section):
    interval_s: float = Field(30.0, gt=0, description="Refresh at least this often when there are new events")
    min_new_events: int = Field(50_000, ge=1, description="... or as soon as this many new events arrived")
    max_events_per_round: int = Field(
        1_000_000, ge=1, description="At most this many new events per round; the rest wait for the next one"
    )
    train_batches: int = Field(300, ge=1, description="Incremental training batches per refresh")
    train_history: int = Field(
        200,
        ge=1,
        description="Newest clicks read per touched user for a round's training set (the ingest state keeps "
        "state.retention.history of them); a round reads users x this many rows",
    )
    replay_users: int = Field(2000, ge=0, description="Older users mixed into each refresh (replay sample)")
    quality_margin: float = Field(0.02, ge=0, description="Abort the swap if Recall@N drops more than this")
    quality_users: int = Field(200, ge=0, description="Held-out users (last click) for the quality gate")
    probe_items: int = Field(20, ge=1, le=1000, description="Items probed in the shadow before the swap")
    item_ttl_s: float | None = Field(
        None, gt=0, description="An item not clicked for this long leaves the next published version; unset = never"
    )
    fast_path: bool = Field(True, description="Add new items to the live version between major rounds")
    fast_path_interval_s: float = Field(1.0, gt=0, description="How often the fast path looks for new items")
    fast_path_max_events: int = Field(100_000, ge=1, description="Clicks read per fast-path step at most")
    max_new_items_per_round: int = Field(
        100_000,
        ge=1,
        description="Items the live vocabulary does not know that one round adds at most (table rows, Adam state): a "
        "round takes its clicks oldest first and stops before the click that would bring one more new item; the "
        "rest wait in the ingest state for the next round (mindstream_refresh_new_items_deferred_total)",
    )
    fast_path_max_pending: int = Field(
        100_000,
        ge=1,
        description="New items the fast path holds at most (waiting for context, or added and waiting for a major "
        "version); an item first clicked while it is full is left to the next major round (or to a later click "
        "once there is room)",
    )
    max_segments: int = Field(
        64,
        ge=0,
        le=1000,
        description="Click segments that get a Milvus partition of their own: the first this-many seen, recorded in "
        "<refresh dir>/segments.sqlite; items of any later segment go to the default partition "
        "(mindstream_refresh_segments_overflow_total). Milvus caps partitions per collection (1,024 in 2.3)",
    )
    cold_start: ColdStartRule = Field(
        "steps",
        description="Fast-path vector of a new item: 'co_click' = mean of the live vectors of its clickers' history "
        "items; 'steps' = a few optimiser steps on its row alone from that mean (bench/results/cold_start.json)",
    )
    cold_start_steps: ColdStartSteps = Field(ColdStartSteps(), description="The 'steps' rule's budget")
    compact_share: float = Field(
        0.25, gt=0, le=1, description="Compact the item table (drop expired rows) once this share of rows expired"
    )
    publication: Literal["delta", "full"] = Field(
        "delta",
        description="How a major round publishes: 'delta' writes into the live collection only the rows that changed "
        "beyond delta_threshold (new epochs on a schedule: epoch_rounds); 'full' builds a new collection with every "
        "item each round and swaps the alias",
    )
    delta_threshold: float = Field(
        0.1,
        ge=0,
        description="A delta writes an item's new vector when it moved more than this (relative L2, against the "
        "published row) since it was published; every searched vector is within it of the reply's version",
    )
    epoch_rounds: int = Field(
        500,
        ge=1,
        description="A full rebuild (new collection, index built once, alias swap) after this many delta rounds",
    )
    grace_period_s: float = Field(60.0, ge=0, description="Keep superseded collections this long (rollback)")
    keep_previous: int = Field(1, ge=1, description="Superseded collections kept for rollback after the grace")
    keep_versions: int = Field(
        3,
        ge=1,
        description="Newest model directories kept on disk; older ones go unless Milvus still holds their "
        "collection (live, rollback targets, the grace period)",
    )
    poll_s: float = Field(0.5, gt=0, description="How often the refresh loop checks its triggers")
    nice: int = Field(
        10,
        ge=0,
        le=19,
        description="CPU niceness of the refresh worker's major rounds: training yields to serving and to the "
        "fast path",
    )
    heap_profile: bool = Field(
        False,
        description="Diagnostic: trace Python allocations and write <refresh dir>/heap_profile.json after every "
        "major round (RSS, traced and untraced memory, the lines that grew most); slows the worker",
    )
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve /metrics here; unset = off")


class CatalogueSettings(_Section):
    """The catalogue worker (``mindstream catalogue``): the items topic -> per-partition SQLite state."""

    batch_size: int = Field(5000, ge=1, description="A batch closes at this many messages ...")
    batch_timeout_s: float = Field(0.5, gt=0, description="... or after this long, whichever first")
    dlq_flush_timeout_s: float = Field(
        10.0, gt=0, description="A batch whose dead letters are not acknowledged in this time is read again"
    )
    retry_backoff_s: float = Field(
        1.0, ge=0, description="Pause before reading a batch again after its dead letters were not acknowledged"
    )
    max_clock_skew_ms: int = Field(
        600_000,
        ge=0,
        description="An item event stamped more than this ahead of the catalogue worker's clock is dead-lettered: "
        "the newest ts wins, so a far-future one would freeze its item against every real event after it",
    )
    poll_s: float = Field(
        0.5,
        gt=0,
        description="How often a reader of the catalogue (recall, gateway) reads its changes: with the worker's "
        "batch_timeout_s, what a withdrawal waits at most before no recall returns the item",
    )
    stats_interval_ms: int = Field(5000, ge=0, description="librdkafka stats (consumer lag gauge); 0 = off")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve /metrics here; unset = off")


class RecallSettings(_Section):
    max_batch: int = Field(64, ge=1, description="Requests micro-batched into one Milvus search")
    max_wait_ms: float = Field(
        0.0, ge=0, description="Extra wait to fill a micro-batch (0: batch what is already queued, add no delay)"
    )
    fetch_wait_max_ms: int = Field(
        500,
        ge=0,
        description="librdkafka fetch.wait.max.ms of request/reply consumers: how long an empty fetch waits on the "
        "broker. Kafka answers a waiting fetch as soon as a record arrives, so this costs no latency; a small value "
        "only makes idle consumers poll the broker more often (docs/broker.md)",
    )
    alias_check_s: float = Field(0.5, gt=0, description="How often the live alias is re-resolved")
    reply_to_allowed: list[str] | None = Field(
        None,
        description="Topics a request's reply_to header may name: exact names, or prefixes when they end in '.'; "
        "unset = the replies topic and '<replies topic>.<suffix>' (RecallClient's private topics). Internal "
        "(__*) and the stack's clicks, dead-letter and requests topics are refused whatever this says",
    )
    max_correlation_id_bytes: int = Field(
        256, ge=1, le=65_536, description="Longest correlation_id header a reply echoes; a longer one is refused"
    )
    client_timeout_s: float = Field(
        5.0, gt=0, description="RecallClient reply timeout; the HTTP gateway answers 504 past it"
    )
    # The engine's budget and Milvus breaker (workers/recall/budget.py, breaker.py; issue 29).
    max_request_cost: int = Field(
        20_480,
        ge=1,
        description="Largest request in users x top_k (256 users x 80, 100 x 200, 20 x 1000); a larger one is "
        "answered too_large. Sized by the reply: in JSON an item costs at most ~44 bytes (a 19-digit id and a "
        "24-character score, with commas), so 20,480 items stay under ~0.91 MB, within a 1,000,000-byte Kafka record "
        "(kafka.max_message_bytes)",
    )
    max_diverse_top_k: int = Field(
        200,
        ge=1,
        description="Largest top_k of a request with diversity > 0: its greedy merge costs ~K x top_k^2 per user "
        "(top_k picks over K x top_k candidates); more is answered too_large",
    )
    max_batch_cost: int = Field(
        65_536,
        ge=1,
        description="Largest Milvus search, in users x the largest top_k among them: a micro-batch above it is cut "
        "into consecutive searches (a request alone is searched alone whatever its cost), all on the same model. "
        "Bounds one search's result to K x this many rows (ids and scores: 3 MB at K=4)",
    )
    breaker_open_s: float = Field(
        5.0,
        gt=0,
        description="After a transient Milvus failure, recall answers unavailable at once for this long instead of "
        "waiting on Milvus for every batch; then one trial batch searches, and its success closes the circuit. "
        "Equal to the client timeout: a caller that gave up retries into a new trial",
    )
    # The fallback for users with no usable history (workers/recall/popular.py; issue 32).
    popular_half_life_s: float = Field(
        3600.0,
        gt=0,
        description="The fallback's window: a click counts 1 when it happens and half as much every this many "
        "seconds later (event time, clamped to the reader's clock)",
    )
    popular_capacity: int = Field(
        10_000,
        ge=1,
        description="Items the fallback's decayed counts keep (the most clicked): between this and twice as many "
        "are held, pruned back to this many by count; an item that comes in after a prune starts from the "
        "largest count pruned (Space-Saving: counts high by at most that, never low)",
    )
    popular_refresh_s: float = Field(1.0, gt=0, description="How often the fallback reads new clicks from the state")
    popular_max_events: int = Field(
        100_000, ge=1, description="Clicks the fallback reads per refresh at most (the rest on the next)"
    )
    # Availability and filters inside / after the search (workers/recall/item_filters.py; issue 32).
    unavailable_in_search: int = Field(
        1000,
        ge=0,
        description="Withdrawn items named in the Milvus search expression (item_id not in [...]) up to this many "
        "(each one lengthens every search); with more, they are left out after the search, which then asks each "
        "interest for post_filter_overfetch more candidates",
    )
    post_filter_overfetch: int = Field(
        200,
        ge=0,
        le=10_000,
        description="Extra candidates per interest when items are left out after the search without being counted "
        "(withdrawn items past unavailable_in_search; filters on a collection built before the metadata fields): "
        "top_k is still filled unless more than this many of an interest's best are left out",
    )
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve /metrics here; unset = off")


class StreamSettings(_Section):
    """What ``mindstream up`` feeds the live system: the held-out replay, then a continuous stream."""

    rate: float = Field(200.0, gt=0, description="Clicks per second sent into the clicks topic")
    recall_rate: float = Field(20.0, ge=0, description="Recall requests per second over Kafka alongside")
    http_rate: float = Field(0.0, ge=0, description="Recall requests per second over HTTP alongside")
    new_items_per_s: float = Field(0.5, ge=0, description="Brand-new items born per second in the continuous stream")
    drift_per_s: float = Field(0.02, ge=0, description="Share of users whose current interest moves, per second")
    burst_every_s: float = Field(120.0, gt=0, description="Mean seconds between bursts (one item suddenly popular)")
    burst_s: float = Field(10.0, gt=0, description="How long a burst lasts")
    burst_share: float = Field(0.2, ge=0, le=1, description="Share of clicks going to the bursting item")
    users: int = Field(5000, ge=1, description="Users of the continuous stream (ids past the data set's users)")
    seed: int = 7
    linger_ms: int = Field(
        50, ge=0, description="Producer linger of the stream: a few large batches instead of many small ones"
    )
    window_s: float = Field(60.0, gt=0, description="The progress line's freshness and latency cover this window")


class HttpSettings(_Section):
    host: str = Field("127.0.0.1", description="Bind address of the HTTP gateway (loopback unless told otherwise)")
    port: int = Field(8000, ge=1, le=65535)
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token for the admin endpoints (/rec/drop, /rec/insert_data, /rec/rollback, /rec/refresh); "
        "unset = refused. It also opens what the read token opens",
    )
    read_token: SecretStr | None = Field(
        None,
        description="Bearer token for a user's history: POST /rec/recall with user_ids and POST /ui/api/explore with "
        "user_id (hist_item and items stay open); unset = refused unless the admin token is sent",
    )
    allowed_hosts: list[str] = Field(
        default_factory=lambda: list(LOOPBACK_HOSTS),
        description="Host header names (port stripped; '*.example.com' = its subdomains) the gateway answers, any "
        "other name gets 400: a web page cannot reach the gateway through a name of its own (DNS rebinding); IP "
        "addresses always pass. Unset = 127.0.0.1, localhost, [::1] and http.host when it is not 0.0.0.0 or ::. "
        "Behind a proxy or when binding 0.0.0.0, list the names clients use (JSON: "
        '\'["gw.example.com", "localhost"]\'); ["*"] turns the check off',
    )
    max_queue: int = Field(
        1024,
        ge=1,
        description="Recall requests waiting for the gateway's batcher at most; past it, requests whose caller is gone "
        "or timed out are dropped, and if it is still full the new one gets 503 with Retry-After",
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After (seconds) of the 503 answered when the queue is full")
    ui_sample_s: float = Field(
        5.0, gt=0, description="How often the /ui page's status reads the workers' metrics (one read for all pages)"
    )
    ui_metrics: dict[Literal["ingest", "refresh", "recall"], str] = Field(
        default_factory=dict,
        description="Metrics URL of a worker for /ui; default http://127.0.0.1:<its metrics_port>/metrics where set",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_allowed_hosts(cls, data: object) -> object:
        """``allowed_hosts`` not given: the loopback names, plus ``host`` when it names one address."""
        if not isinstance(data, dict) or "allowed_hosts" in data:
            return data
        host = str(data.get("host", cls.model_fields["host"].default)).strip().lower()
        names = list(LOOPBACK_HOSTS)
        if host and host not in ANY_ADDRESS:
            name = f"[{host}]" if ":" in host and not host.startswith("[") else host  # IPv6 as in a Host header
            if name not in names:
                names.append(name)
        return {**data, "allowed_hosts": names}


_UP_METRICS_PORTS: dict[MetricsWorker, int] = {"ingest": 9101, "refresh": 9102, "recall": 9103, "catalogue": 9104}


class SupervisorSettings(_Section):
    """How ``mindstream up`` restarts a worker process that exited."""

    backoff_max_s: float = Field(30.0, gt=0, description="A crashed worker restarts after 1, 2, 4 ... s, at most this")
    healthy_after_s: float = Field(
        60.0,
        gt=0,
        description="A worker that ran this long before it exited counts as healthy: its restart delay starts "
        "again from 1 s",
    )
    ready_timeout_s: float = Field(
        600.0, gt=0, description="How long a started stack waits for every worker's /readyz (benchmarks, tests)"
    )
    stop_timeout_s: float = Field(
        30.0, gt=0, description="A worker not gone this long after SIGTERM (finish the batch, commit) is killed"
    )
    metrics_ports: dict[MetricsWorker, int] = Field(
        default_factory=lambda: _UP_METRICS_PORTS.copy(),
        description="The /metrics (and /readyz) port `mindstream up` gives a worker whose own metrics_port is unset: "
        "those ops/prometheus/prometheus.local.yml scrapes",
    )


class Settings(BaseSettings):
    """Root settings: ``MINDSTREAM_<FIELD>`` and ``MINDSTREAM_<SECTION>__<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", env_parse_none_str=ENV_NONE, extra="ignore"
    )

    state_dir: Path = Field(Path(".mindstream"), description="Checkpoints, embedded Milvus data, worker state")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    metrics_host: str = Field(
        "127.0.0.1",
        description="Bind address of every worker's /metrics server (*__METRICS_PORT): loopback unless told "
        "otherwise; 0.0.0.0 where Prometheus scrapes from another host or container (docker-compose.yml)",
    )
    heartbeat_timeout_s: float = Field(
        60.0,
        gt=0,
        description="A worker's /healthz (served beside its /metrics) answers 503 once its loop has not beaten "
        "for this long: a step (one batch) that never returns; longer than any batch, round step or retry wait",
    )
    mind: MindConfig = MindConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalSettings = EvalSettings()
    data: DataSettings = DataSettings()
    milvus: MilvusSettings = MilvusSettings()
    kafka: KafkaSettings = KafkaSettings()
    ingest: IngestSettings = IngestSettings()
    state: StateSettings = StateSettings()
    models: ModelStoreSettings = ModelStoreSettings()
    refresh: RefreshSettings = RefreshSettings()
    recall: RecallSettings = RecallSettings()
    catalogue: CatalogueSettings = CatalogueSettings()
    http: HttpSettings = HttpSettings()
    stream: StreamSettings = StreamSettings()
    supervisor: SupervisorSettings = SupervisorSettings()

    @model_validator(mode="after")
    def _recommended_interests(self) -> Settings:
        """``mind.k_max`` not set (``MINDSTREAM_MIND__K_MAX``): the data set's recommended interest count."""
        if "k_max" not in self.mind.model_fields_set:
            k = recommended_k_max(self.data.name)
            if k != self.mind.k_max:
                self.mind = self.mind.model_copy(update={"k_max": k})
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        env = _LOADING_FROM.get()
        if env is None:
            return init_settings, env_settings, dotenv_settings, file_secret_settings
        return init_settings, _MappingEnvSource(settings_cls, env)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """The settings a worker started with environment ``env`` loads (this process's own is not read)."""
        token = _LOADING_FROM.set(env)
        try:
            return cls()
        finally:
            _LOADING_FROM.reset(token)

    def to_env(self) -> dict[str, str]:
        """These settings as the ``MINDSTREAM_*`` variables a worker process loads them from, every field
        (secrets in clear, None as ``null``): ``Settings()`` in an environment holding them equals ``self``."""
        return dict(_env_items(self, ENV_PREFIX))

    @property
    def checkpoint_dir(self) -> Path:
        return self.state_dir / "checkpoints"

    @property
    def milvus_dir(self) -> Path:
        return self.state_dir / "milvus"

    @property
    def kafka_dir(self) -> Path:
        """The embedded broker's storage (formatted once) and logs."""
        return self.state_dir / "kafka"

    @property
    def models_dir(self) -> Path:
        """Checkpoints of the served (streaming) models, ``v<N>`` = collection ``<alias>_v<N>``."""
        return self.state_dir / "models"

    @property
    def ingest_dir(self) -> Path:
        return self.state_dir / "ingest"

    @property
    def catalogue_dir(self) -> Path:
        """The catalogue worker's state (one SQLite file per items partition)."""
        return self.state_dir / "catalogue"

    @property
    def refresh_dir(self) -> Path:
        return self.state_dir / "refresh"

    @property
    def admin_token_file(self) -> Path:
        """Where ``mindstream up`` keeps the local stack's admin token (mode 0600)."""
        return self.state_dir / "admin-token"

    @property
    def read_token_file(self) -> Path:
        """Where ``mindstream up`` keeps the local stack's read token (mode 0600)."""
        return self.state_dir / "read-token"


_LOADING_FROM: ContextVar[Mapping[str, str] | None] = ContextVar("settings_env", default=None)


class _MappingEnvSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._mapping = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        fold = (lambda key: key) if self.case_sensitive else str.lower
        return {fold(k): None if v == self.env_parse_none_str else v for k, v in self._mapping.items()}


def _env_items(model: BaseModel, prefix: str) -> Iterator[tuple[str, str]]:
    """``(MINDSTREAM_<SECTION>__<FIELD>, value)`` for every field of ``model``, nested sections joined by ``__``."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _env_items(value, f"{prefix}{name.upper()}__")
        else:
            yield f"{prefix}{name.upper()}", _env_value(value)


def _env_value(value: object) -> str:
    if value is None:
        return ENV_NONE
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float | Path):
        return str(value)
    return json.dumps(value)  # lists and dicts: pydantic-settings parses a complex field's value as JSON
