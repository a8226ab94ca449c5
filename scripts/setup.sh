#!/usr/bin/env bash
# One-time (and idempotent) set-up: Fashion-MNIST from Debian, a virtualenv in .venv with the
# project and its dev tools. Re-running is cheap: pip runs again only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

# Fashion-MNIST: the Debian package puts it in /usr/share/datasets/fashion-mnist (offline path).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${ARENA_SKIP_APT:-}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "== installing dataset-fashion-mnist (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "note: Fashion-MNIST not installed; run 'sudo apt-get install dataset-fashion-mnist'" \
         "or let torchvision download it (needs network), or set ARENA_DATA_DIR" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.arena-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "== installing the project and its dependencies into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch/torchvision first, pinned to the releases this machine serves from local disk.
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" \
    || .venv/bin/python -m pip install -q "torch>=2.9,<2.15" "torchvision>=0.24,<0.30"
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
