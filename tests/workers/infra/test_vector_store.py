"""VectorStore: retry logic (unit) and the real embedded Milvus (integration)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from pymilvus.exceptions import MilvusException, MilvusUnavailableException, ParamError

from workers.infra.vector_store import (
    DEFAULT_SEGMENT,
    PAD_ID,
    AliasedCollectionError,
    MilvusSearcher,
    VectorStore,
    is_transient,
    with_retry,
)
from workers.settings import MilvusSettings

DIM = 16
Data = tuple[np.ndarray, np.ndarray]
N = 1_000


def _flaky(failures: list[Exception]) -> Callable[[], str]:
    def call() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    return call


def test_retry_recovers_from_transient_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("workers.infra.vector_store.time.sleep", lambda _s: None)
    errors: list[Exception] = [MilvusUnavailableException(message="down"), ConnectionError("reset")]
    assert with_retry(_flaky(errors), "flaky") == "done"
    assert errors == []


def test_retry_gives_up_on_bad_requests_at_once() -> None:
    errors: list[Exception] = [ParamError(message="bad dim"), MilvusUnavailableException(message="x")]
    with pytest.raises(ParamError):
        with_retry(_flaky(errors), "bad")
    assert len(errors) == 1


def test_retry_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr("workers.infra.vector_store.time.sleep", sleeps.append)
    with pytest.raises(MilvusUnavailableException):
        with_retry(_flaky([MilvusUnavailableException(message="down")] * 9), "down", attempts=6, cap_s=1.0)
    assert sleeps == [0.2, 0.4, 0.8, 1.0, 1.0]


def test_transient_classification() -> None:
    assert is_transient(MilvusException(code=8, message="rate limit exceeded"))
    assert is_transient(MilvusException(code=1, message="service not ready"))
    assert not is_transient(MilvusException(code=1100, message="invalid parameter"))
    assert not is_transient(ValueError("nope"))


@pytest.fixture(scope="module")
def store(milvus_uri: str) -> Iterator[VectorStore]:
    with VectorStore(milvus_uri, MilvusSettings(insert_batch=400)) as vs:
        yield vs


@pytest.fixture(scope="module")
def data() -> Data:
    rng = np.random.default_rng(7)
    ids = np.arange(1, N + 1, dtype=np.int64)
    return ids, rng.standard_normal((N, DIM)).astype(np.float32)


def _ready(store: VectorStore, name: str, ids: np.ndarray, vectors: np.ndarray, version: str = "v1") -> None:
    """Serving path: insert, flush (seal), index, load."""
    store.create_collection(name, DIM)
    store.insert(name, ids, vectors, model_version=version)
    store.flush(name)
    store.build_index(name)
    store.load(name)


def _quick(store: VectorStore, name: str, ids: np.ndarray, vectors: np.ndarray, version: str = "v1") -> None:
    """Fast path for small tests: index + load an empty collection, then insert (growing segment)."""
    store.create_collection(name, DIM)
    store.build_index(name)
    store.load(name)
    store.insert(name, ids, vectors, model_version=version)


@pytest.fixture(scope="module")
def loaded(store: VectorStore, data: Data) -> Iterator[str]:
    """One read-only 1,000-item collection shared by the module's tests."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    _ready(store, name, *data)
    yield name
    for alias in store.aliases_of(name):
        store.drop_alias(alias)
    store.drop_collection(name)


@pytest.mark.integration
def test_count_is_exact(store: VectorStore, loaded: str) -> None:
    assert store.count(loaded) == N
    assert store.count(loaded, segment=DEFAULT_SEGMENT) == N


@pytest.mark.integration
def test_search_matches_brute_force(store: VectorStore, loaded: str, data: Data) -> None:
    ids, vectors = data
    queries = np.random.default_rng(1).standard_normal((200, DIM)).astype(np.float32)
    exact = ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :10]]
    result = store.search(loaded, queries, top_k=10, strong=True)
    assert result.ids.dtype == np.int64 and result.scores.dtype == np.float32
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(result.ids, exact, strict=True)])
    assert recall >= 0.95
    top1 = ids[np.argmax(queries @ vectors.T, axis=1)]
    assert np.mean(result.ids[:, 0] == top1) >= 0.95
    assert np.all(np.diff(result.scores, axis=1) <= 1e-6)  # best first
    assert result.model_versions == {"v1"}


@pytest.mark.integration
def test_self_queries_score_their_own_inner_product(store: VectorStore, loaded: str, data: Data) -> None:
    ids, vectors = data
    result = store.search(loaded, vectors[:50], top_k=N // 10)
    for row, (item, vec) in enumerate(zip(ids[:50], vectors[:50], strict=True)):
        hit = np.flatnonzero(result.ids[row] == item)
        assert hit.size == 1
        assert result.scores[row, hit[0]] == pytest.approx(float(vec @ vec), rel=1e-4)


@pytest.mark.integration
def test_short_results_are_padded(store: VectorStore, milvus_collection_name: str) -> None:
    vectors = np.eye(DIM, dtype=np.float32)[:3]
    _quick(store, milvus_collection_name, np.array([11, 12, 13]), vectors)
    result = store.search(milvus_collection_name, vectors[:2], top_k=5, strong=True)
    assert result.ids.shape == (2, 5)
    assert set(result.ids[0, :3].tolist()) == {11, 12, 13}
    assert np.all(result.ids[:, 3:] == PAD_ID)
    assert np.all(np.isneginf(result.scores[:, 3:]))
    store.drop_collection(milvus_collection_name)


@pytest.mark.integration
def test_large_nq_is_chunked(store: VectorStore, loaded: str, data: Data, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("workers.infra.vector_store.MAX_NQ", 64)
    _ids, vectors = data
    result = store.search(loaded, vectors[:150], top_k=3)
    assert result.ids.shape == (150, 3)
    assert np.all(result.ids[:, 0] != PAD_ID)


@pytest.mark.integration
def test_aliases_create_alter_resolve(store: VectorStore, loaded: str, data: Data) -> None:
    ids, vectors = data
    alias = f"{loaded}_live"
    shadow = f"{loaded}_b"
    assert store.resolve_alias(alias) is None
    assert store.point_alias(alias, loaded) is None
    assert store.resolve_alias(alias) == loaded
    _quick(store, shadow, ids, vectors * 2, version="v2")
    try:
        assert store.point_alias(alias, shadow) == loaded  # alter, not create (1602)
        assert store.resolve_alias(alias) == shadow
        result = store.search(alias, vectors[:5], top_k=3, strong=True)
        assert result.model_versions == {"v2"}
        with pytest.raises(AliasedCollectionError):
            store.drop_collection(shadow)
        assert store.has_collection(shadow)
        assert store.point_alias(alias, loaded) == shadow
        store.drop_collection(shadow)  # no alias left on it
        assert not store.has_collection(shadow)
    finally:
        if store.has_collection(shadow):
            store.drop_alias(alias)
            store.drop_collection(shadow)
    assert store.list_collections(prefix=loaded) == [loaded]


@pytest.mark.integration
def test_probe(store: VectorStore, loaded: str, data: Data) -> None:
    ids, vectors = data
    norms = np.linalg.norm(vectors, axis=1)
    pick = np.concatenate([np.argsort(norms)[:8], np.argsort(norms)[-8:]])  # smallest norms too
    assert store.probe(loaded, ids[pick], vectors[pick], model_version="v1")
    bad = store.probe(loaded, ids[pick], vectors[pick] * 1.5, model_version="v2")
    assert not bad and len(bad.mismatched) == len(pick)
    assert store.probe(loaded, np.array([N + 5]), vectors[:1]).missing == (N + 5,)
    assert store.probe(loaded, ids[:4], vectors[:4], model_version="v9").wrong_version == tuple(ids[:4])


@pytest.mark.integration
def test_partitions_per_segment(store: VectorStore, milvus_collection_name: str) -> None:
    name = milvus_collection_name
    rng = np.random.default_rng(3)
    store.create_collection(name, DIM)
    store.insert(name, np.arange(1, 101), rng.standard_normal((100, DIM)), "v1", segment="books")
    store.build_index(name)
    store.load(name)
    store.insert(name, np.arange(101, 131), rng.standard_normal((30, DIM)), "v1", segment="films")
    assert store.list_segments(name) == [DEFAULT_SEGMENT, "books", "films"]
    assert store.count(name) == 130
    assert store.count(name, segment="films") == 30
    only_films = store.search(name, rng.standard_normal((4, DIM)), top_k=50, segments=["films"], strong=True)
    real = only_films.ids[only_films.ids != PAD_ID]
    assert real.size == 4 * 30 and real.min() >= 101
    store.drop_segment(name, "books")
    assert store.count(name) == 30
    with pytest.raises(ValueError, match="segment name"):
        store.insert(name, np.array([1]), np.ones((1, DIM)), "v1", segment="bad-name")
    store.drop_collection(name)


@pytest.mark.integration
def test_milvus_searcher_pins_the_alias(store: VectorStore, loaded: str, data: Data) -> None:
    ids, vectors = data
    alias = f"{loaded}_eval"
    store.point_alias(alias, loaded)
    searcher = MilvusSearcher(store, alias)
    assert searcher.target == loaded
    got_ids, got_scores = searcher.search(vectors[:20], top_k=5)
    assert got_ids.shape == (20, 5) and got_scores.shape == (20, 5)
    assert np.mean(got_ids[:, 0] == ids[:20]) >= 0.5  # own vector usually wins with gaussian data
    store.drop_alias(alias)


@pytest.mark.integration
@pytest.mark.parametrize("level", ["Bounded", "Eventually"])
def test_searches_carry_the_configured_consistency(milvus_uri: str, loaded: str, data: Data, level: str) -> None:
    """``milvus.search_consistency`` is what each search request asks the server for (read off the gRPC
    request that goes out, on both search paths); ``strong=True`` still asks for Strong; answers agree."""
    from pymilvus.grpc_gen import common_pb2

    _, vectors = data
    with VectorStore(milvus_uri, MilvusSettings(search_consistency=level)) as vs:  # type: ignore[arg-type]
        conn = vs.client._get_connection()
        sent: list[int] = []
        real = conn._stub.Search

        def spy(request: object, *args: object, **kwargs: object) -> object:
            sent.append(request.consistency_level)  # type: ignore[attr-defined]
            return real(request, *args, **kwargs)

        conn._stub.Search = spy
        try:
            raw = vs.search(loaded, vectors[:3], top_k=5, with_versions=False)
            public = vs.search(loaded, vectors[:3], top_k=5, with_versions=True)
            strong = vs.search(loaded, vectors[:3], top_k=5, strong=True)
        finally:
            conn._stub.Search = real
    want = common_pb2.ConsistencyLevel.Value(level)
    assert sent == [want, want, common_pb2.ConsistencyLevel.Value("Strong")]
    np.testing.assert_array_equal(raw.ids, strong.ids)
    np.testing.assert_array_equal(public.ids, strong.ids)


def test_an_unknown_consistency_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="search_consistency"):
        MilvusSettings(search_consistency="Sometimes")  # type: ignore[arg-type]
