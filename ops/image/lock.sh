#!/usr/bin/env bash
# Writes requirements.lock: every runtime dependency of pyproject.toml (no extras), pinned with hashes, for the
# worker image (Dockerfile: pip install --require-hashes -r requirements.lock). Run it after changing
# pyproject.toml's dependencies, from the repository root: ops/image/lock.sh
#
# The versions are the ones the tests ran with: the project's .venv (scripts/venv.sh) is frozen and used as
# constraints, so the image installs what CI tested; what .venv does not have is resolved from PyPI.
# Resolution is for the image's platform (CPython 3.11, x86-64 Linux), whatever machine runs this.
# tests/ops/test_lock.py checks the result against pyproject.toml and the Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/python ] || { echo "no .venv: run scripts/venv.sh first" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/uv"
"$work/uv/bin/pip" install -q uv
.venv/bin/python -m pip freeze --exclude-editable | grep -v '^mindstream' > "$work/constraints.txt"
"$work/uv/bin/uv" pip compile pyproject.toml \
  --constraint "$work/constraints.txt" \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --generate-hashes --no-annotate --no-emit-index-url \
  --custom-compile-command "ops/image/lock.sh" \
  --output-file requirements.lock
