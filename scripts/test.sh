#!/usr/bin/env bash
# README command 2: set up and run every check: ruff (lint + import order + format), mypy, pytest.
# pytest runs in MINDSTREAM_TEST_WORKERS processes (pytest-xdist, default 2; 0 = in this process), each
# with its own session broker and Milvus, taking whole test files (--dist loadfile: a module's fixtures
# stay in one process). Arguments pass through to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/venv.sh"
cd "$root"
echo "[mindstream] ruff" >&2
ruff check .
ruff format --check .
echo "[mindstream] mypy" >&2
mypy
echo "[mindstream] pytest" >&2
pytest -n "${MINDSTREAM_TEST_WORKERS:-2}" --dist loadfile "$@"
