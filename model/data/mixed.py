"""The "mixed tastes" protocol: two held-out users behind one account, the case multi-interest is for.

Held-out users are paired by a seeded shuffle (``rounds`` shuffles, each pairing every user once;
an odd user out sits that round out). A pair's history is both users' histories merged in time
order, as on a shared account; its truth is both users' remaining items (their union; unknown truth
items, negative ids, stay distinct and unhittable). The model sees the merged history's last
``maxlen`` clicks, so the standard protocol's cut (history share) is kept per user.

Time order: ``clock="relative"`` (default) places each click at its user's own relative time,
``(t - first) / (last - first)`` of that user's history (by position when the data has no times or
the span is 0), as if both people used the account over the same period; ``"absolute"`` merges by
the raw timestamps (MovieLens users rate in different months, so this mostly appends one history to
the other). Ties go to the first user of the pair, then to the earlier click.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from model.data.types import HeldOut, IntArray

MIXED_PROTOCOL = "mixed tastes: two held-out users merged in time order; truth = both users' remaining items"
Clock = Literal["relative", "absolute"]

__all__ = ["MIXED_PROTOCOL", "Clock", "merge_histories", "merge_truths", "mixed_pairs", "mixed_tastes"]


def mixed_pairs(n_users: int, *, seed: int, rounds: int = 1) -> IntArray:
    """``[P, 2]`` indices of paired users: per round, a seeded permutation cut into consecutive pairs."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    rng = np.random.default_rng(seed)
    usable = n_users // 2 * 2
    parts = [rng.permutation(n_users)[:usable].reshape(-1, 2) for _ in range(rounds)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 2), dtype=np.int64)


def _clock(history: IntArray, times: IntArray | None, clock: Clock) -> np.ndarray:
    n = history.shape[0]
    if times is not None and clock == "absolute":
        return np.asarray(times, dtype=np.float64)
    if times is not None and n > 1 and times[-1] > times[0]:
        t = np.asarray(times, dtype=np.float64)
        return (t - t[0]) / (t[-1] - t[0])
    return np.arange(n, dtype=np.float64) / max(n - 1, 1)


def merge_histories(
    a: IntArray,
    b: IntArray,
    times_a: IntArray | None = None,
    times_b: IntArray | None = None,
    clock: Clock = "relative",
) -> IntArray:
    """Both histories in one time order (see the module docstring)."""
    if clock == "absolute" and (times_a is None or times_b is None):
        raise ValueError("the absolute clock needs both users' click times")
    keys = np.concatenate([_clock(a, times_a, clock), _clock(b, times_b, clock)])
    slot = np.concatenate([np.zeros(a.shape[0]), np.ones(b.shape[0])])
    position = np.concatenate([np.arange(a.shape[0]), np.arange(b.shape[0])])
    order = np.lexsort((position, slot, keys))
    return np.concatenate([a, b]).astype(np.int64)[order]


def merge_truths(a: IntArray, b: IntArray) -> IntArray:
    """Union of two truth sets, ``a``'s items first; ``b``'s unknown (negative) ids are renumbered past
    ``a``'s so that two different unknown items never become one."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    shift = int(-a.min()) if a.size and a.min() < 0 else 0
    b = np.where(b < 0, b - shift, b)
    extra = b[~np.isin(b, a)]
    _, first = np.unique(extra, return_index=True)
    return np.concatenate([a, extra[np.sort(first)]])


def mixed_tastes(heldout: HeldOut, *, seed: int, rounds: int = 1, clock: Clock = "relative") -> HeldOut:
    """Pairs of ``heldout``'s users as shared accounts; ``user_ids`` holds the first user of each pair."""
    pairs = mixed_pairs(heldout.num_users, seed=seed, rounds=rounds)
    times = heldout.times
    histories = [
        merge_histories(
            heldout.histories[i],
            heldout.histories[j],
            times[i] if times is not None else None,
            times[j] if times is not None else None,
            clock,
        )
        for i, j in pairs.tolist()
    ]
    truths = [merge_truths(heldout.truths[i], heldout.truths[j]) for i, j in pairs.tolist()]
    return HeldOut(heldout.user_ids[pairs[:, 0]], histories, truths, MIXED_PROTOCOL)
