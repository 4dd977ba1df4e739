#!/usr/bin/env bash
# Set up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# Four workers on a file each (the tests mostly wait on the processes they start: one runs at about a third of
# a core); the mesh tests share one worker (tests/xdist_scheduling.py).
exec .venv/bin/python -m pytest -q -n 4 --dist loadfile "$@"
