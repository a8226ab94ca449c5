#!/usr/bin/env bash
# The test command: set up, then lint, format check, type check, layering check and the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
# The example plug-in package, installed the way a user installs theirs (its entry point is what
# tests/orchestration/test_example_package.py plays a tournament through).
example=examples/arena-example-plugins
stamp=.venv/.arena-example-installed
want=$(cat "$example/pyproject.toml" .venv/.arena-installed | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "== installing the example plug-in package ($example)"
  python -m pip install -q --no-deps -e "$example"
  echo "$want" > "$stamp"
fi
echo "== ruff";        ruff check . && ruff format --check .
echo "== mypy";        mypy
echo "== layering";    lint-imports
echo "== pytest"
# tests write only under temporary folders: whatever the suite adds to the checkout (untracked or
# ignored, tool caches aside) fails the run, named
in_git() { git rev-parse --is-inside-work-tree >/dev/null 2>&1; }
left_in_checkout() { in_git && git status --ignored --porcelain | grep -v -E '(__pycache__|\.pytest_cache)/$' | sort || true; }
before=$(left_in_checkout)
python -m pytest "$@"
added=$(comm -13 <(echo "$before") <(left_in_checkout))
if [ -n "$added" ]; then
  echo "the test suite left files in the checkout (tests must write under a temporary folder):"
  echo "$added"
  exit 1
fi
