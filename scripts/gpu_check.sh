#!/usr/bin/env bash
# Measure RN50 at 224 px on the GPU: CleanCLIP finetuning images/s and zero-shot evaluation images/s.
# Synthetic files and random weights (nothing to download); about 2-3 minutes on one modern GPU.
# Usage: scripts/gpu_check.sh [--out gpu_check.json] [--steps 60] [--workers 8] ...  (see --help)
set -euo pipefail
exec python -m cleanbench.gpu_check --model RN50-quickgelu --device cuda "$@"
