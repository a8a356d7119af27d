#!/usr/bin/env bash
# The main job on this machine: set-up, then node-agent's demo.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/node-agent" symbolize --info /usr/bin/prometheus "$@"
