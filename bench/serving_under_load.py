"""Serving under load: recall latency, per path and per stage, while the refresh worker trains, swaps and
adds new items, beside the same gateway on an idle machine.

One soak (``bench.soak.run_soak``) at ``bench.broker``'s soak rates: 1k clicks/s, 50 Kafka + 10 HTTP recall
requests/s, 100k items, a new item every second, a major round every 30 s, for 30 minutes in 5-minute
windows. Its stage sampler (``bench.stage_sampler``) reads, every second, the stage histograms of the
recall worker (Kafka) and the gateway (HTTP) and the refresh worker's activity, and calls each second
*busy* or *quiet*. Here busy means a major round or a swap was in progress or started in that second
(``--busy-activities``, default ``round swap``: the keys say "during round"; with a new item every second
the fast path runs nearly every second, so counting it too would leave almost no quiet second to compare;
the soak's own windows, and ``activity_share`` in the details, still show each activity).
The idle-machine HTTP figures are read from ``bench/results/http_latency.json`` (``p99_ms_at_300``,
``capacity_rps``; ``bench.http_latency``, not rerun here) when it is there, else null.

``serving_under_load.json`` holds exactly the keys of :data:`KEYS`:

* ``kafka_p99_ms_max_window``, ``http_p99_ms_max_window``: the largest per-window p99 (requests by their
  scheduled send time, answered ones);
* ``kafka_p99_ms_during_round``, ``http_p99_ms_during_round``: the p99 of the requests sent in busy
  seconds over the whole load;
* ``p99_stage_during_round``: the stage whose busy-class p99 is the largest over the whole load, across
  both paths: each (path, stage)'s p99 is read from the summed bucket deltas of the busy seconds as
  ``workers.status.window_quantile`` reads a window (the upper bound of the bucket holding it); a tie
  (two stages in the same bucket) goes to the one with the larger share of its observations in that
  bucket or above, then to Kafka before HTTP and to the earlier stage of ``STAGES``
  (``bench.stage_sampler.largest_stage``);
* ``model_age_p99_s``: p99 of the live model's age read every second; ``new_item_p99_s``: p99 of the
  first click -> recallable histogram over the whole load;
* ``http_p99_ms_at_300_idle``, ``http_capacity_rps_idle``: from ``http_latency.json``.

``serving_under_load_details.json``: the per-window series (latency by class, stage tables, busy share),
the whole load's stage table, the goals and whether each was met (every window Kafka p99 <= 50 ms and HTTP
p99 <= 30 ms, 0 failed replies, model age p99 <= 60 s, new item p99 <= 5 s, user freshness p99 <= 2 s),
load averages, the machine, the soak's own summary.

    python -m bench.serving_under_load                        # 30 min + start and drain
    python -m bench.serving_under_load --quick                # 3-minute smoke, results/quick/
    python -m bench.serving_under_load --duration 600 --window 120
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from bench.common import RESULTS
from bench.soak_cli import parse as parse_soak
from bench.soak_cli import run_and_write, soak_config, soak_parser
from workers.refresh.metrics import ACTIVITIES

NAME: Final = "serving_under_load"
DURING_ROUND: Final = ("round", "swap")  # the activities the "*_during_round" keys are about
KEYS: Final = (
    "soak_minutes",
    "kafka_p99_ms_max_window",
    "http_p99_ms_max_window",
    "kafka_p99_ms_during_round",
    "http_p99_ms_during_round",
    "p99_stage_during_round",
    "model_age_p99_s",
    "new_item_p99_s",
    "http_p99_ms_at_300_idle",
    "http_capacity_rps_idle",
)
# The issue's goals: (the details' name, what is compared, the bound it must not pass).
GOALS: Final = (
    ("kafka_p99_ms_every_window", "the largest window Kafka p99 (ms)", 50.0),
    ("http_p99_ms_every_window", "the largest window HTTP p99 (ms)", 30.0),
    ("failed_replies", "failed Kafka replies + failed HTTP requests", 0.0),
    ("model_age_p99_s", "p99 of the live model's age, read every second (s)", 60.0),
    ("new_item_p99_s", "p99 of first click -> recallable over the load (s)", 5.0),
    ("user_freshness_p99_s", "p99 of click -> in the state store over the load (s)", 2.0),
)
IDLE: Final = RESULTS / "http_latency.json"


def _max(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _every_window(windows: Sequence[dict[str, Any]], path: str) -> tuple[float | None, bool]:
    """The largest window p99 of ``path``, and whether every window has one (a window whose requests
    all failed has none: the goal is not met)."""
    values = [w[path]["p99_ms"] for w in windows]
    return _max(values), bool(values) and all(v is not None for v in values)


def idle_http(path: Path = IDLE) -> dict[str, Any]:
    """``bench.http_latency``'s p99 at 300 req/s and capacity from its result file; null where absent."""
    if not path.exists():
        return {"p99_ms_at_300": None, "capacity_rps": None, "source": f"{path} (absent)"}
    data = json.loads(path.read_text())
    return {
        "p99_ms_at_300": data.get("p99_ms_at_300"),
        "capacity_rps": data.get("capacity_rps"),
        "source": str(path),
        "date": (data.get("machine") or {}).get("date"),
        "setup": data.get("setup"),
    }


def _freshness_p99(soak: dict[str, Any], label: str) -> float | None:
    value: float | None = (soak.get("freshness_run", {}).get(label) or {}).get("p99_s")
    return value


def goals(soak: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each goal of :data:`GOALS`: the value, the bound, whether it was met (None: no value to judge)."""
    windows = soak["windows"]
    kafka, kafka_whole = _every_window(windows, "kafka")
    http, http_whole = _every_window(windows, "http")
    values: dict[str, float | None] = {
        "kafka_p99_ms_every_window": kafka if kafka_whole else None,
        "http_p99_ms_every_window": http if http_whole else None,
        "failed_replies": float(soak["failed_replies"] + soak.get("http_failed", 0)),
        "model_age_p99_s": (soak.get("live_model_age_s_run") or {}).get("p99"),
        "new_item_p99_s": _freshness_p99(soak, "new_item"),
        "user_freshness_p99_s": _freshness_p99(soak, "user"),
    }
    out = {}
    for name, what, bound in GOALS:
        value = values[name]
        out[name] = {"what": what, "value": value, "goal": bound, "met": None if value is None else value <= bound}
    return out


def summarize(soak: dict[str, Any], idle: dict[str, Any], soak_minutes: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """A soak's result (``bench.soak.run_soak``) and the idle figures -> (``serving_under_load.json``,
    exactly :data:`KEYS`; its details)."""
    windows = soak["windows"]
    overall = soak.get("p99_stage_busy_overall") or {}
    judged = goals(soak)
    summary = {
        "soak_minutes": soak_minutes,
        "kafka_p99_ms_max_window": _every_window(windows, "kafka")[0],
        "http_p99_ms_max_window": _every_window(windows, "http")[0],
        "kafka_p99_ms_during_round": soak.get("kafka_p99_ms_busy"),
        "http_p99_ms_during_round": soak.get("http_p99_ms_busy"),
        "p99_stage_during_round": overall.get("stage"),
        "model_age_p99_s": judged["model_age_p99_s"]["value"],
        "new_item_p99_s": judged["new_item_p99_s"]["value"],
        "http_p99_ms_at_300_idle": idle["p99_ms_at_300"],
        "http_capacity_rps_idle": idle["capacity_rps"],
    }
    met = [g["met"] for g in judged.values()]
    details = {
        "goals": judged,
        "goals_met": all(m is True for m in met),
        "during_round": {
            "busy_activities": (soak.get("stage_sampler") or {}).get("busy_activities"),
            "busy_share": soak.get("busy_share"),
            "activity_share": soak.get("activity_share"),
            "p99_stage_busy_overall": soak.get("p99_stage_busy_overall"),
            "p99_stage_busy": soak.get("p99_stage_busy"),
            "stages": soak.get("stages"),
            **{
                f"{path}_{key}": soak.get(f"{path}_{key}")
                for path in ("kafka", "http")
                for key in ("p99_ms_busy", "p99_ms_quiet", "n_busy", "n_quiet", "failed_busy", "failed_quiet")
            },
            "sampled_s": soak.get("sampled_s"),
            "unclassified_s": soak.get("unclassified_s"),
            "stage_gaps_s": soak.get("stage_gaps_s"),
        },
        "idle_http": idle,
        "live_model_age_s": soak.get("live_model_age_s_run"),
        "freshness": soak.get("freshness_run"),
        "series": [
            {
                "t_end_s": w["t_end_s"],
                "kafka": w["kafka"],
                "http": w["http"],
                "stages": w.get("stages"),
                "busy_share": w.get("busy_share"),
                "activity_share": w.get("activity_share"),
                "p99_stage_busy": w.get("p99_stage_busy"),
                "swaps": w.get("swaps"),
                "live_model_age_s": w.get("live_model_age_s"),
                "freshness": w.get("freshness"),
                "cpu_cores": {name: p["cpu"] for name, p in w["processes"].items()},
                "load_average": w.get("load_average"),
            }
            for w in windows
        ],
    }
    assert tuple(summary) == KEYS
    return summary, details


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line (:mod:`bench.soak_cli`'s at ``bench.broker``'s soak rates, plus ``--busy-activities``
    and ``--idle``)."""
    p = soak_parser(
        "python -m bench.serving_under_load",
        __doc__.splitlines()[0] if __doc__ else "",
        NAME,
        duration=1800.0,
        click_rate=1000.0,
        kafka_rate=50.0,
        http_rate=10.0,
    )
    p.add_argument(
        "--busy-activities",
        nargs="+",
        choices=ACTIVITIES,
        default=list(DURING_ROUND),
        help="the refresh activities that make a second busy",
    )
    p.add_argument("--idle", type=Path, default=IDLE, help="bench.http_latency's result (read, never rerun)")
    return parse_soak(p, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    cfg = soak_config(args, busy_activities=tuple(args.busy_activities))
    idle = idle_http(args.idle)
    minutes = round(args.duration / 60, 2)
    return run_and_write(args, cfg, lambda soak: summarize(soak, idle, minutes))


if __name__ == "__main__":
    raise SystemExit(main())
