#!/usr/bin/env bash
# Set up and run the test suite on a fresh machine (this is the command README.md gives and CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
# Headless Chromium for tests/test_browser.py (Debian's package; skipped when already there).
command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
python -m pip install -q -e ".[test]" -e ./examples/cleanbench-example-defense
export HF_HUB_OFFLINE=1
python -m pytest -q "$@"
