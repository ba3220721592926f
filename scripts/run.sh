#!/usr/bin/env bash
# README command 1: set up and run the main job on embedded defaults.
# Starts the embedded broker and Milvus, trains the first model (or reuses it), runs the workers,
# replays held-out clicks as a live stream and shows progress. Ctrl-C stops everything.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/venv.sh"
cd "$root"
exec mindstream up "$@"
