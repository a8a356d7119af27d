#!/usr/bin/env bash
# The main job on this machine: set-up, then node-agent's demo (GOMAXPROCS=64 vs the fix, each in 1 CPU).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/node-agent" demo "$@"
