#!/usr/bin/env bash
# Set up and run the test suite on a fresh machine (this is the command README.md gives and CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
# System packages, each installed only when missing and never upgraded: headless Chromium for
# tests/test_browser.py, and the WordNet database for the tests of the `wordnet` synonym source.
apt_install_missing() {  # apt_install_missing PACKAGE: install PACKAGE alone, or skip it if that would upgrade anything
  local upgrades
  upgrades=$(apt-get install -s --no-install-recommends --no-upgrade "$1" | grep -E '^Inst [^ ]+ \[' || true)
  if [ -n "$upgrades" ]; then
    echo "scripts/test.sh: not installing $1: it would upgrade installed packages (${upgrades//$'\n'/; });" \
         "install it yourself to run the tests that need it (they are skipped)" >&2
    return 0
  fi
  apt-get install -y -qq --no-install-recommends --no-upgrade "$1"
}
updated=""
if ! command -v chromium >/dev/null; then
  apt-get update -qq && updated=1
  apt_install_missing chromium
fi
if [ ! -e /usr/share/wordnet/data.noun ]; then
  [ -n "$updated" ] || apt-get update -qq
  apt_install_missing wordnet-base
fi
# Python packages in the current environment; pip leaves installed packages that satisfy the
# requirements as they are.
python -m pip install -q -e ".[test,wordnet]" -e ./examples/cleanbench-example-defense
export HF_HUB_OFFLINE=1
python -m pytest -q "$@"
