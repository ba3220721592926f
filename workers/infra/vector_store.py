"""Item vectors in Milvus: collections, per-segment partitions, aliases, search and swap probes.

Schema of an item collection: ``id`` INT64 primary key (the item id), ``vector``
FLOAT_VECTOR(dim), ``model_version`` VARCHAR (the model that produced the vector) and
``segment`` VARCHAR (keyed collections: :mod:`workers.infra.row_keys`). Collections made since the
catalogue (issue 32) also carry the item's catalogue metadata, for the requests' filters:
``categories`` ARRAY<VARCHAR> and ``item_segment`` VARCHAR (the items topic's segment, ``""`` for
none; not the partition, which follows the item's clicks). Every row written takes them from the
store's :class:`RowMetadata` (the catalogue as it is when the row is written; none: empty), so a
row of an item keeps the metadata of its last write until it is written again
(:mod:`workers.refresh.delta` rewrites items whose metadata changed).

Segments are **explicit partitions**, one Milvus partition per segment, named after it (the
default segment is ``"all"``). Chosen over a partition key because a partition key hashes
values into a fixed number of shared physical partitions: a segment could not be dropped or
reloaded on its own, only filtered. With explicit partitions a segment refresh is
``drop_segment`` + ``insert(segment=...)``, and ``search(segments=[...])`` prunes to the
partitions asked for. The ``segment`` field repeats the partition name so that a row says
where it lives. Milvus 2.3 allows at most 1,024 partitions per collection.

Consistency: searches use ``milvus.search_consistency`` (default Eventually: no wait; Bounded: the
server first applies the writes of up to 5 s ago), or Strong when asked; ``count`` and ``probe`` use Strong
(~200 ms more per call) because they verify what was just written.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException
from pymilvus.client.utils import check_status
from pymilvus.exceptions import ConnectError, ErrorCode, MilvusUnavailableException, ParamError
from pymilvus.grpc_gen import milvus_pb2, schema_pb2

from schemas.messages import MAX_CATEGORIES_PER_ITEM, MAX_CATEGORY_LENGTH, MAX_SEGMENT_LENGTH
from workers.infra.row_keys import KEY_LENGTH, OPEN, item_ids_of, row_keys, visible
from workers.settings import MilvusSettings

try:  # pymilvus internals behind VectorStore._search_raw (pymilvus 3.0); the public search otherwise
    from pymilvus.client import ts_utils as _ts_utils
    from pymilvus.client.call_context import _api_level_md
    from pymilvus.client.prepare import Prepare as _Prepare

    _RAW_SEARCH = True
except ImportError:  # pragma: no cover - another pymilvus
    _RAW_SEARCH = False

__all__ = [
    "DEFAULT_SEGMENT",
    "PAD_ID",
    "AliasedCollectionError",
    "MilvusSearcher",
    "ProbeResult",
    "RowMetadata",
    "SearchResult",
    "VectorStore",
    "insert_request",
    "is_transient",
    "with_retry",
]

log = logging.getLogger(__name__)


DEFAULT_SEGMENT = "all"
PAD_ID = 0  # id of padding slots in SearchResult.ids; the score there is the worst possible
MAX_NQ = 8_192  # queries per search call (Milvus caps nq and top_k at 16,384)
MAX_TOP_K = 16_384
VERSION_MAX_LEN = 128
IVF_NLIST = 1_024
IVF_NPROBE = 32
HNSW_EXHAUSTIVE_EF_FACTOR = 8  # a filtered HNSW search that came back short is searched again with 8x the ef
HNSW_MAX_EF = 32_768

METADATA_FIELDS = ("categories", "item_segment")  # the catalogue's, on every row (collections made since issue 32)

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_ALIAS_EXISTS = 1602
_TRANSIENT_GRPC = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Milvus error codes: 2 service unavailable, 4 request limit exceeded, 8 rate limited.
_TRANSIENT_CODES = {2, 4, int(ErrorCode.RATE_LIMIT)}

T = TypeVar("T")


class AliasedCollectionError(RuntimeError):
    """Refused to drop a collection that an alias still points at (Milvus would allow it)."""


def is_transient(exc: BaseException) -> bool:
    """Connection trouble, overload, rate limits and "not ready": worth retrying. Bad requests are not."""
    if isinstance(exc, ParamError):
        return False
    if isinstance(exc, MilvusUnavailableException | ConnectError | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        return code in _TRANSIENT_GRPC
    if isinstance(exc, MilvusException):
        return exc.code in _TRANSIENT_CODES or "not ready" in str(exc.message).lower()
    return False


def with_retry(call: Callable[[], T], what: str, attempts: int = 5, base_s: float = 0.2, cap_s: float = 5.0) -> T:
    """Run ``call``; on a transient error sleep ``min(cap_s, base_s * 2**i)`` and try again."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts - 1 or not is_transient(exc):
                raise
            delay = min(cap_s, base_s * 2**attempt)
            log.warning("%s failed (%s); retry %d/%d in %.1f s", what, exc, attempt + 1, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class SearchResult:
    """``ids`` int64 [nq, top_k] and ``scores`` float32 [nq, top_k], best first.

    Slots without a hit hold ``PAD_ID`` and the worst score (-inf for IP/COSINE, +inf for L2).
    ``model_versions`` is every version seen among the hits (empty if not asked for).
    """

    ids: np.ndarray
    scores: np.ndarray
    model_versions: frozenset[str] = field(default_factory=frozenset)


class RowMetadata(Protocol):
    """What a row carries besides its vector: the catalogue's segment (``""``: none) and categories of
    each item, in the order of ``item_ids``."""

    def metadata_of(self, item_ids: np.ndarray) -> tuple[list[str], list[list[str]]]: ...


@dataclass(frozen=True)
class Rows:
    """Rows of item vectors to write: per row its item id, vector, model version, the generation it is
    written at and the generation it is valid until (``row_keys.OPEN``: until replaced)."""

    item_ids: np.ndarray  # int64 [n]
    vectors: np.ndarray  # float32 [n, dim]
    model_versions: list[str]
    generations: np.ndarray  # int64 [n]
    gen_to: np.ndarray  # int64 [n]

    @classmethod
    def of(
        cls, item_ids: np.ndarray, vectors: np.ndarray, model_version: str, generation: int, gen_to: int = OPEN
    ) -> Rows:
        ids = np.asarray(item_ids, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32)
        if ids.ndim != 1 or vectors.ndim != 2 or len(ids) != len(vectors):
            raise ValueError(f"ids [n] and vectors [n, dim] expected, got {ids.shape} and {vectors.shape}")
        n = len(ids)
        full = np.full(n, generation, dtype=np.int64)
        return cls(ids, vectors, [model_version] * n, full, np.full(n, gen_to, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])

    def __getitem__(self, at: slice | np.ndarray) -> Rows:
        versions = (
            self.model_versions[at]
            if isinstance(at, slice)
            else [self.model_versions[i] for i in np.arange(len(self))[at].tolist()]
        )
        return Rows(self.item_ids[at], self.vectors[at], versions, self.generations[at], self.gen_to[at])

    def closed(self, gen_to: int) -> Rows:
        """The same rows, valid until ``gen_to``."""
        return Rows(self.item_ids, self.vectors, self.model_versions, self.generations, np.full(len(self), gen_to))

    def written_at(self, generation: int) -> Rows:
        """The same rows, written at ``generation`` (and open)."""
        n = len(self)
        return Rows(self.item_ids, self.vectors, self.model_versions, np.full(n, generation), np.full(n, OPEN))

    def columns(self, segment: str, keyed: bool) -> dict[str, list[Any]]:
        """Every scalar field's column for a collection with (``keyed``) or without row keys."""
        n = len(self)
        columns: dict[str, list[Any]] = {
            "model_version": list(self.model_versions),
            "segment": [segment] * n,
            "generation": self.generations.tolist(),
        }
        if not keyed:
            return {"id": self.item_ids.tolist(), **columns}
        keys = row_keys(self.item_ids, self.generations)
        return {"id": keys, "item_id": self.item_ids.tolist(), **columns, "gen_to": self.gen_to.tolist()}


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of :meth:`VectorStore.probe`; truthy when every probe item was found intact."""

    checked: int
    missing: tuple[int, ...] = ()
    mismatched: tuple[int, ...] = ()
    wrong_version: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.missing or self.mismatched or self.wrong_version)

    def __bool__(self) -> bool:
        return self.ok


def _check_name(kind: str, name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid {kind} name {name!r}: letters, digits and _, not starting with a digit")
    return name


class VectorStore:
    """Thin, typed layer over ``pymilvus.MilvusClient`` for item-vector collections."""

    def __init__(
        self,
        uri: str,
        settings: MilvusSettings,
        client: MilvusClient | None = None,
        *,
        serving: bool = False,
        metadata: RowMetadata | None = None,
    ) -> None:
        """``serving``: a recall path's store: :meth:`search` is tried once with ``serving_search_timeout_s``
        (the recall engine's circuit breaker handles failures) instead of retried with ``timeout_s``.
        ``metadata``: where every row written takes its item's catalogue metadata from (a writer's store
        should have one: :class:`workers.catalogue.row_metadata.CatalogueMetadata`); None = empty."""
        self.settings = settings
        self.serving = serving
        self.metadata = metadata
        self._with_metadata: dict[str, bool] = {}  # collection -> has the catalogue metadata fields
        self._kinds: dict[str, str] = {}  # collection -> index type (search parameters follow it)
        self._keyed: dict[str, bool] = {}  # collection -> has row keys (row_keys) or the older id = item id
        token = settings.token.get_secret_value() if settings.token else ""
        self.client = client or with_retry(
            lambda: MilvusClient(uri=uri, token=token, timeout=settings.timeout_s), f"connect to {uri}"
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return with_retry(lambda: fn(*args, timeout=self.settings.timeout_s, **kwargs), what)

    def _call_search(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.serving:
            return fn(*args, timeout=self.settings.serving_search_timeout_s, **kwargs)
        return self._call(what, fn, *args, **kwargs)

    # -- collections ----------------------------------------------------------------------------

    def create_collection(self, name: str, dim: int) -> None:
        """Create an empty collection (not indexed, not loaded) with the default segment partition."""
        _check_name("collection", name)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=KEY_LENGTH)  # row_keys.row_keys
        schema.add_field("item_id", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("model_version", DataType.VARCHAR, max_length=VERSION_MAX_LEN)
        schema.add_field("segment", DataType.VARCHAR, max_length=255)
        schema.add_field("generation", DataType.INT64)  # written at; 0: the epoch's build
        schema.add_field("gen_to", DataType.INT64)  # valid until (exclusive); row_keys.OPEN while current
        schema.add_field(  # the catalogue's categories of the item (filters: array_contains_any)
            "categories",
            DataType.ARRAY,
            element_type=DataType.VARCHAR,
            max_capacity=MAX_CATEGORIES_PER_ITEM,
            max_length=MAX_CATEGORY_LENGTH,
        )
        schema.add_field("item_segment", DataType.VARCHAR, max_length=MAX_SEGMENT_LENGTH)  # the catalogue's; "": none
        self._call(f"create {name}", self.client.create_collection, name, schema=schema)
        self._keyed[name] = True
        self._with_metadata[name] = True
        self.ensure_segment(name, DEFAULT_SEGMENT)
        log.info("created collection %s (dim %d)", name, dim)

    def has_collection(self, name: str) -> bool:
        return bool(self._call(f"has {name}", self.client.has_collection, name))

    def list_collections(self, prefix: str = "") -> list[str]:
        names: list[str] = with_retry(self.client.list_collections, "list collections")
        return sorted(n for n in names if n.startswith(prefix))

    def drop_collection(self, name: str) -> None:
        """Drop ``name`` unless an alias points at it (move or drop the alias first).

        The check and the drop are two calls: a concurrent ``point_alias`` can slip in between.
        Callers serialise swaps (one writer) to make that impossible.
        """
        aliases = self.aliases_of(name)
        if aliases:
            raise AliasedCollectionError(f"collection {name} is still the target of alias(es) {aliases}")
        self._call(f"drop {name}", self.client.drop_collection, name)
        self._kinds.pop(name, None)
        self._keyed.pop(name, None)
        self._with_metadata.pop(name, None)
        log.info("dropped collection %s", name)

    # -- segments (partitions) ------------------------------------------------------------------

    def ensure_segment(self, name: str, segment: str) -> None:
        """Create the partition for ``segment`` if missing (loading it if the collection is loaded)."""
        _check_name("segment", segment)
        if self._call(f"has partition {segment}", self.client.has_partition, name, segment):
            return
        self._call(f"create partition {segment}", self.client.create_partition, name, segment)
        if self._is_loaded(name):
            self._call(f"load partition {segment}", self.client.load_partitions, name, [segment])

    def list_segments(self, name: str) -> list[str]:
        parts: list[str] = self._call(f"partitions of {name}", self.client.list_partitions, name)
        return sorted(p for p in parts if p != "_default")

    def drop_segment(self, name: str, segment: str) -> None:
        """Release and drop one segment's partition (all its rows)."""
        _check_name("segment", segment)
        self._call(f"release {segment}", self.client.release_partitions, name, [segment])
        self._call(f"drop partition {segment}", self.client.drop_partition, name, segment)
        log.info("dropped segment %s of %s", segment, name)

    # -- data -----------------------------------------------------------------------------------

    def insert(
        self,
        name: str,
        ids: np.ndarray,
        vectors: np.ndarray,
        model_version: str,
        segment: str = DEFAULT_SEGMENT,
        generation: int = 0,
    ) -> int:
        """Insert rows in batches of ``settings.insert_batch``; return the number inserted.

        ``generation`` tags the rows: 0 for an epoch's build, ``g > 0`` for rows a fast-path step or a
        delta adds to a live collection (searches at generation ``g' < g`` filter them out).

        A batch is retried on transient errors; if a lost reply hid a successful write the
        retry duplicates rows, which the exact :meth:`count` before a swap reveals (a keyed
        collection's keys make a retried batch overwrite itself instead).
        """
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be integers, got {ids.dtype}")
        return self.write_rows(name, Rows.of(ids, vectors, model_version, generation), segment)

    def write_rows(self, name: str, rows: Rows, segment: str = DEFAULT_SEGMENT, *, upsert: bool = False) -> int:
        """Insert (or upsert: same keys replaced) ``rows`` into ``segment``'s partition, in batches."""
        if len(rows.model_versions) and max(len(v) for v in rows.model_versions) > VERSION_MAX_LEN:
            raise ValueError(f"model_version longer than {VERSION_MAX_LEN} characters")
        self.ensure_segment(name, segment)
        keyed = self.is_keyed(name)
        if upsert and not keyed:
            raise ValueError(f"{name}: rows can only be replaced in a keyed collection")
        step = self.settings.insert_batch
        with_metadata = keyed and self.has_metadata(name)
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            columns = chunk.columns(segment, keyed)
            if with_metadata:
                columns.update(self._metadata_columns(chunk.item_ids))
            if _RAW_SEARCH:
                self._call(f"write into {name}", self._write_raw, name, columns, chunk.vectors, segment, upsert)
                continue
            dicts = [  # pragma: no cover - another pymilvus
                {**{k: v[i] for k, v in columns.items()}, "vector": chunk.vectors[i]} for i in range(len(chunk))
            ]
            write = self.client.upsert if upsert else self.client.insert
            self._call(f"write into {name}", write, name, dicts, partition_name=segment)
        log.debug("%s %d rows into %s/%s", "upserted" if upsert else "inserted", len(rows), name, segment)
        return len(rows)

    def _metadata_columns(self, item_ids: np.ndarray) -> dict[str, list[Any]]:
        """``item_segment`` and ``categories`` of rows of ``item_ids`` (:attr:`metadata`; empty without)."""
        n = int(item_ids.shape[0])
        if self.metadata is None:
            return {"item_segment": [""] * n, "categories": [[] for _ in range(n)]}
        segments, categories = self.metadata.metadata_of(item_ids)
        if len(segments) != n or len(categories) != n:
            raise ValueError(f"metadata of {len(segments)}/{len(categories)} items for {n} rows")
        return {"item_segment": segments, "categories": categories}

    def _write_raw(
        self,
        name: str,
        columns: dict[str, list[Any]],
        vectors: np.ndarray,
        partition: str,
        upsert: bool,
        timeout: float | None = None,
    ) -> int:
        """``client.insert`` / ``upsert`` of column data without pymilvus' per-row conversion.

        pymilvus turns each row dict into protobuf values float by float (~4.4 s of CPU for 100k x 64
        here, holding the GIL the fast path needs); this builds the same request from the arrays
        (:func:`insert_request`, equal to pymilvus' own request: tested) and sends it through
        pymilvus' connection, with its schema cache and call metadata (internals of pymilvus 3.0)."""
        conn = self.client._get_connection()
        context = self.client._generate_call_context()
        schema, schema_ts = conn._get_schema(name, timeout=timeout, context=context)
        request = insert_request(name, partition, schema, schema_ts, columns, vectors, upsert=upsert)
        send = conn._stub.Upsert if upsert else conn._stub.Insert
        response = send(request=request, timeout=timeout, metadata=_api_level_md(context))
        check_status(response.status)
        _ts_utils.update_collection_ts(name, response.timestamp, conn.server_address, context.get_db_name())
        return int(response.upsert_cnt if upsert else response.insert_cnt)

    def index_kind(self, rows: int) -> str:
        """The index a collection of ``rows`` items gets: the configured one, or for AUTO exact FLAT up
        to ``flat_max_items`` and IVF_FLAT above (measured in docs/benchmarks.md, Index choice)."""
        kind = self.settings.index_type
        if kind != "AUTO":
            return kind
        return "FLAT" if rows <= self.settings.flat_max_items else "IVF_FLAT"

    def build_index(self, name: str, *, wait: bool = True, rows: int = 0) -> None:
        """Create the vector index for a collection of ``rows`` items (:meth:`index_kind`; HNSW takes
        M/efConstruction from settings).

        ``wait=False`` returns once the index *exists*: Milvus builds it in the background while
        unindexed segments are served brute force or by its interim index, so a collection can be
        loaded and searched at once (what a publish needs), and the index takes over when built."""
        s = self.settings
        kind = self.index_kind(rows)
        params: dict[str, int] = {}
        if kind == "HNSW":
            params = {"M": s.hnsw_m, "efConstruction": s.hnsw_ef_construction}
        elif kind == "IVF_FLAT":
            params = {"nlist": IVF_NLIST}
        index = MilvusClient.prepare_index_params()
        index.add_index("vector", index_type=kind, metric_type=s.metric_type, params=params)
        self._call(f"index {name}", self.client.create_index, name, index, sync=wait)
        self._kinds[name] = kind

    def _kind_of(self, name: str) -> str:
        """The index type of collection ``name`` (cached; read from Milvus once). Callers that search
        through an alias should pass the resolved collection, as the recall engine does."""
        kind = self._kinds.get(name)
        if kind is None:
            info = self._call(f"describe index of {name}", self.client.describe_index, name, "vector")
            kind = self._kinds[name] = str((info or {}).get("index_type") or "FLAT")
        return kind

    def flush(self, name: str) -> None:
        self._call(f"flush {name}", self.client.flush, name)

    def load(self, name: str) -> None:
        """Load the collection (all partitions) into memory; returns when searchable."""
        self._call(f"load {name}", self.client.load_collection, name)

    def release(self, name: str) -> None:
        self._call(f"release {name}", self.client.release_collection, name)

    def _is_loaded(self, name: str) -> bool:
        state = self._call(f"load state of {name}", self.client.get_load_state, name)
        return "Loaded" in str(state.get("state", ""))

    def count(self, name: str, segment: str | None = None, generation: int | None = None) -> int:
        """Exact row count (Strong consistency; the collection must be loaded); with ``generation``, of the
        rows a reader at that generation searches."""
        rows = self._call(
            f"count {name}",
            self.client.query,
            name,
            filter=self.visible_at(name, generation) if generation is not None else "",
            output_fields=["count(*)"],
            partition_names=[segment] if segment else None,
            consistency_level="Strong",
        )
        return int(rows[0]["count(*)"])

    # -- search ---------------------------------------------------------------------------------

    def _search_params(self, top_k: int, kind: str, *, exhaustive: bool = False) -> dict[str, Any]:
        """The index's search parameters; ``exhaustive``: for a filtered search that came back short
        (IVF: every list; HNSW: ``HNSW_EXHAUSTIVE_EF_FACTOR`` times the usual ``ef``)."""
        s = self.settings
        params: dict[str, int] = {}
        if kind == "HNSW":
            ef = max(s.search_ef, top_k)
            params = {"ef": min(ef * HNSW_EXHAUSTIVE_EF_FACTOR, HNSW_MAX_EF) if exhaustive else ef}
        elif kind == "IVF_FLAT":
            params = {"nprobe": IVF_NLIST if exhaustive else IVF_NPROBE}
        return {"metric_type": s.metric_type, "params": params}

    def search(
        self,
        name_or_alias: str,
        queries: np.ndarray,
        top_k: int,
        segments: Sequence[str] | None = None,
        with_versions: bool = True,
        strong: bool = False,
        max_generation: int | None = None,
        filter: str | None = None,
    ) -> SearchResult:
        """Top-``top_k`` items for each query row (nq is chunked into calls of ``MAX_NQ``); with
        ``max_generation`` only rows of generations ``<= max_generation`` are searched; ``filter``: a
        boolean expression the rows must also satisfy (Milvus scalar filtering, applied inside the search:
        ``top_k`` hits whenever that many rows pass it).

        An approximate index searches only part of the rows (IVF: ``nprobe`` of its lists): under a
        selective ``filter`` it can find fewer than ``top_k`` passing rows although more exist (measured:
        ~30 of 50 under a 1% filter on 100k rows, nprobe 32 of 1,024). The queries that came back short
        are searched again exhaustively (IVF: every list, i.e. exact over the passing rows, ~5 ms for 4
        queries under a 1% filter there; HNSW: a larger ``ef``), so a filtered search returns ``top_k``
        hits whenever that many rows pass (IVF; HNSW: very likely)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2:
            raise ValueError(f"queries must be [nq, dim], got shape {queries.shape}")
        if not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be in [1, {MAX_TOP_K}], got {top_k}")
        nq = len(queries)
        pad_score = math.inf if self.settings.metric_type == "L2" else -math.inf
        ids = np.full((nq, top_k), PAD_ID, dtype=np.int64)
        scores = np.full((nq, top_k), pad_score, dtype=np.float32)
        versions: set[str] = set()
        extra: dict[str, Any] = {"consistency_level": "Strong" if strong else self.settings.search_consistency}
        if max_generation is not None:
            extra["filter"] = self.visible_at(name_or_alias, max_generation)
        elif self.is_keyed(name_or_alias):
            extra["filter"] = f"gen_to == {OPEN}"  # current rows (an epoch build: exactly one per item)
        if filter:
            extra["filter"] = f"({extra['filter']}) and ({filter})" if extra.get("filter") else filter
        kind = self._kind_of(name_or_alias)
        parts = list(segments) if segments else None
        for start in range(0, nq, MAX_NQ):
            rows = np.arange(start, min(start + MAX_NQ, nq))
            self._search_rows(
                name_or_alias,
                queries,
                rows,
                top_k,
                self._search_params(top_k, kind),
                parts,
                extra,
                with_versions,
                (ids, scores, versions),
            )
        short = np.flatnonzero(ids[:, -1] == PAD_ID) if filter and kind != "FLAT" else np.empty(0, dtype=np.int64)
        for start in range(0, short.shape[0], MAX_NQ):  # an approximate index missed passing rows: all of them
            exhaustive = self._search_params(top_k, kind, exhaustive=True)
            self._search_rows(
                name_or_alias,
                queries,
                short[start : start + MAX_NQ],
                top_k,
                exhaustive,
                parts,
                extra,
                with_versions,
                (ids, scores, versions),
            )
        return SearchResult(ids=ids, scores=scores, model_versions=frozenset(versions))

    def _search_rows(
        self,
        name: str,
        queries: np.ndarray,
        rows: np.ndarray,
        top_k: int,
        params: dict[str, Any],
        partitions: list[str] | None,
        extra: dict[str, Any],
        with_versions: bool,
        into: tuple[np.ndarray, np.ndarray, set[str]],
    ) -> None:
        """One search call of ``queries[rows]`` (at most ``MAX_NQ``), written into rows ``rows`` of ``into``
        (ids, scores, versions seen)."""
        ids, scores, versions = into
        ids[rows] = PAD_ID  # a search again (exhaustive) replaces what the rows held
        scores[rows] = math.inf if self.settings.metric_type == "L2" else -math.inf
        search: Callable[..., Any] = self._search_raw if _RAW_SEARCH and not with_versions else self.client.search
        hits_per_query = self._call_search(
            f"search {name}",
            search,
            name,
            data=list(queries[rows]),
            limit=top_k,
            output_fields=["model_version"] if with_versions else [],
            search_params=params,
            partition_names=partitions,
            **extra,
        )
        if isinstance(hits_per_query, schema_pb2.SearchResultData):
            found_ids, found_scores = ids[rows], scores[rows]  # copies (fancy indexing), written back below
            fill_from_result(hits_per_query, found_ids, found_scores)
            ids[rows], scores[rows] = found_ids, found_scores
            return
        for row, hits in zip(rows.tolist(), hits_per_query, strict=True):
            n = len(hits.ids)
            ids[row, :n] = item_ids_of(list(hits.ids)) if n and isinstance(hits.ids[0], str) else hits.ids
            scores[row, :n] = hits.distances
            if with_versions:
                versions.update(hit["entity"]["model_version"] for hit in hits)

    def _search_raw(
        self,
        name: str,
        *,
        data: list[np.ndarray],
        limit: int,
        search_params: dict[str, Any],
        output_fields: list[str],
        partition_names: list[str] | None = None,
        filter: str = "",
        timeout: float | None = None,
        **kwargs: Any,
    ) -> schema_pb2.SearchResultData:
        """``client.search`` without pymilvus' result objects: the response's ``SearchResultData``.

        pymilvus turns every hit into a ``Hit`` (a dict subclass) before returning: ~12 ms of CPU for
        64 queries x top-50 and ~55 ms for 256 here, against ~2-4 ms for this path, which builds the
        request with pymilvus' own ``Prepare`` and consistency rules (as ``MilvusClient.search`` does)
        and reads ids and scores straight from the gRPC reply (:func:`fill_from_result`). Internals of
        pymilvus 3.0: when they are missing, the public ``client.search`` is used instead."""
        conn = self.client._get_connection()
        context = self.client._generate_call_context()
        use_default = _ts_utils.construct_guarantee_ts(name, kwargs, conn.server_address, context.get_db_name())
        request = _Prepare.search_requests_with_expr(
            collection_name=name,
            anns_field="",
            param=search_params,
            limit=limit,
            data=data,
            expr=filter,
            partition_names=partition_names,
            output_fields=output_fields,
            round_decimal=-1,
            use_default_consistency=use_default,
            **kwargs,
        )
        response = conn._stub.Search(request, timeout=timeout, metadata=_api_level_md(context))
        check_status(response.status)
        return response.results

    def probe(
        self,
        name: str,
        ids: np.ndarray,
        vectors: np.ndarray,
        model_version: str | None = None,
        generation: int | None = None,
    ) -> ProbeResult:
        """Check that each probe item is stored with exactly the given vector (and version).

        A plain "is the item its own top-1" check is unsound under IP: an item with a small
        norm is outranked by bigger-norm items. Instead every probe vector is searched within
        the probe set (``filter: id in probe_ids``, ``limit = len(probe_ids)``), so each probe
        item must appear in each result list, and query i must score item i at its self-score
        (IP: ``v·v``, COSINE: 1, L2: 0, relative tolerance 1e-3). That proves presence,
        visibility after load and vector integrity for any metric and norm. Keep probes small
        (tens of items). Uses Strong consistency.
        """
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(ids) == 0 or len(ids) > MAX_TOP_K or len(ids) != len(vectors):
            raise ValueError(f"1..{MAX_TOP_K} probe ids with one vector each expected")
        metric = self.settings.metric_type
        expected = {"IP": np.einsum("ij,ij->i", vectors, vectors), "COSINE": np.ones(len(ids))}.get(
            metric, np.zeros(len(ids))
        )
        id_list = ids.tolist()
        keyed = self.is_keyed(name)
        where = f"{'item_id' if keyed else 'id'} in {id_list}"
        if generation is not None:
            where = f"{where} and {self.visible_at(name, generation)}"
        elif keyed:
            where = f"{where} and gen_to == {OPEN}"
        raw = self._call(
            f"probe {name}",
            self.client.search,
            name,
            data=list(vectors),
            filter=where,
            limit=len(ids),
            output_fields=["model_version"],
            search_params=self._search_params(len(ids), self._kind_of(name)),
            consistency_level="Strong",
        )
        missing, mismatched, wrong_version = [], [], []
        for item, want, hits in zip(id_list, expected.tolist(), raw, strict=True):
            found = {int(item_ids_of([hit.id])[0]) if keyed else hit.id: hit for hit in hits}
            if item not in found:
                missing.append(item)
            elif abs(found[item].distance - want) > 1e-3 * max(1.0, abs(want)):
                mismatched.append(item)
            elif model_version is not None and found[item]["entity"]["model_version"] != model_version:
                wrong_version.append(item)
        result = ProbeResult(len(ids), tuple(missing), tuple(mismatched), tuple(wrong_version))
        log.info("probe of %s: %d items, ok=%s", name, len(ids), result.ok)
        return result

    # -- generations (fast-path rows of a live collection) -----------------------------------------

    def _field_names(self, name: str) -> set[str]:
        info = self._call(f"describe {name}", self.client.describe_collection, name)
        return {str(f.get("name")) for f in info.get("fields", [])}

    def properties(self, name: str) -> dict[str, str]:
        """The collection's properties (key-value metadata Milvus keeps with it, in its meta store)."""
        described = self._call(f"describe {name}", self.client.describe_collection, name)
        return {str(k): str(v) for k, v in (described.get("properties") or {}).items()}

    def set_property(self, name: str, key: str, value: str) -> None:
        """Set one property of ``name`` (one meta-store write: every reader sees the old or the new value)."""
        self._call(f"alter {name}", self.client.alter_collection_properties, name, properties={key: value})

    def has_generations(self, name: str) -> bool:
        """Whether ``name`` has the ``generation`` field (collections built before it have not)."""
        return "generation" in self._field_names(name)

    def has_metadata(self, name: str) -> bool:
        """Whether ``name`` has the catalogue metadata fields (``categories``, ``item_segment``; cached):
        collections made before them cannot be filtered by segment or category inside a search."""
        known = self._with_metadata.get(name)
        if known is None:
            known = self._with_metadata[name] = set(METADATA_FIELDS) <= self._field_names(name)
        return known

    def metadata_where(self, name: str, where: str, batch: int = 10_000) -> dict[int, tuple[str, tuple[str, ...]]]:
        """``item_id -> (item_segment, categories)`` of the rows matching ``where`` (Strong; paged by key
        as :meth:`rows_where`); empty for a collection without the metadata fields."""
        if not self.has_metadata(name):
            return {}
        found: dict[int, tuple[str, tuple[str, ...]]] = {}
        last = ""
        while True:
            page = self._call(
                f"metadata of {name}",
                self.client.query,
                name,
                filter=f'({where}) and id > "{last}"',
                output_fields=["item_id", *METADATA_FIELDS],
                limit=batch,
                consistency_level="Strong",
            )
            for row in page:
                found[int(row["item_id"])] = (str(row["item_segment"]), tuple(row["categories"] or ()))
            if len(page) < batch:
                return found
            last = max(str(row["id"]) for row in page)

    def is_keyed(self, name: str) -> bool:
        """Whether ``name`` holds keyed rows (:mod:`workers.infra.row_keys`; cached). Collections made before
        them key a row by its item id: one row per item, generations only add."""
        keyed = self._keyed.get(name)
        if keyed is None:
            keyed = self._keyed[name] = "gen_to" in self._field_names(name)
        return keyed

    def visible_at(self, name: str, generation: int) -> str:
        """The filter of the rows a reader at ``generation`` searches in ``name``."""
        return visible(generation) if self.is_keyed(name) else f"generation <= {int(generation)}"

    def delete_generations_above(self, name: str, generation: int) -> None:
        """Delete the rows of generations ``> generation`` (left by a fast-path step or a delta that
        crashed before announcing its generation: searches never saw them)."""
        self.delete_where(name, f"generation > {int(generation)}")

    def delete_where(self, name: str, where: str) -> None:
        self._call(f"delete from {name}", self.client.delete, name, filter=where)

    def rows_where(self, name: str, where: str, batch: int = 10_000) -> dict[str, Rows]:
        """Every row matching ``where`` in a keyed collection, with its vector, by segment (Strong).

        Paged by primary key (Milvus returns a limited query in key order), each page a Strong query:
        pymilvus' query iterator falls back to a client-side timestamp on Milvus 2.3 and can miss writes
        acknowledged just before."""
        fields = ["item_id", "vector", "model_version", "segment", "generation", "gen_to"]
        found: dict[str, list[dict[str, Any]]] = {}
        last = ""
        while True:
            page = self._call(
                f"rows of {name}",
                self.client.query,
                name,
                filter=f'({where}) and id > "{last}"',
                output_fields=fields,
                limit=batch,
                consistency_level="Strong",
            )
            for row in page:
                found.setdefault(str(row["segment"]), []).append(row)
            if len(page) < batch:
                break
            last = max(str(row["id"]) for row in page)
        return {
            segment: Rows(
                np.array([r["item_id"] for r in rows], dtype=np.int64),
                np.array([r["vector"] for r in rows], dtype=np.float32),
                [str(r["model_version"]) for r in rows],
                np.array([r["generation"] for r in rows], dtype=np.int64),
                np.array([r["gen_to"] for r in rows], dtype=np.int64),
            )
            for segment, rows in found.items()
        }

    # -- aliases --------------------------------------------------------------------------------

    def resolve_alias(self, alias: str) -> str | None:
        """The collection ``alias`` points at, or None if there is no such alias.

        Existence is checked with ``list_aliases`` first: ``describe_alias`` on a missing alias makes
        pymilvus log an ERROR with a traceback, which a poller would repeat every second.
        """
        listed = self._call("list aliases", self.client.list_aliases)
        if alias not in (listed or {}).get("aliases", []):
            return None
        try:
            info = self._call(f"describe alias {alias}", self.client.describe_alias, alias)
        except MilvusException as exc:
            if is_transient(exc):
                raise
            return None  # dropped between the two calls
        target = info.get("collection_name") if info else None
        return str(target) if target else None

    def aliases_of(self, collection: str) -> list[str]:
        info = self._call(f"aliases of {collection}", self.client.list_aliases, collection)
        return sorted(info.get("aliases", []))

    def point_alias(self, alias: str, collection: str) -> str | None:
        """Point ``alias`` at ``collection`` atomically (create or alter); return the previous target."""
        _check_name("alias", alias)
        previous = self.resolve_alias(alias)
        if previous is None:
            try:
                self._call(f"create alias {alias}", self.client.create_alias, collection, alias)
            except MilvusException as exc:
                if exc.code != _ALIAS_EXISTS:
                    raise
                previous = self.resolve_alias(alias)  # created concurrently: swap instead
                self._call(f"alter alias {alias}", self.client.alter_alias, collection, alias)
        elif previous != collection:
            self._call(f"alter alias {alias}", self.client.alter_alias, collection, alias)
        log.info("alias %s -> %s (was %s)", alias, collection, previous)
        return previous

    def drop_alias(self, alias: str) -> None:
        self._call(f"drop alias {alias}", self.client.drop_alias, alias)


def _packed_floats(values: np.ndarray) -> schema_pb2.FloatArray:
    """A ``FloatArray`` parsed from its wire form (field 1, packed little-endian float32): one C-level
    parse of the array's bytes instead of a Python float per element."""
    raw = np.ascontiguousarray(values, dtype="<f4").tobytes()
    size, header = len(raw), bytearray(b"\x0a")
    while True:  # the length as a protobuf varint
        byte, size = size & 0x7F, size >> 7
        header.append(byte | (0x80 if size else 0))
        if not size:
            break
    return schema_pb2.FloatArray.FromString(bytes(header) + raw)


def insert_request(
    name: str,
    partition: str,
    schema: dict[str, Any],
    schema_ts: int,
    columns: dict[str, list[Any]],
    vectors: np.ndarray,
    *,
    upsert: bool = False,
) -> milvus_pb2.InsertRequest | milvus_pb2.UpsertRequest:
    """The ``InsertRequest`` (or ``UpsertRequest``) of ``vectors`` and one list per other field in
    ``columns`` for a collection of ``schema`` (as pymilvus' ``describe_collection`` gives it), in the
    schema's order."""
    n = len(vectors)
    kind = milvus_pb2.UpsertRequest if upsert else milvus_pb2.InsertRequest
    request = kind(collection_name=name, partition_name=partition, num_rows=n, schema_timestamp=schema_ts)
    for spec in schema["fields"]:
        fname, ftype = spec["name"], spec["type"]
        data = schema_pb2.FieldData(field_name=fname, type=int(ftype))
        if ftype == DataType.FLOAT_VECTOR:
            dim = int(spec["params"]["dim"])
            if vectors.shape[1] != dim:
                raise ValueError(f"{name}: vectors of dim {vectors.shape[1]}, the collection has {dim}")
            data.vectors.dim = dim
            data.vectors.float_vector.CopyFrom(_packed_floats(vectors))
        elif fname not in columns or len(columns[fname]) != n:
            raise ValueError(f"{name}: no data for field {fname!r} ({ftype!r})")
        elif ftype == DataType.VARCHAR:
            data.scalars.string_data.data.extend(columns[fname])
        elif ftype == DataType.INT64:
            data.scalars.long_data.data.extend(columns[fname])
        elif ftype == DataType.ARRAY and spec.get("element_type") == DataType.VARCHAR:
            for values in columns[fname]:  # as pymilvus packs it (no element_type: the schema has it)
                data.scalars.array_data.data.add().string_data.data.extend(values)
        else:
            raise ValueError(f"{name}: unsupported field {fname!r} ({ftype!r})")
        request.fields_data.append(data)
    return request


def fill_from_result(result: schema_pb2.SearchResultData, ids: np.ndarray, scores: np.ndarray) -> None:
    """Copy a raw search response (``topks[q]`` hits of query ``q``, flattened) into the ``[nq, top_k]``
    arrays ``ids`` and ``scores``; slots past a query's hits keep their padding."""
    topks = np.asarray(result.topks, dtype=np.int64)
    if topks.shape[0] != ids.shape[0]:
        raise MilvusException(message=f"search returned {topks.shape[0]} result lists for {ids.shape[0]} queries")
    if result.ids.HasField("str_id"):  # a keyed collection: item ids from the row keys
        flat_ids = item_ids_of(list(result.ids.str_id.data))
    elif result.ids.HasField("int_id"):
        flat_ids = np.asarray(result.ids.int_id.data, dtype=np.int64)
    elif len(result.topks) and sum(result.topks) == 0:
        flat_ids = np.empty(0, dtype=np.int64)
    else:
        raise MilvusException(message="search returned ids of an unknown kind")
    flat_scores = np.asarray(result.scores, dtype=np.float32)
    top_k = ids.shape[1]
    if topks.size and np.all(topks == top_k):
        ids[:] = flat_ids.reshape(ids.shape)
        scores[:] = flat_scores.reshape(scores.shape)
        return
    offset = 0
    for row, n in enumerate(topks.tolist()):
        ids[row, :n] = flat_ids[offset : offset + n]
        scores[row, :n] = flat_scores[offset : offset + n]
        offset += n


class MilvusSearcher:
    """``search(queries, top_k) -> (ids, scores)`` against one collection, for the evaluator.

    Same signature as the exact numpy backend. With ``pin=True`` an alias is resolved once, at
    construction, so that an alias swap during a long evaluation cannot mix two models.
    """

    def __init__(self, store: VectorStore, name_or_alias: str, pin: bool = True, generation: int | None = None) -> None:
        """``generation``: search the rows visible at it (default: the current rows)."""
        self.store = store
        self.target = (store.resolve_alias(name_or_alias) or name_or_alias) if pin else name_or_alias
        self.generation = generation

    def search(self, queries: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        result = self.store.search(self.target, queries, top_k, with_versions=False, max_generation=self.generation)
        return result.ids, result.scores
