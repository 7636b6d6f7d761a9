"""Accuracy benchmarks: ``igulora compare`` with a suite's config in benchmarks/configs/.

    .venv/bin/python benchmarks/accuracy.py encoder    # MiniLM, 5 GLUE tasks, 6 variants, 3 seeds
    .venv/bin/python benchmarks/accuracy.py decoder    # SmolLM2-135M on ARC-Easy, 3 methods

Results go to benchmarks/results/<suite>/ (results.json, results.md, results.csv, report.md, plots).
Resumable: finished runs are skipped. Extra flags are passed on to ``igulora compare``
(e.g. ``--seeds 1`` or ``--tasks sst2`` for a shorter run).
"""

from __future__ import annotations

import sys
from pathlib import Path

from igulora.cli import main

ROOT = Path(__file__).resolve().parents[1]
SUITES = ("encoder", "decoder", "stability")

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in SUITES:
        sys.exit(f"usage: accuracy.py {{{','.join(SUITES)}}} [compare flags]")
    suite = sys.argv[1]
    sys.exit(main(["compare", "--config", str(ROOT / "benchmarks" / "configs" / f"{suite}.yaml"),
                   "--output-dir", str(ROOT / "benchmarks" / "results" / suite), "--quiet", *sys.argv[2:]]))
