from __future__ import annotations

import numpy as np

from model.data.types import Sequences
from model.negatives import LogUniformSampler
from model.sampling import ReferenceSampler, pad_histories


def test_pad_histories_keeps_last_maxlen_left_aligned() -> None:
    hist, seq_len = pad_histories([[1, 2, 3, 4, 5], [7], []], maxlen=3)
    assert hist.tolist() == [[3, 4, 5], [7, 0, 0], [0, 0, 0]]
    assert seq_len.tolist() == [3, 1, 0]


def test_reference_sampler_examples_are_real_prefixes() -> None:
    seqs = Sequences.from_lists([1, 2, 3], [[1, 2, 3], list(range(10, 40)), [5, 6, 7, 8, 9, 4]])
    sampler = ReferenceSampler(seqs, maxlen=8, min_clicks=5, rng=np.random.default_rng(0))
    assert sampler.num_users == 2  # the 3-click user is never sampled
    batch = sampler.sample(500)
    by_first = {10: list(range(10, 40)), 5: [5, 6, 7, 8, 9, 4]}
    for hist, n, target in zip(batch.hist, batch.seq_len, batch.target, strict=True):
        assert 4 <= n <= 8
        assert (hist[n:] == 0).all()
        seq = next(s for s in by_first.values() if target in s)
        cut = seq.index(int(target))
        assert cut >= 4  # cut point in [4, len)
        assert hist[:n].tolist() == seq[cut - n : cut]


def test_reference_sampler_is_seeded() -> None:
    seqs = Sequences.from_lists([1, 2], [list(range(1, 30)), list(range(30, 50))])
    a = ReferenceSampler(seqs, maxlen=5, min_clicks=5, rng=np.random.default_rng(9)).sample(64)
    b = ReferenceSampler(seqs, maxlen=5, min_clicks=5, rng=np.random.default_rng(9)).sample(64)
    assert (a.hist == b.hist).all() and (a.target == b.target).all()


def test_log_uniform_prefers_popular_items_and_never_padding() -> None:
    popularity = np.array([0, 1, 50, 5, 1000, 0, 2] + [1] * 200)
    sampler = LogUniformSampler(popularity, 100, np.random.default_rng(1), full_ratio=1.5)
    assert not sampler.full
    all_ids = np.concatenate([sampler.sample().ids for _ in range(100)])
    assert 0 not in all_ids
    counts = np.bincount(all_ids, minlength=popularity.shape[0])
    draws = sampler.sample()
    assert counts[4] > counts[2] > counts[3]  # rank order: 4 (1000), 2 (50), 3 (5)
    # expected count is consistent: log_expected_for agrees with the sample's own values
    np.testing.assert_allclose(sampler.log_expected_for(draws.ids[:20]), draws.log_expected[:20], rtol=1e-6)
    np.testing.assert_allclose(np.exp(sampler.log_expected_for(np.arange(1, 207))).sum(), 100, rtol=1e-4)


def test_small_catalogue_uses_exact_softmax() -> None:
    sampler = LogUniformSampler(np.ones(11), 8, np.random.default_rng(1), full_ratio=1.5)
    draws = sampler.sample()
    assert sampler.full and sorted(draws.ids.tolist()) == list(range(1, 11))
    assert (draws.log_expected == 0).all()


def test_from_arrays_builds_what_from_lists_builds() -> None:
    seqs = [[3, 1, 2], [5], [], [4, 4, 7, 1]]
    arrays = [np.asarray(s, dtype=np.int64) for s in seqs]
    a = Sequences.from_arrays([10, 11, 12, 13], arrays, item_count=9)
    b = Sequences.from_lists([10, 11, 12, 13], seqs, item_count=9)
    for got, want in zip((a.user_ids, a.offsets, a.items), (b.user_ids, b.offsets, b.items), strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.int64
    assert a.item_count == b.item_count == 9
    assert Sequences.from_arrays([], []).num_events == 0
