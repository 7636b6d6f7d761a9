"""The encoder results in the paper's GLUE layout, with the paper's numbers beside them.

Reads ``benchmarks/results/{encoder,encoder-long}/results.json`` (written by ``accuracy.py``) and
writes ``benchmarks/results/glue_table.{md,json}``: one table per suite, tasks in the paper's order
(CoLA, SST-2, MRPC, STS-B, RTE), mean ± sample std over seeds, the average over the suite's tasks,
and each method's gap to AdaLoRA. The paper's rows (RoBERTa-large, median of 5 seeds; method.md,
section 5) are restricted to the same tasks. It is a different model, so compare gaps, not levels.

    .venv/bin/python benchmarks/glue_table.py
"""

from __future__ import annotations

import json
from pathlib import Path

from igulora.report import summarise

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ORDER = ("cola", "sst2", "mrpc", "stsb", "rte")
HEAD = {"cola": "CoLA (MCC)", "sst2": "SST-2 (acc)", "mrpc": "MRPC (F1/acc)", "stsb": "STS-B (Pearson)",
        "rte": "RTE (acc)"}
PAPER = {  # method.md section 5: GLUE dev, RoBERTa-large, about 0.33M trainable parameters, median of 5 seeds
    "LoRA": {"cola": 68.71, "sst2": 94.84, "mrpc": 89.71, "stsb": 91.63, "rte": 85.56},
    "AdaLoRA": {"cola": 70.04, "sst2": 95.62, "mrpc": 90.34, "stsb": 91.57, "rte": 87.06},
    "IGU-LoRA": {"cola": 71.93, "sst2": 96.17, "mrpc": 90.69, "stsb": 91.95, "rte": 88.46},
}
SUITES = {
    "encoder": ("150 steps on a 2,000-example subsample; IGU-LoRA rows score every step unless the "
                "row says otherwise", {"igulora": "IGU-LoRA (every step)",
                                       "igulora:score_every=8": "IGU-LoRA, every 8th step (library default)"}),
    "encoder-long": ("600 steps on the full train sets; IGU-LoRA rows score every 8th step (library "
                     "default)", {"igulora": "IGU-LoRA (default)"}),
}
NAMES = {"lora": "LoRA", "adalora": "AdaLoRA", "igulora:estimator=gradient": "IGU-LoRA without IG (gradient)",
         "igulora:score=product": "IGU-LoRA, product score", "igulora:ig_steps=4": "IGU-LoRA, N = 4",
         "igulora:budget_unit=ranks": "IGU-LoRA, rank budget", "igulora:estimator=coupled": "IGU-LoRA, coupled"}


def suite_table(suite: str) -> dict | None:
    """``{"suite", "note", "tasks", "incomplete", "usual_n",
    "rows": [{"name", "variant", "cells": {task: [mean, std, n]}, "avg", "gap"}]}`` for the variants
    that ran on every task of the suite; ``None`` if the suite has no results."""
    path = RESULTS / suite / "results.json"
    if not path.is_file():
        return None
    note, names = SUITES[suite]
    s = summarise(json.loads(path.read_text())["runs"])
    tasks = sorted(s["tasks"], key=ORDER.index)
    rows = [{"name": names.get(v, NAMES.get(v, v)), "variant": v, "avg": s["avg"][v],
             "cells": {t: [s["cells"][v][t][k] for k in ("mean", "std", "n")] for t in tasks}}
            for v in s["variants"] if v in s["avg"]]  # summarise averages only the variants with every task
    ada = s["avg"].get("adalora")
    for r in rows:
        r["gap"] = None if ada is None else r["avg"] - ada
    skipped = [v for v in s["variants"] if v not in s["avg"]]
    return {"suite": suite, "note": note, "tasks": tasks, "rows": rows, "incomplete": skipped,
            "usual_n": s["usual_n"]}


def _cell(c: list, usual_n: int) -> str:
    mean, std, n = c
    return f"{mean:.2f}" + ("" if std != std else f" ± {std:.2f}") + ("" if n == usual_n else f" (n={n})")


def markdown(table: dict) -> str:
    tasks = table["tasks"]
    lines = [f"### `{table['suite']}`: {table['note']}", "",
             "| Method | " + " | ".join(HEAD[t] for t in tasks) + " | Avg | Avg − AdaLoRA |",
             "|---|" + "---:|" * (len(tasks) + 2)]
    for r in table["rows"]:
        gap = "" if r["gap"] is None else f"{r['gap']:+.2f}"
        lines.append(f"| {r['name']} | " + " | ".join(_cell(r["cells"][t], table["usual_n"]) for t in tasks)
                     + f" | {r['avg']:.2f} | {gap} |")
    paper_avg = {m: sum(v[t] for t in tasks) / len(tasks) for m, v in PAPER.items()}
    for m, v in PAPER.items():
        lines.append(f"| *paper: {m}* | " + " | ".join(f"*{v[t]:.2f}*" for t in tasks)
                     + f" | *{paper_avg[m]:.2f}* | *{paper_avg[m] - paper_avg['AdaLoRA']:+.2f}* |")
    lines.append("")
    lines.append(f"Mean ± sample std over {table['usual_n']} seeds (n given where different). Paper rows: "
                 "RoBERTa-large, median of 5 seeds, averaged over the same tasks.")
    if table["incomplete"]:
        lines.append(f"Not on every task, so not shown: {', '.join(table['incomplete'])} (see the suite's results.md).")
    return "\n".join(lines) + "\n"


def main() -> None:
    tables = [t for suite in SUITES if (t := suite_table(suite)) is not None]
    (RESULTS / "glue_table.json").write_text(json.dumps(tables, indent=2) + "\n")
    text = "# Encoder results in the paper's GLUE layout\n\nWritten by `benchmarks/glue_table.py`.\n\n"
    (RESULTS / "glue_table.md").write_text(text + "\n".join(markdown(t) for t in tables))
    print((RESULTS / "glue_table.md").read_text())


if __name__ == "__main__":
    main()
