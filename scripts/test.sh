#!/usr/bin/env bash
# The test command: set up, then lint, format check, type check, layering check and the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff";        ruff check . && ruff format --check .
echo "== mypy";        mypy
echo "== layering";    lint-imports
echo "== pytest";      python -m pytest "$@"
