"""History reads from the ingest state: schema 4's covering index ``(user_id, ts, seq, item_id)`` against
schema 3's ``(user_id, ts)``, on the same file.

One partition file is filled through :class:`PartitionStore` (``--users`` x ``--clicks`` events, users
interleaved at random, as a stream writes them), then read twice per index: what a refresh round reads
(:meth:`StateReader.histories` of every user, ``--train-history`` clicks each) and what a recall by
``user_ids`` reads (:meth:`StateReader.history` of one random user, ``maxlen`` 20, ``--lookups`` times: p50,
p99). The schema-3 variant is the same file with the index swapped. The OS page cache holds the file in both
(it is read once before timing); SQLite's own cache is the store's. Writes
``bench/results/history_read.json``.

    python -m bench.history_read [--users 20000] [--clicks 200]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import emit
from schemas.messages import ClickEvent
from workers.ingest.state_reader import StateReader
from workers.ingest.state_store import PartitionStore, partition_path

TOPIC = "clicks"
INDEXES = {
    "schema4_covering": ("events_by_user_history", "(user_id, ts, seq, item_id)"),
    "schema3_user_ts": ("events_by_user", "(user_id, ts)"),
}


def fill(state_dir: Path, users: int, clicks: int, seed: int, batch: int = 20_000) -> int:
    """``users`` x ``clicks`` events in one file, users in a seeded random order; the rows written."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.repeat(np.arange(1, users + 1), clicks))
    items = rng.integers(1, 100_000, size=order.size)
    store = PartitionStore.open(state_dir, TOPIC, 0)
    try:
        for lo in range(0, order.size, batch):
            events = [
                ClickEvent(event_id=f"e{n}", user_id=int(order[n]), item_id=int(items[n]), ts=n)
                for n in range(lo, min(lo + batch, order.size))
            ]
            store.apply(events, TOPIC, 0, lo + len(events) - 1)
    finally:
        store.close()
    return int(order.size)


def use_index(path: Path, variant: str) -> None:
    """Leave exactly the user index of ``variant`` on the file."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for other, _ in INDEXES.values():
            conn.execute(f"DROP INDEX IF EXISTS {other}")
        name, columns = INDEXES[variant]
        conn.execute(f"CREATE INDEX {name} ON events {columns}")
        conn.execute("VACUUM")
    finally:
        conn.close()


def measure(state_dir: Path, users: int, train_history: int, lookups: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    path = partition_path(state_dir, TOPIC, 0)
    path.read_bytes()  # into the OS page cache, as a running stack's file is
    everyone = list(range(1, users + 1))
    with StateReader(state_dir, TOPIC) as reader:
        began = time.perf_counter()
        histories = reader.histories(everyone, train_history)
        refresh_s = time.perf_counter() - began
        picks = rng.integers(1, users + 1, size=lookups).tolist()
        times = []
        for user in picks:
            t = time.perf_counter()
            reader.history(int(user), 20)
            times.append((time.perf_counter() - t) * 1000)
    return {
        "file_mb": round(path.stat().st_size / 2**20, 1),
        "refresh_read_s": float(f"{refresh_s:.4g}"),  # 4 significant digits: a tiny file reads in < 1 ms
        "refresh_rows_per_s": round(sum(map(len, histories)) / refresh_s),
        "recall_history_p50_ms": round(float(np.percentile(times, 50)), 4),
        "recall_history_p99_ms": round(float(np.percentile(times, 99)), 4),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.history_read", description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--clicks", type=int, default=200, help="per user")
    p.add_argument("--train-history", type=int, default=200, help="clicks per user a round reads")
    p.add_argument("--lookups", type=int, default=5000)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="history-read-") as tmp:
        state = Path(tmp)
        began = time.perf_counter()
        rows = fill(state, args.users, args.clicks, args.seed)
        fill_s = time.perf_counter() - began
        results = {}
        for variant in INDEXES:
            use_index(partition_path(state, TOPIC, 0), variant)
            results[variant] = measure(state, args.users, args.train_history, args.lookups, args.seed)
    new, old = results["schema4_covering"], results["schema3_user_ts"]
    emit(
        "history_read",
        {
            "rows": rows,
            "users": args.users,
            "fill_s": round(fill_s, 1),
            **results,
            "refresh_read_speedup": round(old["refresh_read_s"] / new["refresh_read_s"], 2),
            "recall_history_p99_speedup": round(old["recall_history_p99_ms"] / new["recall_history_p99_ms"], 2),
            "file_growth": round(new["file_mb"] / old["file_mb"], 3),
            "load_average_before": load_before,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
