"""Accuracy benchmarks: ``igulora compare`` with a suite's config in benchmarks/configs/.

    .venv/bin/python benchmarks/accuracy.py encoder        # MiniLM, 5 GLUE tasks, 9 variants, 3 seeds
    .venv/bin/python benchmarks/accuracy.py encoder-long   # CoLA and STS-B 4x longer, 4 variants
    .venv/bin/python benchmarks/accuracy.py decoder        # SmolLM2-135M on ARC-Easy, 3 methods
    .venv/bin/python benchmarks/accuracy.py stability      # SST-2, batch size x accumulation
    .venv/bin/python benchmarks/accuracy.py lora-lr        # LoRA on STS-B at lower learning rates

Results go to benchmarks/results/<suite>/ (results.json, results.md, results.csv, report.md, plots).
The script runs from the repository root and records run folders relative to it, so the committed
results name no machine-specific path. Resumable: finished runs are skipped. Extra flags are passed
on to ``igulora compare`` (e.g. ``--seeds 1`` or ``--tasks sst2`` for a shorter run).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from igulora.cli import main

ROOT = Path(__file__).resolve().parents[1]
SUITES = tuple(sorted(p.stem for p in (ROOT / "benchmarks" / "configs").glob("*.yaml")))

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in SUITES:
        sys.exit(f"usage: accuracy.py {{{','.join(SUITES)}}} [compare flags]")
    suite = sys.argv[1]
    os.chdir(ROOT)
    sys.exit(main(["compare", "--config", f"benchmarks/configs/{suite}.yaml",
                   "--output-dir", f"benchmarks/results/{suite}", "--quiet", *sys.argv[2:]]))
