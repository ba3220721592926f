"""bench.days' summary of a soak (synthetic windows: no stack, no broker) and the disk walk by part."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bench.common import RESULTS, disk_usage
from bench.days import KEYS, PARTS, compressed_env, parse, reference_window, summarize

MB = 2**20


def _window(t_end: float, rss: dict[str, float], disk_mb: dict[str, float]) -> dict[str, Any]:
    disk = {part: int(disk_mb.get(part, 0.0) * MB) for part in PARTS}
    disk["total"] = sum(disk.values())
    return {
        "t_end_s": t_end,
        "processes": {name: {"rss_mb": mb, "cpu": 0.5} for name, mb in rss.items()},
        "disk_bytes": disk,
        "load_average": [1.0, 1.0, 1.0],
        "clicks_sent": int(t_end * 100),
    }


def _soak(windows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "duration_s": windows[-1]["t_end_s"],
        "windows": windows,
        "clicks_sent": 36_000_000,
        "lost_clicks": 0,
        "failed_replies": 2,
        "http_failed": 1,
        "clicks_applied": 36_000_000.0,
        "stream_users": 50_000,
        "users_clicked": 40_000,
        **extra,
    }


def _series() -> list[dict[str, Any]]:
    """5-minute windows over 1 h: RSS and disk grow until 30 min, then ingest keeps growing, the rest is flat."""
    out = []
    for k in range(1, 13):
        t = 300.0 * k
        late = max(0, k - 6)
        rss = {"ingest": 100.0 + 10 * min(k, 6) + 20 * late, "milvus": 500.0, "bench": 50.0 * k}
        disk = {"ingest_state": 100.0 + 10 * k, "milvus": 200.0, "broker": 50.0, "models": 20.0, "other": 5.0}
        out.append(_window(t, rss, disk))
    return out


def test_the_reference_is_the_last_window_ending_by_the_warm_up() -> None:
    windows = _series()
    assert reference_window(windows, 1800.0) == (5, None)  # ends at 1800 s exactly
    assert reference_window(windows, 2000.0) == (5, None)  # 2100 s ends after it
    assert reference_window(windows, 300.0) == (0, None)


def test_a_run_shorter_than_the_warm_up_falls_back_to_the_first_window() -> None:
    windows = _series()[:3]  # 15 minutes
    index, why = reference_window(windows, 1800.0)
    assert index == 0
    assert why is not None and "no longer than" in why
    _, details = summarize(_soak(windows), 1800.0)
    assert details["warmup_s_effective"] == 300.0
    assert details["reference_window"] == 1
    assert details["warmup_fallback"] == why


def test_windows_longer_than_the_warm_up_fall_back_to_the_first_window_too() -> None:
    windows = [_window(3600.0, {"a": 1.0}, {"other": 1.0}), _window(7200.0, {"a": 2.0}, {"other": 1.0})]
    index, why = reference_window(windows, 1800.0)
    assert index == 0 and why is not None and "first ends at 3600" in why
    with pytest.raises(ValueError):
        reference_window([], 1800.0)


def test_the_summary_has_exactly_the_issues_keys() -> None:
    summary, _ = summarize(_soak(_series()), 1800.0)
    assert tuple(summary) == KEYS
    assert set(summary) == {
        "clicks_sent",
        "duration_s",
        "lost_clicks",
        "failed_replies",
        "rss_growth_ratio_after_warmup",
        "disk_growth_ratio_after_warmup",
        "state_bytes_per_user",
        "rss_mb_last",
        "disk_mb_last",
    }
    assert summary["clicks_sent"] == 36_000_000
    assert summary["duration_s"] == 3600.0
    assert summary["lost_clicks"] == 0
    assert summary["failed_replies"] == 3  # 2 Kafka + 1 HTTP


def test_growth_is_measured_from_the_warm_up_window_and_the_bench_process_is_left_out() -> None:
    summary, details = summarize(_soak(_series()), 1800.0)
    # ingest: 160 MB at 30 min, 160 + 6 * 20 = 280 MB at 60 min; the bench process grows 2x but is no part
    assert summary["rss_growth_ratio_after_warmup"] == pytest.approx(280 / 160, abs=1e-3)
    assert details["rss_growth_ratio_per_process"]["bench"] == pytest.approx(600 / 300, abs=1e-3)
    assert details["rss_growth_ratio_per_process"]["milvus"] == 1.0
    assert "bench" not in details["rss_processes_in_goal"]
    # disk: 160 + 200 + 50 + 20 + 5 = 435 MB at 30 min, 495 MB at the end
    assert summary["disk_growth_ratio_after_warmup"] == pytest.approx(495 / 435, abs=1e-3)
    assert details["disk_growth_ratio_per_part"]["ingest_state"] == pytest.approx(220 / 160, abs=1e-3)
    assert details["disk_growth_ratio_per_part"]["checkpoints"] is None  # 0 at the reference: no ratio
    assert details["warmup_s_effective"] == 1800.0
    assert details["warmup_fallback"] is None
    assert len(details["series"]) == 12
    assert details["series"][5]["disk_mb"]["total"] == pytest.approx(435.0)
    # from the first window instead, the ratio would be larger: the warm-up's own growth is not counted
    first, _ = summarize(_soak(_series()), 0.0 + 300.0)
    assert first["rss_growth_ratio_after_warmup"] == pytest.approx(280 / 110, abs=1e-3)


def test_last_values_per_process_and_per_part() -> None:
    summary, _ = summarize(_soak(_series()), 1800.0)
    assert summary["rss_mb_last"] == {"ingest": 280.0, "milvus": 500.0}
    assert summary["disk_mb_last"] == {
        "ingest_state": 220.0,
        "checkpoints": 0.0,
        "models": 20.0,
        "milvus": 200.0,
        "broker": 50.0,
        "other": 5.0,
        "total": 495.0,
    }


def test_state_bytes_per_user_uses_the_state_after_the_drain_and_the_distinct_users() -> None:
    windows = _series()
    end = dict(windows[-1]["disk_bytes"], ingest_state=240 * MB)
    summary, details = summarize(_soak(windows, disk_bytes_end=end), 1800.0)
    assert summary["state_bytes_per_user"] == pytest.approx(240 * MB / 40_000, abs=0.1)
    assert details["ingest_state_bytes_end"] == 240 * MB
    assert details["users"]["count"] == 40_000 and "distinct" in details["users"]["basis"]
    # without the drain's sample: the last window's; without a distinct count: the population, named so
    summary, details = summarize(_soak(windows, users_clicked=None), 1800.0)
    assert summary["state_bytes_per_user"] == pytest.approx(220 * MB / 50_000, abs=0.1)
    assert "population" in details["users"]["basis"]


def _file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))


def test_disk_usage_splits_a_tree_by_part_and_counts_each_file_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _file(state / "ingest" / "clicks-p0.sqlite", 64 * 1024)
    _file(state / "models" / "v1" / "model.pdparams", 32 * 1024)
    _file(state / "refresh" / "state.json", 8 * 1024)
    _file(tmp_path / "milvus" / "data" / "seg", 16 * 1024)
    _file(tmp_path / "logs" / "ingest.log", 4 * 1024)
    os.link(state / "ingest" / "clicks-p0.sqlite", tmp_path / "logs" / "hardlink")  # the same file: once
    (tmp_path / "logs" / "loop").symlink_to(tmp_path)  # not followed
    sparse = tmp_path / "kafka" / "00.index"
    sparse.parent.mkdir()
    with sparse.open("wb") as f:
        f.truncate(10 * MB)  # preallocated: long, but no blocks on disk
    parts = {
        "ingest_state": state / "ingest",
        "checkpoints": state / "checkpoints",  # not there: 0
        "models": state / "models",
        "milvus": tmp_path / "milvus",
        "broker": tmp_path / "kafka",
    }
    du = disk_usage(parts, [tmp_path, state])
    assert set(du) == {*PARTS, "total"}
    assert du["ingest_state"] >= 64 * 1024
    assert du["models"] >= 32 * 1024
    assert du["milvus"] >= 16 * 1024
    assert du["checkpoints"] == 0
    assert du["broker"] < 1 * MB  # allocated blocks, not the file's length
    assert 12 * 1024 <= du["other"] < 64 * 1024  # refresh state + the log; the hard link is not counted again
    assert du["total"] == sum(du[p] for p in PARTS)


def test_disk_usage_survives_files_and_directories_vanishing_during_the_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import bench.common

    _file(tmp_path / "seg" / "kept", 4096)
    _file(tmp_path / "seg" / "gone", 4096)
    _file(tmp_path / "seg" / "compacted" / "old", 4096)
    real = os.scandir

    class Listed(list[os.DirEntry[str]]):  # what scandir returns: iterable, and a context manager
        def __enter__(self) -> Listed:
            return self

        def __exit__(self, *_: object) -> None:
            return None

    def listed_then_removed(path: Any = ".") -> Any:
        if not isinstance(path, str):
            return real(path)  # pytest's own calls untouched
        with real(path) as it:
            entries = Listed(it)
        if path.endswith("seg"):  # a compaction between the listing and the stat calls
            (tmp_path / "seg" / "gone").unlink()
            shutil.rmtree(tmp_path / "seg" / "compacted")
        return entries

    monkeypatch.setattr(bench.common.os, "scandir", listed_then_removed)
    du = disk_usage({"milvus": tmp_path / "seg"}, [tmp_path])
    assert 4096 <= du["milvus"] < 8192  # only the file still there
    assert du["other"] == 0 and du["total"] == du["milvus"]


def test_the_command_line_defaults_are_the_issues_and_quick_writes_elsewhere() -> None:
    args = parse([])
    assert (args.click_rate, args.duration, args.warmup_s, args.window) == (5000.0, 7200.0, 1800.0, 300.0)
    assert (args.kafka_rate, args.http_rate, args.new_items_per_s, args.items) == (50.0, 10.0, 1.0, 100_000)
    assert args.results == RESULTS and args.out == "days"
    quick = parse(["--quick", "--click-rate", "500"])
    assert quick.duration == 180.0 and quick.warmup_s == 60.0 and quick.items == 3000
    assert quick.click_rate == 500.0  # given explicitly: kept
    assert quick.results == RESULTS / "quick"
    assert parse(["--quick", "--results", "/tmp/x"]).results == Path("/tmp/x")


def test_the_clicks_retention_is_compressed_with_time() -> None:
    # a day at 100 clicks/s is 28.8 minutes at 5k clicks/s
    assert compressed_env(5000.0, False) == {"MINDSTREAM_KAFKA__CLICKS_RETENTION_MS": str(86_400_000 // 50)}
    assert compressed_env(5000.0, True) == {}
    assert compressed_env(100.0, False) == {}  # not compressed: as configured
    assert compressed_env(1e9, False) == {"MINDSTREAM_KAFKA__CLICKS_RETENTION_MS": "60000"}  # at least a minute


def test_a_windows_rss_is_its_peak_where_the_soak_sampled_it_with_end_and_median_ratios_beside() -> None:
    ref = _window(1800.0, {"refresh": 800.0}, {"milvus": 100.0})
    ref["processes"]["refresh"] |= {"rss_mb_max": 1000.0, "rss_mb_median": 820.0}
    last = _window(3600.0, {"refresh": 1100.0}, {"milvus": 100.0})  # ended mid-round: 1.375x at the end
    last["processes"]["refresh"] |= {"rss_mb_max": 1050.0, "rss_mb_median": 840.0}
    summary, details = summarize(_soak([ref, last]), 1800.0)
    assert summary["rss_growth_ratio_after_warmup"] == 1.05  # peak over peak, not the phase of one sample
    assert summary["rss_mb_last"] == {"refresh": 1050.0}
    assert details["rss_growth_ratio_per_process"]["refresh"] == 1.05
    assert details["rss_growth_ratio_per_process_window_end"]["refresh"] == 1.375
    assert details["rss_growth_ratio_per_process_window_max"]["refresh"] == 1.05
    assert details["rss_growth_ratio_per_process_window_median"]["refresh"] == round(840 / 820, 3)
    assert details["series"][1]["rss_mb_max"] == {"refresh": 1050.0}
    windows = [_window(1800.0, {"refresh": 800.0}, {}), _window(3600.0, {"refresh": 900.0}, {})]
    plain_summary, plain = summarize(_soak(windows), 1800.0)  # a soak without the samples: end samples
    assert plain["rss_growth_ratio_per_process_window_max"] == {"refresh": None}
    assert plain_summary["rss_growth_ratio_after_warmup"] == 1.125
    assert plain_summary["rss_mb_last"] == {"refresh": 900.0}
