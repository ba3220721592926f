"""Days, not hours: a compressed-days soak. Four days of a stack's traffic at 100 clicks/s (36M clicks) in two
hours at 5k clicks/s, with 50 Kafka + 10 HTTP recall requests/s, a new item every second and 100k items
(the rates of ``bench.broker``'s soak, the click rate of the issue), through ``bench.soak``.

Every window (default 5 min) samples the RSS of every process of the stack every 5 s (a window's RSS is its
peak: one end sample lands anywhere in a refresh round's cycle) and the disk use of the stack's state by
part (ingest state, checkpoints, models, Milvus, broker, other: see ``bench.soak.disk_parts``). The goal: from
the end of the warm-up (30 min) to the end, every process' RSS and the state's disk within 1.2x
of their values at 30 min; 0 lost clicks, 0 failed replies. Writes ``bench/results/days.json`` with exactly
the keys of :data:`KEYS` and ``days_details.json`` (the per-window series, load averages, the machine, the
warm-up window used).

Time compresses for what is kept by time too: the clicks topic's retention (``kafka.clicks_retention_ms``,
a day) is scaled by ``100 / click-rate`` (a compressed day of the 2-hour run lasts 28.8 minutes), so that
the broker keeps a day of clicks as a stack at 100 clicks/s would; ``--real-time-retention`` keeps it as
configured (then, at 5k clicks/s, the topic's size bound of 1 GB is what stops it, after about an hour).
The ingest state's retention is by count (clicks per user, the training window) and needs no scaling.

    python -m bench.days                                          # 2 h + start and drain
    python -m bench.days --quick                                  # 3-minute smoke, results/quick/
    python -m bench.days --duration 1200 --window 120 --warmup-s 600
    python -m bench.days --heap-profile                           # and the refresh worker's heap profile
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.soak_cli import QUICK as SMOKE
from bench.soak_cli import parse as parse_soak
from bench.soak_cli import run_and_write, soak_config, soak_parser
from workers.refresh.heap_profile import FILE_NAME as HEAP_PROFILE_FILE
from workers.settings import KafkaSettings

PARTS = ("ingest_state", "checkpoints", "models", "milvus", "broker", "other")
KEYS = (
    "clicks_sent",
    "duration_s",
    "lost_clicks",
    "failed_replies",
    "rss_growth_ratio_after_warmup",
    "disk_growth_ratio_after_warmup",
    "state_bytes_per_user",
    "rss_mb_last",
    "disk_mb_last",
)
# The benchmark process (load generators, the recorder of every outcome) is not a process of the stack: its
# RSS is in the details, not in the goal.
NOT_STACK = ("bench",)
REAL_RATE = 100.0  # clicks/s of the stack whose days are compressed (36M clicks = four days)
QUICK = {**SMOKE, "warmup_s": 60.0}  # the shared smoke run, growth measured from its 1-minute window


def _ratio(ref: float | None, last: float | None) -> float | None:
    return round(last / ref, 3) if ref and last is not None else None


def _mb(n: float) -> float:
    return round(n / 2**20, 1)


def _peak(process: dict[str, Any]) -> float | None:
    """A window's RSS: its peak, or its end sample in a soak that took no 5-second samples."""
    peak = process.get("rss_mb_max")
    return peak if peak is not None else process.get("rss_mb")


def reference_window(windows: Sequence[dict[str, Any]], warmup_s: float) -> tuple[int, str | None]:
    """The window ending at the warm-up: the last one whose end is at or before ``warmup_s``. The first one
    (and the reason) when no window comes after the warm-up (a run no longer than it) or none ends by then
    (windows longer than the warm-up)."""
    if not windows:
        raise ValueError("no windows")
    if windows[-1]["t_end_s"] <= warmup_s:
        why = f"the run ({windows[-1]['t_end_s']:g} s) is no longer than warmup_s={warmup_s:g}"
        return 0, f"{why}: the first window is the reference"
    inside = [i for i, w in enumerate(windows) if w["t_end_s"] <= warmup_s]
    if inside:
        return inside[-1], None
    why = f"no window ends by warmup_s={warmup_s:g} (the first ends at {windows[0]['t_end_s']:g} s)"
    return 0, f"{why}: the first window is the reference"


def summarize(soak: dict[str, Any], warmup_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """A soak's result (``bench.soak.run_soak``) -> (``days.json``, exactly :data:`KEYS`; its details).

    Growth ratios: last window / the reference window (:func:`reference_window`), per process (the stack's:
    :data:`NOT_STACK` left out of the maximum; a window's RSS is its peak, :func:`_peak`; the end-sample and
    median ratios are in the details) and per disk part; the disk ratio of ``days.json`` is the total's.
    ``failed_replies`` counts both paths (Kafka replies that failed or never came, failed HTTP requests).
    ``state_bytes_per_user``: the ingest state's bytes after the drain over the distinct users
    that clicked (the soak counts them); the stream's user population when a result lacks the count."""
    windows = soak["windows"]
    ref_i, fallback = reference_window(windows, warmup_s)
    ref, last = windows[ref_i], windows[-1]
    # a window's end sample, and its peak and median of the 5-second samples where the soak took them
    rss_ratio_by = {
        stat: {
            name: _ratio(ref["processes"].get(name, {}).get(f"rss_mb{stat}"), p.get(f"rss_mb{stat}"))
            for name, p in last["processes"].items()
        }
        for stat in ("", "_max", "_median")
    }
    rss_ratio = {name: _ratio(_peak(ref["processes"].get(name, {})), _peak(p)) for name, p in last["processes"].items()}
    stack_ratios = [r for name, r in rss_ratio.items() if name not in NOT_STACK and r is not None]
    disk_ref, disk_last = ref["disk_bytes"], last["disk_bytes"]
    disk_ratio = {part: _ratio(disk_ref.get(part), disk_last.get(part)) for part in (*PARTS, "total")}
    end = soak.get("disk_bytes_end") or disk_last
    users = soak.get("users_clicked")
    basis = "distinct users that clicked (counted by the soak as it sent)"
    if not users:
        users, basis = soak.get("stream_users"), "the stream's user population (no distinct count in the result)"
    kafka_failed, http_failed = int(soak["failed_replies"]), int(soak.get("http_failed", 0))
    summary = {
        "clicks_sent": int(soak["clicks_sent"]),
        "duration_s": soak["duration_s"],
        "lost_clicks": int(soak["lost_clicks"]),
        "failed_replies": kafka_failed + http_failed,
        "rss_growth_ratio_after_warmup": max(stack_ratios, default=None),
        "disk_growth_ratio_after_warmup": disk_ratio["total"],
        "state_bytes_per_user": round(end["ingest_state"] / users, 1) if users else None,
        "rss_mb_last": {name: _peak(p) for name, p in last["processes"].items() if name not in NOT_STACK},
        "disk_mb_last": {part: _mb(disk_last[part]) for part in (*PARTS, "total")},
    }
    details = {
        "warmup_s": warmup_s,
        "warmup_s_effective": ref["t_end_s"],
        "warmup_fallback": fallback,
        "reference_window": ref_i + 1,
        "windows": len(windows),
        "rss_stat": "a window's RSS is its peak (the largest of its 5-second samples; the end sample where a soak "
        "has none): a single end sample lands anywhere in a round's cycle",
        "rss_growth_ratio_per_process": rss_ratio,
        "rss_growth_ratio_per_process_window_end": rss_ratio_by[""],
        "rss_growth_ratio_per_process_window_max": rss_ratio_by["_max"],
        "rss_growth_ratio_per_process_window_median": rss_ratio_by["_median"],
        "rss_processes_in_goal": sorted(n for n in rss_ratio if n not in NOT_STACK),
        "disk_growth_ratio_per_part": disk_ratio,
        "disk_size": "blocks allocated to regular files (st_blocks * 512), per part; total = sum of the parts",
        "disk_mb_at_reference": {part: _mb(disk_ref[part]) for part in (*PARTS, "total")},
        "disk_mb_end_after_drain": {part: _mb(end[part]) for part in (*PARTS, "total")},
        "ingest_state_bytes_end": end["ingest_state"],
        "users": {"count": users, "basis": basis, "stream_population": soak.get("stream_users")},
        "failed_replies": {"kafka": kafka_failed, "http": http_failed},
        "clicks": {k: soak.get(k) for k in ("clicks_applied", "clicks_dead_lettered", "clicks_delivery_failed")},
        "drain_s": soak.get("drain_s"),
        "series": [
            {
                "t_end_s": w["t_end_s"],
                "rss_mb": {name: p["rss_mb"] for name, p in w["processes"].items()},
                "rss_mb_max": {name: p.get("rss_mb_max") for name, p in w["processes"].items()},
                "cpu_cores": {name: p["cpu"] for name, p in w["processes"].items()},
                "disk_mb": {part: _mb(w["disk_bytes"][part]) for part in (*PARTS, "total")},
                "load_average": w.get("load_average"),
                "clicks_sent": w.get("clicks_sent"),
                "clicks_applied": w.get("clicks_applied"),
                "users_clicked": w.get("users_clicked"),
                "kafka": w.get("kafka"),
                "http": w.get("http"),
                "swaps": w.get("swaps"),
            }
            for w in windows
        ],
    }
    assert tuple(summary) == KEYS
    return summary, details


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line (:mod:`bench.soak_cli`'s, at this benchmark's rates, plus ``--warmup-s`` and
    ``--heap-profile``); ``--quick`` as there, with a 1-minute warm-up."""
    p = soak_parser(
        "python -m bench.days",
        __doc__.splitlines()[0] if __doc__ else "",
        "days",
        duration=7200.0,
        click_rate=5000.0,
        kafka_rate=50.0,
        http_rate=10.0,
    )
    p.add_argument("--warmup-s", type=float, default=1800.0, help="growth is measured from the window ending here")
    p.add_argument(
        "--real-time-retention",
        action="store_true",
        help="keep the clicks topic's time retention as configured (default: scaled by the compression, see above)",
    )
    p.add_argument(
        "--heap-profile",
        action="store_true",
        help="run the refresh worker with MINDSTREAM_REFRESH__HEAP_PROFILE=true; its profile goes into the details",
    )
    return parse_soak(p, argv, QUICK)


def heap_profile(workdir: Path) -> dict[str, Any]:
    """The refresh worker's heap profile (``--heap-profile``) from the stack's work directory; None without."""
    profile = next(workdir.rglob(HEAP_PROFILE_FILE), None)
    return {"refresh_heap_profile": json.loads(profile.read_text()) if profile is not None else None}


def compressed_env(click_rate: float, real_time_retention: bool) -> dict[str, str]:
    """The clicks topic's time retention scaled by the compression (a compressed day lasts ``86,400 x
    REAL_RATE / click_rate`` seconds), so that the broker keeps what a stack at ``REAL_RATE`` clicks/s keeps
    (a day of clicks); its size bound (``kafka.clicks_retention_bytes``) is left as configured."""
    if real_time_retention or click_rate <= REAL_RATE:
        return {}
    retention_ms = KafkaSettings().clicks_retention_ms
    if retention_ms <= 0:
        return {}
    return {"MINDSTREAM_KAFKA__CLICKS_RETENTION_MS": str(max(60_000, round(retention_ms * REAL_RATE / click_rate)))}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    env = compressed_env(args.click_rate, args.real_time_retention)
    if args.heap_profile:
        env["MINDSTREAM_REFRESH__HEAP_PROFILE"] = "true"
    cfg = soak_config(args, env=env)
    return run_and_write(args, cfg, lambda soak: summarize(soak, args.warmup_s), collect=heap_profile)


if __name__ == "__main__":
    raise SystemExit(main())
