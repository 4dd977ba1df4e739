#!/usr/bin/env bash
# The main job: set up, then run `pylon demo` (the seed's benchmark on a mesh on this machine; where namespaces
# cannot be made, the loopback demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/pylon demo "$@"
