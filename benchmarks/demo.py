"""Time the README demo (``igulora demo``) end to end and record its accuracy.

    .venv/bin/python benchmarks/demo.py     # writes benchmarks/results/demo.json
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from igulora import IguLoraConfig

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "igulora.cli", "demo", "--output-dir", f"{tmp}/demo", "--quiet"],
                       check=True)
        wall = time.perf_counter() - t0
        metrics = json.loads(Path(f"{tmp}/demo/metrics.json").read_text())
        igu = IguLoraConfig.from_dict(json.loads(Path(f"{tmp}/demo/config.json").read_text())["igulora"])
    record = {"wall_s": wall, "accuracy": metrics["metrics"]["accuracy"], "train_time_s": metrics["train_time_s"],
              "steps": metrics["steps"], "trainable_params_start": metrics["trainable_params_start"],
              "trainable_params_end": metrics["trainable_params_end"], "cpus": os.cpu_count(),
              "python": platform.python_version(), "estimator": igu.estimator, "score_every": igu.score_interval}
    (ROOT / "benchmarks" / "results" / "demo.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
