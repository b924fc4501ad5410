#!/usr/bin/env bash
# Create .venv (Python 3.11) and install covidscreen with every extra, plus the Debian packages that the tests'
# real servers need (scripts/apt.d/*.txt: PostgreSQL, Orthanc, Chromium, ...). Idempotent: a second run is quick.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch/torchvision are pinned to the releases this project is tested with (on the dev machines they lie on local
# disk; elsewhere pip downloads them). Install them first so no other package pulls a different build.
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[all]"
bash scripts/system-packages.sh
