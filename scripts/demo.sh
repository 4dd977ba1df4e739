#!/usr/bin/env bash
# The main job: set up, then run `pylon demo` (echo workload behind a pylon gateway, load, report).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/pylon demo "$@"
