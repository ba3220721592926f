"""The synthetic click stream."""

from __future__ import annotations

import numpy as np

from model.data.synthetic import SyntheticSpec, item_clusters, iter_events, synthetic_dataset

SMALL = SyntheticSpec(num_users=5000, num_items=2000, num_clusters=20, mean_clicks_per_user=8.0, seed=11)


def _all(spec: SyntheticSpec, chunk_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    chunks = list(iter_events(spec, chunk_size=chunk_size))
    assert all(c.size == chunk_size for c in chunks[:-1]) and 0 < chunks[-1].size <= chunk_size
    return (
        np.concatenate([c.user_ids for c in chunks]),
        np.concatenate([c.item_ids for c in chunks]),
        np.concatenate([c.ts_ms for c in chunks]),
    )


def test_chunks_sum_and_ids() -> None:
    total, users = 0, set()
    for chunk in iter_events(SMALL, chunk_size=1000):
        assert chunk.user_ids.dtype == chunk.item_ids.dtype == chunk.ts_ms.dtype == np.int64
        assert chunk.size <= 1000
        total += chunk.size
        users.update(chunk.user_ids.tolist())
    u, i, ts = _all(SMALL, 1000)
    assert total == u.size > SMALL.num_users * SMALL.min_clicks_per_user
    assert users == set(range(1, SMALL.num_users + 1))
    assert i.min() >= 1 and i.max() <= SMALL.num_items
    assert ts[0] > SMALL.start_ts_ms and np.all(np.diff(ts) > 0)


def test_events_do_not_depend_on_chunk_size_and_seed_matters() -> None:
    a, b = _all(SMALL, 777), _all(SMALL, 100_000)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    other = _all(SyntheticSpec(**{**SMALL.__dict__, "seed": 12}), 100_000)
    assert not np.array_equal(a[1][:1000], other[1][:1000])


def test_iteration_is_lazy() -> None:
    big = SyntheticSpec(num_users=10_000_000, num_items=100_000, num_clusters=100)
    first = next(iter(iter_events(big, chunk_size=5000)))
    assert first.size == 5000  # only the first batch of users was generated


def test_popularity_and_interests() -> None:
    _, items, _ = _all(SMALL, 100_000)
    counts = np.sort(np.bincount(items, minlength=SMALL.num_items + 1)[1:])[::-1]
    assert counts[: SMALL.num_items // 100].sum() > 5 * items.size / 100  # top 1% >> 1% of clicks

    focused = SyntheticSpec(num_users=300, num_items=2000, num_clusters=20, interests_per_user=(1, 1), noise=0.0)
    clusters = item_clusters(focused)
    assert clusters[0] == -1 and np.bincount(clusters[1:]).tolist() == [100] * 20
    users, items, _ = _all(focused, 100_000)
    for user in range(1, 301):
        assert np.unique(clusters[items[users == user]]).size == 1


def test_synthetic_dataset_split() -> None:
    spec = SyntheticSpec(num_users=1000, num_items=500, num_clusters=10, seed=3)
    data = synthetic_dataset(spec, seed=5)
    assert data.item_count == 501
    assert (data.train.num_users, data.valid.num_users, data.test.num_users) == (800, 100, 100)
    held = data.valid.histories + data.valid.truths + data.test.histories + data.test.truths
    assert all(a.size > 0 for a in held)
    n_events = sum(c.size for c in iter_events(spec))
    assert data.train.num_events + sum(a.size for a in held) == n_events
    assert synthetic_dataset(spec, seed=5).train.fingerprint() == data.train.fingerprint()
    assert synthetic_dataset(spec, seed=6).train.fingerprint() != data.train.fingerprint()
