#!/usr/bin/env bash
# Install the Debian packages listed in scripts/apt.d/*.txt (one per line, '#' comments) when any is missing.
# Needs root (as on the dev machines and CI); elsewhere it says what to install and goes on, and the tests that
# need a missing binary say so when they skip.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
wanted=$(cat scripts/apt.d/*.txt 2>/dev/null | sed 's/#.*//' | tr -s ' \t' '\n' | sed '/^$/d' | sort -u)
[ -n "$wanted" ] || exit 0
missing=$(for p in $wanted; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"; done)
[ -n "$missing" ] || exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system packages missing (install them as root: apt-get install $(echo $missing)); tests that need them skip" >&2
  exit 0
fi
echo "installing system packages: $(echo $missing)"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=900 update -qq
apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends $missing >/dev/null
