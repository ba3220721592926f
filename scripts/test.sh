#!/usr/bin/env bash
# README command 2: set up and run every check: ruff (lint + import order + format), mypy, pytest.
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
pytest "$@"
