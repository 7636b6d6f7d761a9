"""``igulora compare`` on two tasks x three methods x two seeds (tiny slices), and ``report``."""

import json
from pathlib import Path

import pytest
from PIL import Image

from igulora.cli import main
from igulora.compare import parse_variant

FAST = ["--model", "minilm", "--max-train-samples", "32", "--max-eval-samples", "16", "--max-steps", "6",
        "--batch-size", "8", "--max-length", "24", "--init-r", "4", "--target-r", "2", "--deltaT", "1",
        "--tinit", "1", "--tfinal", "2", "--ig-steps", "2", "--quiet"]


def test_parse_variant():
    v = parse_variant("igulora:score=product:ig_steps=4")
    assert v.method == "igulora" and v.overrides == {"score": "product", "ig_steps": 4}
    with pytest.raises(ValueError, match="unknown method"):
        parse_variant("dora")



BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
CONFIGS = sorted((BENCH / "configs").glob("*.yaml")) + sorted((BENCH / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_benchmark_configs_and_recipes_are_valid(config, tmp_path, capsys):
    """Every run of every benchmark config and paper-scale recipe passes option validation (--dry-run
    trains nothing and writes nothing)."""
    out = tmp_path / "never"
    assert main(["compare", "--config", str(config), "--output-dir", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("dry run:") and "all options valid" in lines[-1]
    assert sum("would run" in line for line in lines) >= 6
    assert not out.exists()


def test_committed_benchmark_results_name_no_absolute_path():
    """The run folders in benchmarks/results/ are committed: their config.json must record paths
    relative to the repository root, not the machine they ran on (accuracy.py runs from the root)."""
    configs = sorted((BENCH / "results").glob("*/runs/*/*/seed*/config.json"))
    assert configs, "no committed benchmark runs found"
    for path in configs:
        cfg = json.loads(path.read_text())
        for value in (cfg["output_dir"], cfg["train"]["output_dir"], cfg.get("data_dir") or ""):
            assert not Path(value).is_absolute(), f"{path.relative_to(BENCH)} records the absolute path {value}"
        assert cfg["output_dir"] == str(path.parent.relative_to(BENCH.parent)), path


def test_compare_rejects_unknown_task_before_any_run(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--tasks", "sst2,ssst2", "--methods", "lora", "--output-dir", str(out)]) == 2
    assert "unknown task 'ssst2'" in capsys.readouterr().err
    assert not out.exists()


def test_compare_runs_skips_and_reports(tmp_path, capsys, minilm_path, shared_data):
    out = tmp_path / "cmp"
    argv = ["compare", "--tasks", "sst2,rte", "--methods", "lora,adalora,igulora", "--seeds", "1,2",
            "--output-dir", str(out), *FAST]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())["runs"]
    assert len(results) == 12 and all(r["status"] == "ok" for r in results)
    params = {r["method"]: r["trainable_params_end"] for r in results if r["task"] == "sst2" and r["seed"] == 1}
    assert abs(params["lora"] - params["igulora"]) / params["igulora"] < 0.05  # matched budgets
    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 2 * (1 + 3)  # scores and parameters: header + one row per method each
    assert "sst2" in rows[0] and "rte" in rows[0] and "Avg" in rows[0] and "Params" in rows[0]
    assert (out / "results.csv").read_text().count("\n") == 13
    report = (out / "report.md").read_text()
    for png in ("rank_heatmaps.png", "budget_curves.png", "metric_vs_params.png", "rank_stability.png"):
        path = out / png
        assert path.is_file() and png in report
        with Image.open(path) as im:
            assert im.size[0] >= 400 and im.size[1] >= 200
    capsys.readouterr()
    assert main(argv) == 0  # rerun: everything skipped
    assert capsys.readouterr().out.count("finished earlier, skipped") == 12
    assert main(["report", str(out)]) == 0
    assert main([*argv, "--dry-run"]) == 0
    assert capsys.readouterr().out.count("finished, would be skipped") == 12
    # a later invocation with other variants in the same folder keeps the earlier runs
    assert main([*argv[:4], "igulora:score=product", *argv[5:]]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert len(runs) == 12 + 4 and {r["variant"] for r in runs} >= {"lora", "igulora:score=product"}


def test_failed_run_is_recorded(tmp_path, capsys, minilm_path, shared_data):
    out = tmp_path / "cmp"
    argv = ["compare", "--tasks", "sst2", "--methods", "igulora,igulora:target_modules=nothing_here",
            "--seeds", "0", "--output-dir", str(out), *FAST]
    assert main(argv) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["ok", "failed"]
    assert "matches no module" in runs[1]["error"]
