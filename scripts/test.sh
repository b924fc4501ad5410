#!/usr/bin/env bash
# The test command of the README: set up (idempotent), check the package's layers, then run the default test suite
# (fast + end-to-end). `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the import contract of docs/architecture.md: no cycles, no import from a higher layer
.venv/bin/lint-imports
# every test, the slow end-to-end ones included, on every core (at most 4 workers): tests of one file (or one
# xdist_group) stay on one worker, the slow files start first (tests/conftest.py, docs/testing.md)
exec .venv/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadgroup "$@"
