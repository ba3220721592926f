"""ComiRec's user-level hold-out split, shared by the MovieLens and synthetic data sets."""

from __future__ import annotations

import numpy as np

from model.data.items import ItemCatalogue
from model.data.types import Dataset, HeldOut, IntArray, Sequences
from model.vocab import ItemVocab

HELDOUT_PROTOCOL = "all remaining items"


def take_users(seqs: Sequences, idx: IntArray) -> Sequences:
    """The users at the (ascending) row indices ``idx``, same id space."""
    lengths = seqs.lengths()
    member = np.zeros(seqs.num_users, dtype=bool)
    member[idx] = True
    offsets = np.zeros(idx.size + 1, dtype=np.int64)
    np.cumsum(lengths[idx], out=offsets[1:])
    items = np.ascontiguousarray(seqs.items[np.repeat(member, lengths)])
    return Sequences(seqs.user_ids[idx], offsets, items, seqs.item_count)


def hold_out(seqs: Sequences, idx: IntArray, history_share: float, times: IntArray | None = None) -> HeldOut:
    """History = the first ``int(len * history_share)`` clicks (at least 1, at most len - 1);
    truth = the rest. Every user in ``idx`` needs at least 2 clicks. ``times`` (aligned with
    ``seqs.items``) gives the held-out histories their click times."""
    histories: list[IntArray] = []
    truths: list[IntArray] = []
    history_times: list[IntArray] = []
    for i in idx:
        seq = seqs.sequence(int(i))
        cut = min(max(1, int(seq.size * history_share)), seq.size - 1)
        histories.append(seq[:cut].copy())
        truths.append(seq[cut:].copy())
        if times is not None:
            start = int(seqs.offsets[int(i)])
            history_times.append(np.asarray(times[start : start + cut], dtype=np.int64).copy())
    return HeldOut(
        seqs.user_ids[idx], histories, truths, HELDOUT_PROTOCOL, history_times if times is not None else None
    )


def split_users(
    seqs: Sequences,
    *,
    seed: int,
    history_share: float,
    name: str,
    vocab: ItemVocab | None = None,
    valid_share: float = 0.1,
    test_share: float = 0.1,
    times: IntArray | None = None,
    items: ItemCatalogue | None = None,
) -> Dataset:
    """Split users 80/10/10 into train/valid/test by a seeded shuffle of the user rows.

    Train users keep their full sequence; valid/test users are cut by :func:`hold_out`.
    Users with fewer than 2 clicks cannot be held out and stay in train. Each part lists its
    users in the input order (ascending ids for the readers here). ``times`` (one per click of
    ``seqs``) is kept for the held-out histories; ``items`` is the data set's item metadata.
    """
    if not 0 < history_share < 1:
        raise ValueError("history_share must be in (0, 1)")
    n = seqs.num_users
    perm = np.random.default_rng(seed).permutation(n)
    n_valid, n_test = int(n * valid_share), int(n * test_share)
    n_train = n - n_valid - n_test
    part = np.zeros(n, dtype=np.int8)  # 0 train, 1 valid, 2 test
    part[perm[n_train : n_train + n_valid]] = 1
    part[perm[n_train + n_valid :]] = 2
    part[seqs.lengths() < 2] = 0
    rows = np.arange(n, dtype=np.int64)
    return Dataset(
        name=name,
        train=take_users(seqs, rows[part == 0]),
        valid=hold_out(seqs, rows[part == 1], history_share, times),
        test=hold_out(seqs, rows[part == 2], history_share, times),
        item_count=seqs.item_count,
        vocab=vocab if vocab is not None else ItemVocab.identity(seqs.item_count),
        items=items,
    )
