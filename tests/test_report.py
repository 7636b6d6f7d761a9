"""Tests of igulora.report / igulora.plots on synthetic results directories (no torch needed)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from igulora.plots import rank_stability, spearman
from igulora.report import (
    module_layout,
    rank_table_markdown,
    write_compare_report,
    write_compare_tables,
    write_report,
    write_run_report,
)

BERT_TYPES = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
              "intermediate.dense", "output.dense"]
LLAMA_TYPES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj"]
TASKS = {"sst2": ("bert", BERT_TYPES, 4), "boolq": ("llama", LLAMA_TYPES, 3)}
VARIANTS = ["lora", "adalora", "igulora"]
ACC = {  # task -> variant -> [seed 1, seed 2]
    "sst2": {"lora": [0.90, 0.92], "adalora": [0.91, 0.93], "igulora": [0.93, 0.95]},
    "boolq": {"lora": [0.70, 0.72], "adalora": [0.71, 0.75], "igulora": [0.78, None]},  # seed 2 fails
}
PARAMS = {"lora": 300_000, "adalora": 330_000, "igulora": 320_000}
INIT_R = 12


def _names(task: str) -> list[str]:
    model, types, n_layers = TASKS[task]
    stem = "base_model.model.bert.encoder.layer" if model == "bert" else "base_model.model.model.layers"
    return [f"{stem}.{i}.{t}" for i in range(n_layers) for t in types]


def _ranks(task: str, variant: str, seed: int) -> dict[str, int]:
    names = _names(task)
    if variant == "lora":
        return dict.fromkeys(names, 8)
    base = np.random.default_rng(VARIANTS.index(variant)).integers(0, INIT_R + 1, len(names))
    noise = np.random.default_rng(seed).integers(-1, 2, len(names))
    return {n: int(v) for n, v in zip(names, np.clip(base + noise, 0, INIT_R))}


def _write_run(run_dir: Path, task: str, variant: str, seed: int, acc: float) -> None:
    run_dir.mkdir(parents=True)
    ranks = _ranks(task, variant, seed)
    metrics = {"task": task, "method": variant, "variant": variant, "seed": seed, "model": TASKS[task][0],
               "metrics": {"accuracy": acc, "primary": acc}, "primary_metric": "accuracy",
               "higher_is_better": True, "train_time_s": 10.0 + seed, "peak_memory_mb": 800.0,
               "trainable_params_start": PARAMS[variant] + 50_000, "trainable_params_end": PARAMS[variant],
               "adapter_params_end": PARAMS[variant] // 2, "steps": 200, "status": "ok"}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "rank_pattern.json").write_text(json.dumps(ranks))
    (run_dir / "config.json").write_text(json.dumps({"igulora": {"init_r": INIT_R}}))
    if variant == "lora":
        return
    steps = list(range(1, 201))
    drop = 40_000 if variant == "igulora" else 30_000
    budget = [int(100_000 - drop * min(1.0, max(0.0, (s - 20) / 140))) for s in steps]
    (run_dir / "budget_schedule.json").write_text(json.dumps({"steps": steps, "budget": budget, "unit": "params"}))
    with open(run_dir / "allocation_history.jsonl", "w") as fh:
        for s in range(20, 201, 20):
            b = budget[s - 1]
            fh.write(json.dumps({"step": s, "budget": b, "active_budget": b - 37, "ranks": ranks}) + "\n")


@pytest.fixture
def compare_dir(tmp_path: Path) -> Path:
    root = tmp_path / "cmp"
    runs = []
    for task in TASKS:
        for variant in VARIANTS:
            for seed, acc in zip((1, 2), ACC[task][variant]):
                rel = f"{task}/{variant}/seed{seed}"
                run = {"task": task, "method": variant, "variant": variant, "seed": seed, "run_dir": rel,
                       "primary_metric": "accuracy", "higher_is_better": True}
                if acc is None:
                    run.update(status="failed", error="RuntimeError: CUDA out of memory\nTraceback ...",
                               metrics={}, primary=None)
                else:
                    _write_run(root / rel, task, variant, seed, acc)
                    run.update(status="ok", error=None, metrics={"accuracy": acc}, primary=acc,
                               trainable_params_end=PARAMS[variant], train_time_s=10.0 + seed)
                runs.append(run)
    (root / "results.json").write_text(json.dumps({"runs": runs}))
    return root


def _table(md: str) -> list[list[str]]:
    """Cells of the first markdown table in ``md`` (separator row dropped)."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[start:end]]
    return [cells[0], *cells[2:]]


def _check_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    try:
        from PIL import Image

        with Image.open(path) as img:
            width = img.size[0]
    except ImportError:
        import matplotlib.image

        width = matplotlib.image.imread(path).shape[1]
    assert width >= 400, (path, width)


def test_module_layout_bert_and_llama() -> None:
    names = ["base_model.model.model.layers.12.self_attn.q_proj", "model.layers.2.mlp.down_proj",
             "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.output.dense",
             "bert.encoder.layer.3.intermediate.dense", "bert.encoder.layer.3.output.dense", "classifier",
             "model.layers.2.self_attn.q_proj"]
    layers, types = module_layout(names)
    assert layers == [-1, 0, 2, 3, 12]
    assert types == ["self_attn.q_proj", "mlp.down_proj", "attention.self.query", "attention.output.dense",
                     "intermediate.dense", "output.dense", "classifier"]
    assert module_layout([]) == ([], [])


def test_rank_table_markdown() -> None:
    ranks = {f"bert.encoder.layer.{i}.{t}": i + j for i in range(3) for j, t in enumerate(BERT_TYPES[:2])}
    md = rank_table_markdown(ranks, init_r=4)
    table = _table(md)
    assert table[0] == ["layer", "attention.self.query", "attention.self.key", "total"]
    assert len(table) == 1 + 3 + 1  # header, 3 layers, totals
    assert table[2] == ["1", "1", "2", "3"]
    assert table[-1] == ["**total**", "3", "6", "**9**"]
    assert "Active rank 9 of 24 (37.5 %)" in md
    assert "Active rank" not in rank_table_markdown(ranks)


def test_compare_tables(compare_dir: Path) -> None:
    out = write_compare_tables(compare_dir)
    md = (compare_dir / "results.md").read_text()
    table = _table(md)
    assert table[0] == ["Method", "sst2", "boolq", "Avg", "Params", "Time (s)"]
    assert [row[0] for row in table[1:]] == VARIANTS
    rows = {row[0]: row for row in table[1:]}
    assert rows["lora"][1] == "91.00 ± 1.41"
    assert rows["igulora"][1] == "**94.00 ± 1.41**"
    assert rows["igulora"][2] == "**78.00** (n=1)"  # the failed run: fewer seeds, shown in the cell
    assert rows["adalora"][2] == "73.00 ± 2.83"
    assert "over the seeds of ok runs (2 unless a cell says (n=k))" in md
    assert rows["igulora"][3] == "**86.00**" and rows["lora"][3] == "81.00"
    assert rows["adalora"][4] == "0.33M" and rows["lora"][4] == "0.30M"
    assert rows["igulora"][5] == "11.3" and rows["lora"][5] == "11.5"
    assert sum("**" in cell for row in table[1:] for cell in row[1:]) == 3
    params = _table(md[md.index("Trainable parameters at the end"):])
    assert params[0] == ["Method", "sst2", "boolq"] and [row[0] for row in params[1:]] == VARIANTS
    assert "×100" in md and "Failed runs (1)" in md and "CUDA out of memory" in md
    assert out["cells"]["igulora"]["boolq"]["n"] == 1 and out["md"] == compare_dir / "results.md"
    with open(compare_dir / "results.csv") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == 12
    failed = [r for r in csv_rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["task"] == "boolq" and "CUDA" in failed[0]["error"]
    ok = next(r for r in csv_rows if r["variant"] == "adalora" and r["task"] == "sst2" and r["seed"] == "2")
    assert float(ok["primary"]) == pytest.approx(0.93) and ok["metric.accuracy"] == "0.93"
    assert ok["trainable_params_end"] == "330000"


def test_lower_is_better_not_scaled(tmp_path: Path) -> None:
    runs = [{"task": "wikitext", "method": m, "variant": f"{m}:x=1", "seed": s, "status": "ok", "error": None,
             "run_dir": "none", "metrics": {"perplexity": p}, "primary": p, "primary_metric": "perplexity",
             "higher_is_better": False, "trainable_params_end": 1_200_000, "train_time_s": 3.0}
            for m, ps in (("lora", (12.0, 13.0)), ("igulora", (11.0, 11.5))) for s, p in zip((1, 2), ps)]
    (tmp_path / "results.json").write_text(json.dumps({"runs": runs}))
    rows = {r[0]: r for r in _table(write_compare_tables(tmp_path)["markdown"])[1:]}
    assert rows["igulora:x=1"][1] == "**11.25 ± 0.35**" and rows["lora:x=1"][1] == "12.50 ± 0.71"
    assert rows["igulora:x=1"][2] == "**11.25**" and rows["lora:x=1"][3] == "1.20M"


def test_compare_report(compare_dir: Path) -> None:
    paths = write_compare_report(compare_dir)
    names = {p.name for p in paths}
    pngs = ["rank_heatmaps.png", "budget_curves.png", "metric_vs_params.png", "rank_stability.png"]
    assert set(pngs) | {"results.csv", "results.md", "report.md"} == names
    report = (compare_dir / "report.md").read_text()
    for png in pngs:
        _check_png(compare_dir / png)
        assert f"({png})" in report
    assert "Spearman" in report and "n/a (constant rank)" in report
    stab = [r for r in _table(report.split("## Allocation stability")[1]) if r[0] == "igulora"]
    assert len(stab) == 1 and stab[0][1] == "sst2"  # boolq has a single ok igulora seed
    assert float(stab[0][3].split(" ± ")[0]) > 0.8
    assert not list(compare_dir.glob(".*.tmp"))


def test_run_report(compare_dir: Path) -> None:
    run_dir = compare_dir / "boolq/adalora/seed1"
    paths = write_run_report(run_dir)
    assert [p.name for p in paths] == ["rank_heatmap.png", "budget_curve.png", "report.md"]
    report = (run_dir / "report.md").read_text()
    for png in ("rank_heatmap.png", "budget_curve.png"):
        _check_png(run_dir / png)
        assert f"({png})" in report
    assert "self_attn.q_proj" in report and "| accuracy | 0.71 |" in report
    assert f"init_r = {INIT_R}" in report
    lora = write_report(compare_dir / "sst2/lora/seed1")  # no schedule, no history: budget curve skipped
    assert [p.name for p in lora] == ["rank_heatmap.png", "report.md"]
    assert "budget curve skipped" in (compare_dir / "sst2/lora/seed1/report.md").read_text()


def test_write_report_dispatch(compare_dir: Path, tmp_path: Path) -> None:
    assert (compare_dir / "report.md") in write_report(compare_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither") as info:
        write_report(tmp_path / "empty")
    assert "\n" not in str(info.value)


def test_stability_statistics() -> None:
    a = {"m1": 1, "m2": 5, "m3": 3}
    assert spearman(np.array([1, 2, 3]), np.array([10, 20, 30])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1.0)
    assert math.isnan(spearman(np.array([8, 8, 8]), np.array([1, 2, 3])))
    st = rank_stability([a, {"m1": 2, "m2": 6, "m3": 3}, a])
    assert st["pairs"] == 3 and st["spearman_mean"] == pytest.approx(1.0) and not st["constant"]
    assert st["mad_mean"] == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)
    const = rank_stability([dict.fromkeys(a, 8), dict.fromkeys(a, 8)])
    assert const["constant"] and math.isnan(const["spearman_mean"]) and const["mad_mean"] == 0


def test_report_never_imports_torch(compare_dir: Path) -> None:
    code = ("import sys; from igulora.report import write_report; write_report(sys.argv[1]); "
            "bad = [m for m in ('torch', 'transformers', 'matplotlib.pyplot') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    subprocess.run([sys.executable, "-c", code, str(compare_dir)], check=True)
