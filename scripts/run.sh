#!/usr/bin/env bash
# README command 1: set up and run the main job on embedded defaults.
# Today: get ML-100K, train MIND (or reuse the checkpoint), start the embedded Milvus,
# evaluate with exact search and with Milvus, print the metrics as JSON.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/venv.sh"
cd "$root"
exec mindstream demo "$@"
