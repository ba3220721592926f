"""The segment cap (``refresh.max_segments``) on the SQLite map alone: the first N segments seen get a
partition, for good, whatever comes later; the rest go to the default partition, counted and warned
about at most once a minute. Which ones are admitted survives a restart and holds across connections."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from workers.infra.vector_store import DEFAULT_SEGMENT
from workers.refresh.segments import OVERFLOW_EXAMPLES, Overflow, OverflowWarning, SegmentMap, partition_name


def _ids(*items: int) -> np.ndarray:
    return np.array(items, dtype=np.int64)


def test_the_first_segments_seen_get_a_partition_later_ones_the_default(tmp_path: Path) -> None:
    path = SegmentMap.file(tmp_path)
    segments = SegmentMap(path, max_segments=2)
    overflow = segments.update([(1, "eu"), (2, None), (3, "us"), (4, "eu"), (5, "asia"), (6, DEFAULT_SEGMENT)])
    assert segments.admitted() == {"eu", "us"}  # "all" is the default partition itself: never counted
    assert overflow == Overflow(clicks=1, segments=1, examples=("asia",))
    groups = segments.group(_ids(1, 2, 3, 4, 5, 6, 7))
    assert {k: v.tolist() for k, v in groups.items()} == {
        DEFAULT_SEGMENT: [2, 5, 6, 7],
        partition_name("eu"): [1, 4],
        partition_name("us"): [3],
    }
    # a refused segment stays refused however often it is clicked; the admitted ones stay, also unclicked
    overflow = segments.update([(10 + n, "asia") for n in range(50)] + [(8, "africa")])
    assert overflow == Overflow(clicks=51, segments=2, examples=("asia", "africa"))
    assert segments.admitted() == {"eu", "us"}
    assert segments.partitions(["asia", "us", None]) == [DEFAULT_SEGMENT, partition_name("us"), DEFAULT_SEGMENT]
    segments.close()

    again = SegmentMap(path, max_segments=2)  # a restart
    assert again.admitted() == {"eu", "us"}
    again.update([(5, "asia")])
    assert again.admitted() == {"eu", "us"}
    again.close()
    # a raised cap admits what comes next; the items of segments refused before move with their next publish
    raised = SegmentMap(path, max_segments=3)
    assert raised.admitted() == {"eu", "us"}
    raised.update([(9, "africa")])
    assert raised.admitted() == {"eu", "us", "africa"}
    assert raised.group(_ids(8))[partition_name("africa")].tolist() == [8]
    raised.close()


def test_the_partitions_follow_the_cap_not_the_input(tmp_path: Path) -> None:
    segments = SegmentMap(SegmentMap.file(tmp_path), max_segments=64)
    overflow = segments.update((n, f"seg{n}") for n in range(1, 10_001))  # a new segment in every click
    groups = segments.group(np.arange(1, 10_001, dtype=np.int64))
    assert len(groups) == 65  # 64 segments and the default partition
    assert overflow.clicks == 10_000 - 64 and overflow.segments == 10_000 - 64
    assert len(overflow.examples) == OVERFLOW_EXAMPLES
    assert segments.admitted() == {f"seg{n}" for n in range(1, 65)}  # the first 64 seen, not the "smallest" names
    segments.close()


def test_a_map_without_a_cap_only_reads_what_is_admitted(tmp_path: Path) -> None:
    path = SegmentMap.file(tmp_path)
    writer = SegmentMap(path, max_segments=1)
    writer.update([(1, "eu")])
    reader = SegmentMap(path)  # the gateway's insert_data
    reader.update([(2, "us")])
    assert reader.admitted() == {"eu"}
    assert set(reader.group(_ids(1, 2))) == {partition_name("eu"), DEFAULT_SEGMENT}
    writer.close()
    reader.close()


def test_the_cap_holds_across_connections_admitting_at_once(tmp_path: Path) -> None:
    path = SegmentMap.file(tmp_path)
    SegmentMap(path, max_segments=5).close()
    maps = [SegmentMap(path, max_segments=5) for _ in range(4)]
    start = threading.Barrier(len(maps))

    def admit(index: int, segments: SegmentMap) -> None:
        start.wait()
        for n in range(20):
            segments.admit([f"t{index}_{n}"])

    threads = [threading.Thread(target=admit, args=(i, m)) for i, m in enumerate(maps)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(maps[0].admitted()) == 5
    assert all(m.admitted() == maps[0].admitted() for m in maps)
    for segments in maps:
        segments.close()


def test_a_file_written_before_the_cap_keeps_its_segments_up_to_the_cap(tmp_path: Path) -> None:
    import sqlite3

    path = SegmentMap.file(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE item_segment (item_id INTEGER PRIMARY KEY, segment TEXT)")
    conn.executemany("INSERT INTO item_segment VALUES (?, ?)", [(1, "us"), (2, "eu"), (3, "asia"), (4, "eu")])
    conn.commit()
    conn.close()
    segments = SegmentMap(path, max_segments=2)
    assert segments.admitted() == {"asia", "eu"}  # in name order: when they were first seen is not recorded
    assert segments.group(_ids(2, 4))[partition_name("eu")].tolist() == [2, 4]
    segments.close()


def test_the_warning_is_rate_limited_and_sums_what_it_did_not_say(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    warning = OverflowWarning(every_s=60.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="workers.refresh.segments")
    assert not warning.note(Overflow(), 2)  # nothing refused: nothing said
    assert warning.note(Overflow(3, 1, ("a",)), 2)
    for _ in range(100):
        now[0] += 0.5
        assert not warning.note(Overflow(2, 2, ("b", "c")), 2)
    now[0] += 10.0  # 60 s after the first warning
    assert warning.note(Overflow(1, 1, ("d",)), 2)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("3 click(s)")
    assert messages[1].startswith("201 click(s)") and "['b', 'c', 'd']" in messages[1]
