"""bench.serving_tradeoff's grid, its rows from a point's details and the plot (hand-made details, no stack)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.serving_tradeoff import grid, parse, plot, point_name, point_row


def test_the_grid_lists_each_point_once() -> None:
    points = grid([30, 120], [1, 5], fixed_refresh=120)
    assert points == [("round", 30, 1.0), ("round", 120, 1.0), ("fast_path", 120, 5)]
    assert point_name(120.0, 5.0) == "serving_tradeoff_r120_f5"


def _details(kafka: list[float | None], http: list[float | None], age: float, new_item: float) -> dict[str, Any]:
    return {
        "series": [{"kafka": {"p99_ms": k}, "http": {"p99_ms": h}} for k, h in zip(kafka, http, strict=True)],
        "goals": {
            "model_age_p99_s": {"value": age},
            "new_item_p99_s": {"value": new_item},
            "failed_replies": {"value": 0.0},
        },
        "during_round": {"kafka_p99_ms_busy": 90.0, "http_p99_ms_busy": 70.0},
        "load_average": {"before": [0.5, 0.4, 0.3]},
    }


def test_a_row_leaves_the_warm_up_window_out() -> None:
    row = point_row("round", 60.0, 1.0, _details([900.0, 80.0, 120.0], [700.0, None, 40.0], 75.0, 4.0))
    assert row["kafka_p99_ms_max_window"] == 120.0 and row["http_p99_ms_max_window"] == 40.0
    assert (row["model_age_p99_s"], row["new_item_p99_s"], row["windows_used"]) == (75.0, 4.0, 2)
    assert (row["kafka_p99_ms_during_round"], row["failed_replies"]) == (90.0, 0.0)


def test_the_plot_is_written(tmp_path: Path) -> None:
    rows = [
        point_row("round", r, 1.0, _details([1.0, 100.0 / r * 30], [1.0, 50.0 / r * 30], r * 1.5, 3.0))
        for r in (30.0, 120.0)
    ]
    rows.append(point_row("fast_path", 120.0, 5.0, _details([1.0, 20.0], [1.0, 10.0], 180.0, 9.0)))
    path = tmp_path / "tradeoff.png"
    plot(rows, path, fixed_refresh=120.0)
    assert path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_defaults() -> None:
    args = parse([])
    assert args.refresh_intervals == [30.0, 60.0, 120.0, 300.0] and args.fast_path_intervals == [1.0, 2.0, 5.0]
    assert (args.duration, args.window, args.fixed_refresh) == (480.0, 120.0, 120.0)
