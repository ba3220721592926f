"""bench.history_read on a tiny file: both indexes give the same histories, each variant has its index only."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bench.history_read import INDEXES, TOPIC, fill, measure, use_index
from workers.ingest.state_reader import StateReader
from workers.ingest.state_store import partition_path


def test_both_variants_read_the_same_histories(tmp_path: Path) -> None:
    assert fill(tmp_path, users=30, clicks=12, seed=1, batch=100) == 360
    path = partition_path(tmp_path, TOPIC, 0)
    seen = []
    for variant, (name, _) in INDEXES.items():
        use_index(path, variant)
        conn = sqlite3.connect(path)
        indexes = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        conn.close()
        assert name in indexes and not indexes & {other for other, _ in INDEXES.values() if other != name}
        with StateReader(tmp_path, TOPIC) as reader:
            seen.append(reader.histories(list(range(1, 31)), 10))
        result = measure(tmp_path, users=30, train_history=10, lookups=20, seed=1)
        assert result["refresh_read_s"] > 0 and result["recall_history_p99_ms"] >= result["recall_history_p50_ms"] > 0
    assert seen[0] == seen[1] and all(len(h) == 10 for h in seen[0])
