#!/usr/bin/env bash
# The main job: set up, then play the default Fashion-MNIST tournament (local Ray, local MLflow).
# Extra arguments go to `arena tournament` (e.g. --address, --tracking-uri, another CONFIG first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
config=configs/fashion_mnist.yaml
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then config=$1; shift; fi
exec .venv/bin/arena tournament "$config" "$@"
