#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up, lint, types, tests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
PY="$ROOT/.venv/bin"
echo "== ruff";  "$PY/ruff" check agent tests benchmarks
echo "== mypy";  "$PY/mypy"
echo "== pytest"
# Under CI=true a "capability missing" skip is a failure (tests/support/capabilities.py).
exec "$PY/python" -m pytest "$@"
