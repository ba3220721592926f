"""bench.pages: the committed README and docs show exactly what the result files render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import pages
from bench.plots import load_results

RESULTS = pages.ROOT / "bench" / "results"


@pytest.mark.parametrize("page", pages.pages(), ids=lambda p: p.name)
def test_committed_page_equals_what_the_results_render(page: Path) -> None:
    text = page.read_text()
    assert pages.render_page(text, load_results(RESULTS)) == text, f"{page.name}: run python -m bench.report"


def test_the_readme_and_the_benchmarks_page_hold_their_blocks() -> None:
    assert "headline" in pages.block_names((pages.ROOT / "README.md").read_text())
    assert "all" in pages.block_names((pages.ROOT / "docs" / "benchmarks.md").read_text())


def test_a_missing_result_reads_not_measured_and_text_outside_blocks_stays() -> None:
    text = "before\n<!-- bench:soak -->\nold figures\n<!-- /bench -->\nafter 12.5 ms\n"
    out = pages.render_page(text, {})
    assert out.startswith("before\n<!-- bench:soak -->\n") and out.endswith("<!-- /bench -->\nafter 12.5 ms\n")
    assert "old figures" not in out
    assert "`soak.json`: not measured" in out and "| soak | every figure | not measured |" in out


def test_a_null_figure_reads_not_measured() -> None:
    results = {"broker": {"broker": "apache-kafka 4.1.1", "start_s": None, "broker_rss_mb": 180.0}}
    out = pages.BLOCKS["broker"](results)
    assert "| broker | apache-kafka 4.1.1: start s / RSS MB | not measured / 180 |" in out


def test_a_live_stack_result_from_before_deltas_is_labelled_with_its_date() -> None:
    old = {"machine": {"date": "2026-12-02"}, "new_item_p99_s": 3.8}
    new = {"machine": {"date": "2026-12-08", "commit": "abc1234"}, "setup": {"publication": "delta"}}
    assert pages.measured_on({"freshness": old}, "freshness") == "2026-12-02, full publication (before deltas)"
    assert (
        pages.measured_on({"freshness_delta": new}, "freshness_delta")
        == "2026-12-08, commit abc1234, delta publication"
    )
    assert pages.measured_on({"quality": {"machine": {"date": "2026-11-29"}}}, "quality") == "2026-11-29"
    dated_by_details: dict[str, dict[str, Any]] = {
        "days": {"lost_clicks": 0},
        "days_details": {"machine": {"date": "2026-12-07"}},
    }
    assert pages.measured_on(dated_by_details, "days").startswith("2026-12-07")


def test_the_headline_renders_each_figure_from_its_result() -> None:
    results = {"ingest_throughput": {"machine": {"date": "2026-12-02"}, "events_per_s": 40924.0, "events": 1_000_000}}
    out = pages.BLOCKS["headline"](results)
    assert "| ingest through the embedded broker | 40,924 events/s, one worker, 1,000,000 events" in out
    assert "| soak | not measured | - |" in out


def test_an_unknown_block_is_refused() -> None:
    with pytest.raises(KeyError, match="unknown block"):
        pages.render_page("<!-- bench:nonsense -->\n<!-- /bench -->\n", {})
