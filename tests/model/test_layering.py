"""``model/`` stands alone: a notebook can import it without the workers, the benchmarks or the wire schemas."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MODEL = Path(__file__).resolve().parents[2] / "model"
FORBIDDEN = ("workers", "bench", "schemas")


def imported_roots(source: str) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_imported_roots_sees_every_import_form() -> None:
    src = "import workers.cli\nfrom bench import common\nif True:\n    from schemas.messages import Click\n"
    assert imported_roots(src) == {"workers", "bench", "schemas"}


@pytest.mark.parametrize("path", sorted(MODEL.rglob("*.py")), ids=lambda p: str(p.relative_to(MODEL)))
def test_model_module_imports_no_outer_package(path: Path) -> None:
    assert not imported_roots(path.read_text()) & set(FORBIDDEN)
