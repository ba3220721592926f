"""The mixed-tastes protocol against a plain construction."""

from __future__ import annotations

import numpy as np
import pytest

from model.data.mixed import MIXED_PROTOCOL, merge_histories, merge_truths, mixed_pairs, mixed_tastes
from model.data.types import HeldOut


def _held(times: bool) -> HeldOut:
    histories = [np.array([1, 2, 3]), np.array([10, 11]), np.array([20, 21, 22, 23]), np.array([30]), np.array([40])]
    truths = [np.array([4, 5]), np.array([12, -1]), np.array([24, 4]), np.array([31, -1, -2]), np.array([41])]
    stamps = [np.array([100, 200, 300]), np.array([150, 160]), np.array([0, 1, 2, 3]), np.array([7]), np.array([9])]
    return HeldOut(
        np.array([101, 102, 103, 104, 105]), histories, truths, "all remaining items", stamps if times else None
    )


def test_pairs_are_a_seeded_permutation_cut_in_two() -> None:
    pairs = mixed_pairs(5, seed=3, rounds=2)
    rng = np.random.default_rng(3)
    plain = [rng.permutation(5)[:4].reshape(-1, 2) for _ in range(2)]
    assert pairs.tolist() == np.concatenate(plain).tolist()
    assert pairs.shape == (4, 2)
    for round_pairs in (pairs[:2], pairs[2:]):  # every user at most once per round
        assert len(set(round_pairs.ravel().tolist())) == 4
    assert mixed_pairs(5, seed=3).tolist() == pairs[:2].tolist()  # same seed, same first round
    assert mixed_pairs(5, seed=4).tolist() != pairs[:2].tolist()
    with pytest.raises(ValueError):
        mixed_pairs(5, seed=1, rounds=0)


def test_relative_time_interleaves_both_users_over_one_period() -> None:
    # a at relative times 0, .5, 1; b at 0, 1 (its span 150..160): ties go to the first user
    merged = merge_histories(np.array([1, 2, 3]), np.array([10, 11]), np.array([100, 200, 300]), np.array([150, 160]))
    assert merged.tolist() == [1, 10, 2, 3, 11]
    # no times: by position, 0, 1/3, 2/3, 1 against 0, 1
    assert merge_histories(np.array([20, 21, 22, 23]), np.array([30, 31])).tolist() == [20, 30, 21, 22, 23, 31]


def test_absolute_time_merges_by_timestamp() -> None:
    merged = merge_histories(
        np.array([1, 2, 3]), np.array([10, 11]), np.array([100, 200, 300]), np.array([150, 160]), clock="absolute"
    )
    assert merged.tolist() == [1, 10, 11, 2, 3]
    with pytest.raises(ValueError):
        merge_histories(np.array([1]), np.array([2]), clock="absolute")


def test_truth_is_the_union_and_unknown_items_stay_distinct() -> None:
    assert merge_truths(np.array([4, 5]), np.array([5, 6, 4])).tolist() == [4, 5, 6]
    # a's unknown -1; b's -1 and -2 are other unknown items: renumbered -2 and -3
    assert merge_truths(np.array([12, -1]), np.array([31, -1, -2])).tolist() == [12, -1, 31, -2, -3]


@pytest.mark.parametrize("times", [True, False])
def test_mixed_tastes_against_a_plain_construction(times: bool) -> None:
    held = _held(times)
    mixed = mixed_tastes(held, seed=11, rounds=3)
    pairs = mixed_pairs(held.num_users, seed=11, rounds=3)
    assert mixed.num_users == len(pairs) == 6 and mixed.truth_protocol == MIXED_PROTOCOL
    for n, (i, j) in enumerate(pairs.tolist()):
        a, b = held.histories[i], held.histories[j]
        ta = held.times[i] if held.times is not None else None
        tb = held.times[j] if held.times is not None else None

        # plain construction: each click keyed by its own user's relative time, then user, then position
        def key(t: np.ndarray | None, n_clicks: int) -> list[float]:
            if t is not None and n_clicks > 1 and t[-1] > t[0]:
                return [(x - t[0]) / (t[-1] - t[0]) for x in t.tolist()]
            return [p / max(n_clicks - 1, 1) for p in range(n_clicks)]

        clicks = [(k, 0, p, item) for p, (k, item) in enumerate(zip(key(ta, len(a)), a.tolist(), strict=True))]
        clicks += [(k, 1, p, item) for p, (k, item) in enumerate(zip(key(tb, len(b)), b.tolist(), strict=True))]
        assert mixed.histories[n].tolist() == [c[3] for c in sorted(clicks)]
        assert sorted(mixed.histories[n].tolist()) == sorted(a.tolist() + b.tolist())
        truth = mixed.truths[n].tolist()
        known = {x for x in held.truths[i].tolist() + held.truths[j].tolist() if x > 0}
        unknown = sum(1 for x in held.truths[i].tolist() + held.truths[j].tolist() if x < 0)
        assert {x for x in truth if x > 0} == known and len(truth) == len(set(truth)) == len(known) + unknown
        assert mixed.user_ids[n] == held.user_ids[i]
