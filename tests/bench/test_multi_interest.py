"""bench.multi_interest's table: the exact keys, mean +- sd over seeds, and the goals (fixture runs)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.multi_interest import LAMBDAS, METRICS, MODELS, config_key, goals, summarise


def _row(recall: float, coverage: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {f"{m}@50": 0.5 for m in METRICS}
    row.update({"recall@50": recall, "coverage@50": coverage, "users": 10, "diversity_basis": "categories"})
    row["interests"] = {"mean_pairwise_cosine": None, "hit_share": [1.0], "distinct_candidates": 50.0}
    return row


def _run(seed: int, bump: float) -> dict[str, Any]:
    evals: dict[str, Any] = {}
    for model in MODELS:
        k = int(model[1])
        evals[model] = {
            p: {config_key(model, lam): _row(0.3 - 0.01 * k - 0.02 * lam + bump, 10.0 + k + 5 * lam) for lam in LAMBDAS}
            for p in ("standard", "mixed")
        }
        evals[model]["mixed"][config_key(model, 0.0)]["recall@50"] = 0.1 * k + bump
    models = {m: {"evals": e, "best_step": 500, "train_seconds": 1.0, "wall_seconds": 2.0} for m, e in evals.items()}
    popular = {p: _row(0.1, 8.0) for p in ("standard", "mixed")}
    return {"seed": seed, "users": {"standard": 10, "mixed": 20}, "models": models, "most_popular": popular,
            "wall_seconds": 3.0}  # fmt: skip


def test_the_table_has_exactly_the_grid_and_the_metrics() -> None:
    table, details = summarise([_run(1, 0.0), _run(2, 0.02)])
    assert set(table) == {"standard", "mixed"}
    grid = {config_key(f"k{k}", lam) for k in (1, 2, 4) for lam in LAMBDAS}
    assert set(table["standard"]) == set(table["mixed"]) == grid
    for entry in table["standard"].values():
        assert set(entry) == {f"{m}@50" for m in METRICS} and all(set(v) == {"mean", "sd"} for v in entry.values())
    assert table["standard"]["k1"]["recall@50"] == {"mean": 0.3, "sd": pytest.approx(0.0141, abs=1e-4)}
    assert "k4_dyn" in details["standard"] and "most_popular" in details["mixed"]


def test_goals_say_by_how_much() -> None:
    table, _ = summarise([_run(1, 0.0), _run(2, 0.001)])
    got = goals(table)
    assert got["mixed_k4_over_k1_recall"] == pytest.approx(4.0, rel=0.01) and got["mixed_goal_met"]
    cov = got["standard_coverage_goal"]
    # K=1: recall 0.29, coverage 11. k4_l0.5 covers 16.5 (1.5x) at recall 0.25 / 0.29 = 0.86: over the 5% cost;
    # the broadest within it is k2_l0.1: 12.5 / 11 = 1.14x at 0.278 / 0.29 = 0.959
    assert cov["config"] == "k2_l0.1" and not cov["met"]
    assert cov["coverage_ratio"] == pytest.approx(12.5 / 11, abs=1e-3)
