"""The checked-in JSON Schemas must match the models: run ``python -m schemas.generate`` after a change."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.generate import JSON_DIR, MODELS, render_all, stale_files, write_all


def test_checked_in_schemas_match_the_models() -> None:
    assert stale_files() == [], "JSON Schemas drifted: run `python -m schemas.generate` and commit schemas/json"


def test_every_model_has_a_sorted_indented_file() -> None:
    for model in MODELS:
        text = (JSON_DIR / f"{model.__name__}.json").read_text()
        assert text.endswith("}\n")
        assert json.loads(text) == model.model_json_schema()


def test_drift_is_detected(tmp_path: Path) -> None:
    write_all(tmp_path)
    assert stale_files(tmp_path) == []
    (tmp_path / "ClickEvent.json").write_text("{}\n")
    (tmp_path / "Gone.json").write_text("{}\n")
    assert stale_files(tmp_path) == ["ClickEvent.json", "Gone.json"]
    write_all(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(render_all())
