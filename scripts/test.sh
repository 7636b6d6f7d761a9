#!/usr/bin/env bash
# The default test run (README "Run the tests"). Slow tests are marked and run with: scripts/test.sh -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
