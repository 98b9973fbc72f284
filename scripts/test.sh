#!/usr/bin/env bash
# Set up and run the test suite on a fresh machine (this is the command README.md gives and CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages, skipped when already there: headless Chromium for tests/test_browser.py, and the
# WordNet database that CleanCLIP's synonym text views read (the `wordnet` extra brings nltk).
if ! command -v chromium >/dev/null || [ ! -e /usr/share/wordnet/data.noun ]; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium wordnet-base
fi
python -m pip install -q -e ".[test,wordnet]" -e ./examples/cleanbench-example-defense
export HF_HUB_OFFLINE=1
python -m pytest -q "$@"
