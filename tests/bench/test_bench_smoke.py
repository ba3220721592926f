"""The benchmark report and plots from a small fixture result set: no broker, no Milvus, no timing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import plots, report

MACHINE = {"cores": 2, "python": "3.11.7", "platform": "Linux", "date": "2026-11-22"}


def _metric(mean: float) -> dict[str, Any]:
    return {"mean": mean, "per_seed": [mean]}


def _latency(name: str, p50: float) -> dict[str, Any]:
    return {
        "benchmark": name,
        "machine": MACHINE,
        "setup": {"items": 100000},
        "runs": [
            {"offered_rps": rate, "achieved_rps": rate, "errors": 0, "latency_ms": {"p50": p50 * k, "p99": p50 * k * 4}}
            for k, rate in ((1, 50.0), (2, 200.0))
        ],
    }


FIXTURES: dict[str, dict[str, Any]] = {
    "quality": {
        "benchmark": "quality",
        "machine": MACHINE,
        "ml-100k": {
            "items": 1349,
            "mind_k4": {m: _metric(v) for m, v in (("recall@50", 0.26), ("ndcg@50", 0.35), ("hitrate@50", 0.9))},
            "mind_k1": {m: _metric(v) for m, v in (("recall@50", 0.13), ("ndcg@50", 0.2), ("hitrate@50", 0.8))},
            "most_popular": {m: _metric(v) for m, v in (("recall@50", 0.1), ("ndcg@50", 0.1), ("hitrate@50", 0.5))},
        },
    },
    "train_speed": {
        "benchmark": "train_speed",
        "machine": MACHINE,
        "ml-100k": {"table_rows": 1350, "negatives": "exact softmax", "samples_per_s": 8000.0},
        "amazonbook-368k": {"table_rows": 367983, "negatives": 1280, "samples_per_s": 6000.0},
    },
    "recall_latency": _latency("recall_latency", 10.0),
    "http_latency": _latency("http_latency", 15.0),
    "freshness": {
        "benchmark": "freshness",
        "machine": MACHINE,
        "setup": {"click_rate": 5000.0, "refresh_interval_s": 10.0},
        "click_to_live_s": {"n": 3, "p50": 12.0, "p90": 20.0, "p99": 24.0, "max": 25.0},
        "click_to_recalled_s": {"n": 1, "p50": 14.0, "p90": 14.0, "p99": 14.0, "max": 14.0, "coverage": 0.33},
        "cdf_click_to_live": [[10.0, 0.33], [20.0, 0.67], [25.0, 1.0]],
        "cdf_click_to_recalled": [[14.0, 1.0]],
        "goal": {"p99_s": 30.0, "measured_p99_s": 24.0, "met": True},
        "never_live": 0,
        "swaps_observed": 2,
        "refresh_failed_rounds": 0,
    },
    "freshness_flat": {
        "benchmark": "freshness_flat",
        "machine": MACHINE,
        "setup": {"items": 100000, "index": {"type": "FLAT"}, "click_rate": 5000.0, "refresh_interval_s": 10.0},
        "click_to_live_s": {"n": 3, "p50": 6.0, "p90": 9.0, "p99": 15.0, "max": 16.0},
        "goal": {"p99_s": 30.0, "measured_p99_s": 15.0, "met": True},
        "refresh_phases_s": {
            "index": {"p50": 4.0},
            "train": {"p50": 3.0},
            "read": {"p50": 0.1},
            "swap": {"p50": 0.01},
            "publish_total": {"p50": 9.0},
        },
    },
    "index_choice": {
        "benchmark": "index_choice",
        "machine": MACHINE,
        "setup": {"items": 100000, "top_k": 50},
        "runs": [
            {
                "index": "IVF_FLAT",
                "build_and_load_s": 5.0,
                "recall@50_vs_exact": 0.97,
                "search_4_queries_ms": {"p50": 3.0},
            }
        ],
    },
    "ingest_store": {
        "benchmark": "ingest_store",
        "machine": MACHINE,
        "source": "store",
        "events": 2000,
        "stored": 2000,
        "events_per_s": 900,
        "curve": [{"applied": 1000, "events_per_s": 1000}, {"applied": 2000, "events_per_s": 800}],
    },
    "swap_impact": {
        "benchmark": "swap_impact",
        "machine": MACHINE,
        "swaps_asked": 1,
        "swaps_done": 1,
        "requests": 300,
        "errors": 0,
        "empty_replies": 0,
        "inconsistent_replies": 0,
        "version_regressions": 0,
        "swaps": [
            {
                "asked_t_s": 3.0,
                "swapped_t_s": 8.0,
                "kafka": {
                    w: {"p50_ms": 10.0, "p99_ms": p99}
                    for w, p99 in (("before", 40.0), ("during", 80.0), ("after", 40.0))
                },
            }
        ],
        "timeline_kafka": [
            {"t_s": t, "n": 30, "p50_ms": 10.0, "p99_ms": 40.0, "errors": 0, "version": 1 + (t >= 8)} for t in range(12)
        ],
        "timeline_http": [],
    },
    "memory": {
        "benchmark": "memory",
        "machine": MACHINE,
        "peak_rss_mb": {"recall": 400.0, "milvus": 500.0},
        "peak_rss_total_mb": 900.0,
    },
    "summary": {
        "benchmark": "summary",
        "steps": [{"name": "quality", "status": "ok"}, {"name": "memory", "status": "timeout after 5 s"}],
    },
}


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    for name, payload in FIXTURES.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(payload))
    (tmp_path / "broken.json").write_text("{not json")
    return tmp_path


def test_report_renders_a_table_with_ratios_goals_and_failures(results_dir: Path) -> None:
    block = report.render(plots.load_results(results_dir), results_dir)
    lines = block.splitlines()
    assert "| benchmark | metric | measured | reference / goal | ratio |" in lines
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| benchmark")]
    assert all(line.count("|") == 6 for line in rows), rows
    assert "2 cores" in block
    assert any("MIND K=1 recall@50" in r and "0.50x" in r for r in rows)  # K=1 vs K=4
    assert any("click -> live p99" in r and "goal <= 30 s" in r and "0.80x" in r for r in rows)
    assert any(r.startswith("| recall_latency |") and "HTTP" in r for r in rows)
    assert any(r.startswith("| http_latency |") and "1.50x" in r for r in rows)  # HTTP vs Kafka p50
    assert any("368k" in r and "0.75x" in r for r in rows)
    assert any("memory FAILED" in r and "timeout" in r for r in rows)  # failures are not hidden
    assert any(r.startswith("| freshness_flat |") and "100,000 items, FLAT" in r for r in rows)  # tagged run
    assert any(r.startswith("| freshness_flat |") and "p99" in r and "0.50x" in r for r in rows)
    assert any(r.startswith("| freshness_flat |") and "index 4.00, train 3.00, read 0.10" in r for r in rows)
    assert any(r.startswith("| ingest_store |") and "1,000 -> 800" in r and "0.80x" in r for r in rows)
    assert any(r.startswith("| index_choice |") and "IVF_FLAT" in r and "5.00; 0.970; 3.00" in r for r in rows)


def test_report_replaces_only_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\nbefore\n{report.START}\nold table\n{report.END}\nafter\n")
    assert report.write_readme(readme, "| new |\n")
    assert readme.read_text() == f"# title\nbefore\n{report.START}\n| new |\n{report.END}\nafter\n"
    assert report.write_readme(readme, "| newer |\n")
    assert readme.read_text().count("| newer |") == 1 and "| new |" not in readme.read_text()


def test_report_without_markers_leaves_the_pages_and_prints_on_request(
    tmp_path: Path, results_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    (tmp_path / "docs").mkdir()
    assert report.main(["--results", str(results_dir), "--root", str(tmp_path)]) == 0
    assert report.main(["--results", str(results_dir), "--root", str(tmp_path), "--check"]) == 0
    assert readme.read_text() == "# no markers\n"
    assert report.main(["--results", str(results_dir), "--print-only"]) == 0
    assert "| benchmark | metric |" in capsys.readouterr().out


def test_report_check_fails_on_a_stale_page_and_writing_fixes_it(tmp_path: Path, results_dir: Path) -> None:
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text("intro\n<!-- bench:train_speed -->\nold\n<!-- /bench -->\n")
    assert report.main(["--results", str(results_dir), "--root", str(tmp_path), "--check"]) == 1
    assert report.main(["--results", str(results_dir), "--root", str(tmp_path)]) == 0
    assert "old" not in page.read_text() and "| train_speed |" in page.read_text()
    assert report.main(["--results", str(results_dir), "--root", str(tmp_path), "--check"]) == 0


def test_plots_write_pngs_titled_with_the_core_count(results_dir: Path) -> None:
    written = plots.render(plots.load_results(results_dir), results_dir)
    names = {p.name for p in written}
    assert names == {"latency_vs_load.png", "freshness_cdf.png", "swap_impact.png", "quality.png", "train_speed.png",
                     "ingest_curve.png"}  # fmt: skip
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_titles_name_the_cores() -> None:
    import matplotlib  # a dev dependency: always installed with the test environment

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plots.plot_freshness(FIXTURES, plt)
    assert fig is not None and "2 cores" in fig.axes[0].get_title()
    plt.close(fig)


def test_vocabulary_rows_compare_sparse_with_dense() -> None:
    result = {
        "events": 200_000,
        "dense": {"distinct_items": 10, "table_rows": 11, "refresh_peak_rss_mb": 500.0, "round_s": 10.0},
        "sparse": {"distinct_items": 10, "table_rows": 11, "refresh_peak_rss_mb": 550.0, "round_s": 12.5},
    }
    rows = report.rows_vocabulary(result)
    assert rows[0][2] == "11 / 11"
    assert rows[1][4] == "1.100x" and rows[2][4] == "1.250x"
