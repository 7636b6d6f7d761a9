"""Allocation stability: agreement of final per-module ranks across seeds (encoder suite) and across
batch size / gradient accumulation at the same effective batch (stability suite), for AdaLoRA and
IGU-LoRA. Reads benchmarks/results/{encoder,encoder-long,stability}/; writes
benchmarks/results/stability.{json,md}.

    .venv/bin/python benchmarks/stability.py
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from igulora.plots import rank_stability

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def patterns(suite: str) -> dict[tuple[str, str], list[dict[str, float]]]:
    """``{(task, variant): [rank pattern per finished run]}``."""
    path = RESULTS / suite / "results.json"
    if not path.is_file():
        return {}
    out: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for run in json.loads(path.read_text())["runs"]:
        if run["status"] == "ok" and run["method"] in ("adalora", "igulora"):
            out[(run["task"], run["variant"])].append(
                json.loads((RESULTS / suite / run["run_dir"] / "rank_pattern.json").read_text()))
    return out


def main() -> None:
    rows = []
    for suite in ("encoder", "encoder-long"):
        for (task, variant), pats in sorted(patterns(suite).items()):
            if len(pats) > 1:
                rows.append({"comparison": f"across seeds ({suite})", "task": task, "variant": variant,
                             **rank_stability(pats)})
    by_method: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for (task, variant), pats in patterns("stability").items():
        by_method[(task, variant.split(":")[0])] += pats[:1]
    for (task, method), pats in sorted(by_method.items()):
        if len(pats) > 1:
            rows.append({"comparison": "across batch size x accumulation (same effective batch)", "task": task,
                         "variant": method, **rank_stability(pats)})
    (RESULTS / "stability.json").write_text(json.dumps(rows, indent=2))
    lines = ["| comparison | task | variant | pairs | Spearman rho (mean ± std) | mean abs rank difference |",
             "|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['comparison']} | {r['task']} | {r['variant']} | {int(r['pairs'])} | "
                     f"{r['spearman_mean']:.3f} ± {r['spearman_std']:.3f} | {r['mad_mean']:.2f} ± {r['mad_std']:.2f} |")
    (RESULTS / "stability.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
