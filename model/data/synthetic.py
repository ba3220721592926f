"""Synthetic click stream for scale tests: Zipf item popularity, users with a few latent interests.

Items 1..num_items are dealt evenly into ``num_clusters`` clusters; popularity is Zipf over the
whole catalogue (a random rank per item). A user draws ``interests_per_user`` clusters and
clicks items from them by popularity; a ``noise`` share of clicks comes from the whole catalogue.
Users are generated in fixed-size batches, so the events depend only on the spec (not on the
chunk size) and a stream of any length never sits in memory at once. Within a batch the users'
clicks are interleaved at random; timestamps strictly increase over the whole stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from model.data.split import split_users
from model.data.types import Dataset, IntArray, Sequences
from model.vocab import ItemVocab

_USERS_PER_BATCH = 4096


@dataclass(frozen=True)
class SyntheticSpec:
    num_users: int = 2000
    num_items: int = 5000
    num_clusters: int = 50
    interests_per_user: tuple[int, int] = (1, 4)  # inclusive range
    zipf_exponent: float = 1.1
    mean_clicks_per_user: float = 20.0
    min_clicks_per_user: int = 3
    noise: float = 0.1  # share of clicks drawn from the whole catalogue
    max_gap_ms: int = 50  # gap between consecutive events of the stream: uniform in [1, max_gap_ms]
    seed: int = 0
    start_ts_ms: int = 1_700_000_000_000
    sparse_ids: bool = False  # item ids drawn uniformly from 1..2^63-1 instead of 1..num_items

    def __post_init__(self) -> None:
        lo, hi = self.interests_per_user
        if self.num_users < 1 or self.num_items < 1:
            raise ValueError("num_users and num_items must be >= 1")
        if not 1 <= self.num_clusters <= self.num_items:
            raise ValueError("num_clusters must be in [1, num_items]")
        if not 1 <= lo <= hi:
            raise ValueError("interests_per_user must be a range 1 <= lo <= hi")
        if self.zipf_exponent < 0 or not 0 <= self.noise <= 1:
            raise ValueError("zipf_exponent must be >= 0 and noise in [0, 1]")
        if self.min_clicks_per_user < 1 or self.mean_clicks_per_user < self.min_clicks_per_user:
            raise ValueError("need 1 <= min_clicks_per_user <= mean_clicks_per_user")
        if self.max_gap_ms < 1:
            raise ValueError("max_gap_ms must be >= 1")


@dataclass(frozen=True)
class EventChunk:
    user_ids: IntArray
    item_ids: IntArray
    ts_ms: IntArray

    @property
    def size(self) -> int:
        return int(self.user_ids.shape[0])


@dataclass(frozen=True)
class _Catalogue:
    items_by_cluster: IntArray  # item ids grouped by cluster
    cum_weight: npt.NDArray[np.float64]  # cumulative popularity in that order, starting at 0
    cluster_start: IntArray  # cluster c spans items_by_cluster[cluster_start[c]:cluster_start[c + 1]]


def _catalogue(spec: SyntheticSpec) -> _Catalogue:
    rng = np.random.default_rng((spec.seed, 0))
    ids = np.arange(1, spec.num_items + 1, dtype=np.int64)
    rank = rng.permutation(spec.num_items)
    weight = 1.0 / np.power(rank + 1.0, spec.zipf_exponent)
    cluster = rng.permutation(spec.num_items) % spec.num_clusters
    order = np.argsort(cluster, kind="stable")
    cum = np.concatenate(([0.0], np.cumsum(weight[order])))
    start = np.searchsorted(cluster[order], np.arange(spec.num_clusters + 1))
    return _Catalogue(ids[order], cum, start.astype(np.int64))


def external_item_ids(spec: SyntheticSpec) -> IntArray:
    """``out[i]`` is the catalogue id of dense item ``i`` (``out[0] = 0``, padding): ``i`` itself, or
    with ``sparse_ids`` distinct seeded draws from 1..2^63-1 (hashed or 64-bit catalogue keys)."""
    if not spec.sparse_ids:
        return np.arange(spec.num_items + 1, dtype=np.int64)
    rng = np.random.default_rng((spec.seed, 2))
    drawn = np.unique(rng.integers(1, np.iinfo(np.int64).max, size=spec.num_items, endpoint=True, dtype=np.int64))
    while drawn.size < spec.num_items:  # collisions are astronomically rare; top up if one happens
        more = rng.integers(1, np.iinfo(np.int64).max, size=spec.num_items - drawn.size, endpoint=True, dtype=np.int64)
        drawn = np.unique(np.concatenate([drawn, more]))
    return np.concatenate([[0], rng.permutation(drawn)]).astype(np.int64)


def item_clusters(spec: SyntheticSpec) -> IntArray:
    """Cluster of every item id (index 0, the padding id, gets -1); for tests and diagnostics."""
    cat = _catalogue(spec)
    out = np.full(spec.num_items + 1, -1, dtype=np.int64)
    sizes = np.diff(cat.cluster_start)
    out[cat.items_by_cluster] = np.repeat(np.arange(spec.num_clusters, dtype=np.int64), sizes)
    return out


def _draw(cat: _Catalogue, rng: np.random.Generator, lo: IntArray, hi: IntArray) -> IntArray:
    """Items drawn by popularity from the catalogue slices [lo, hi) (indices into items_by_cluster)."""
    target = cat.cum_weight[lo] + rng.random(lo.size) * (cat.cum_weight[hi] - cat.cum_weight[lo])
    pos = np.searchsorted(cat.cum_weight, target, side="right") - 1
    return cat.items_by_cluster[np.clip(pos, lo, hi - 1)]


def _batch(spec: SyntheticSpec, cat: _Catalogue, first_user: int, n_users: int, clock: int) -> EventChunk:
    """Events of users ``first_user + 1 .. first_user + n_users``, interleaved at random, timed
    from ``clock`` on (strictly increasing)."""
    rng = np.random.default_rng((spec.seed, 1, first_user))
    lo, hi = spec.interests_per_user
    k = rng.integers(lo, hi + 1, size=n_users)
    clusters = rng.integers(0, spec.num_clusters, size=(n_users, hi))
    extra = spec.mean_clicks_per_user - spec.min_clicks_per_user
    lengths = spec.min_clicks_per_user + rng.poisson(extra, size=n_users)
    row = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    chosen = clusters[row, (rng.random(row.size) * k[row]).astype(np.int64)]
    noisy = rng.random(row.size) < spec.noise
    start = np.where(noisy, 0, cat.cluster_start[chosen])
    stop = np.where(noisy, spec.num_items, cat.cluster_start[chosen + 1])
    items = _draw(cat, rng, start, stop)
    shuffle = rng.permutation(row.size)
    ts = clock + np.cumsum(rng.integers(1, spec.max_gap_ms + 1, size=row.size))
    return EventChunk(row[shuffle] + first_user + 1, items[shuffle], ts.astype(np.int64))


def iter_events(spec: SyntheticSpec, *, chunk_size: int = 100_000) -> Iterator[EventChunk]:
    """The spec's click stream in chunks of ``chunk_size`` events (the last may be shorter).

    User ids are 1..num_users, item ids 1..num_items (or their sparse 64-bit ids with
    ``sparse_ids``, see :func:`external_item_ids`). The events do not depend on ``chunk_size``;
    at most one batch of users plus one chunk is in memory at a time.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    for chunk in _dense_events(spec, chunk_size):
        if spec.sparse_ids:
            chunk = EventChunk(chunk.user_ids, external_item_ids(spec)[chunk.item_ids], chunk.ts_ms)
        yield chunk


def _dense_events(spec: SyntheticSpec, chunk_size: int) -> Iterator[EventChunk]:
    cat = _catalogue(spec)
    clock = spec.start_ts_ms
    buffer: EventChunk | None = None
    for first in range(0, spec.num_users, _USERS_PER_BATCH):
        batch = _batch(spec, cat, first, min(_USERS_PER_BATCH, spec.num_users - first), clock)
        clock = int(batch.ts_ms[-1]) if batch.size else clock
        buffer = batch if buffer is None else _concat(buffer, batch)
        while buffer.size >= chunk_size:
            yield _slice(buffer, 0, chunk_size)
            buffer = _slice(buffer, chunk_size, buffer.size)
    if buffer is not None and buffer.size:
        yield buffer


def _slice(chunk: EventChunk, a: int, b: int) -> EventChunk:
    return EventChunk(chunk.user_ids[a:b].copy(), chunk.item_ids[a:b].copy(), chunk.ts_ms[a:b].copy())


def _concat(x: EventChunk, y: EventChunk) -> EventChunk:
    return EventChunk(
        np.concatenate((x.user_ids, y.user_ids)),
        np.concatenate((x.item_ids, y.item_ids)),
        np.concatenate((x.ts_ms, y.ts_ms)),
    )


def synthetic_dataset(spec: SyntheticSpec, *, history_share: float = 0.8, seed: int) -> Dataset:
    """The whole stream of a small spec as a :class:`Dataset` (80/10/10 users, as MovieLens).

    Each user's sequence is their clicks in time order; rows are the dense items 1..num_items
    (``item_count`` = num_items + 1) and the vocabulary maps them to the catalogue ids.
    """
    chunks = list(_dense_events(spec, 100_000))
    user = np.concatenate([c.user_ids for c in chunks])
    item = np.concatenate([c.item_ids for c in chunks])
    ts = np.concatenate([c.ts_ms for c in chunks])
    order = np.lexsort((ts, user))
    user_ids, starts = np.unique(user[order], return_index=True)
    offsets = np.append(starts, user.size).astype(np.int64)
    seqs = Sequences(user_ids.astype(np.int64), offsets, item[order], spec.num_items + 1)
    ids = external_item_ids(spec)
    vocab = ItemVocab(ids, np.zeros(ids.shape[0]))
    return split_users(seqs, seed=seed, history_share=history_share, name="synthetic", vocab=vocab)
