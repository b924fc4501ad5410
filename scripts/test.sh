#!/usr/bin/env bash
# The test command of the README: set up (idempotent), check the package's layers, then run the default test suite
# (fast + end-to-end). `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the import contract of docs/architecture.md: no cycles, no import from a higher layer
.venv/bin/lint-imports
exec .venv/bin/python -m pytest -q "$@"
