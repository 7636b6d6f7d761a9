"""End-to-end CLI runs on tiny slices of the real data and the offline MiniLM."""

import json
import subprocess
import sys

import pytest
from peft import PeftModel

from igulora.cli import main

FAST = ["--model", "minilm", "--max-train-samples", "48", "--max-eval-samples", "24", "--max-steps", "8",
        "--batch-size", "8", "--max-length", "32", "--init-r", "4", "--target-r", "2", "--deltaT", "2",
        "--tinit", "1", "--tfinal", "2", "--ig-steps", "4", "--quiet"]


@pytest.fixture(scope="module")
def igu_run(tmp_path_factory, minilm_path, shared_data):
    out = tmp_path_factory.mktemp("runs") / "sst2-igu"
    assert main(["train", "--task", "sst2", "--method", "igulora", "--output-dir", str(out), *FAST]) == 0
    return out


def test_train_writes_every_file(igu_run, capsys):
    for name in ("config.json", "metrics.json", "rank_pattern.json", "allocation_history.jsonl", "train_log.jsonl",
                 "adapter/adapter_config.json", "rank_heatmap.png", "budget_curve.png"):
        assert (igu_run / name).is_file(), name
    metrics = json.loads((igu_run / "metrics.json").read_text())
    assert metrics["status"] == "ok" and 0 <= metrics["metrics"]["primary"] <= 1
    assert metrics["trainable_params_end"] < metrics["trainable_params_start"]
    history = [json.loads(line) for line in (igu_run / "allocation_history.jsonl").read_text().splitlines()]
    assert history and history[-1]["step"] == 8 - 2
    cfg = json.loads((igu_run / "config.json").read_text())
    assert cfg["igulora"]["total_step"] == 8 and cfg["train"]["max_steps"] == 8


def test_adapter_loads_with_stock_peft(igu_run, minilm_path):
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    model = PeftModel.from_pretrained(base, str(igu_run / "adapter"))
    ranks = json.loads((igu_run / "rank_pattern.json").read_text())
    loaded = {n.removeprefix("base_model.model.").removesuffix(".lora_E.default"): p.shape[0]
              for n, p in model.named_parameters() if "lora_E" in n}
    assert loaded == ranks


def test_inspect_and_report(igu_run, capsys):
    assert main(["inspect", str(igu_run)]) == 0
    out = capsys.readouterr().out
    assert "attention.self.query" in out and "trainable parameters" in out and "module type" in out
    assert main(["report", str(igu_run)]) == 0
    assert (igu_run / "report.md").is_file()


def test_export_lora_and_merged(igu_run, tmp_path, capsys):
    assert main(["export", str(igu_run), "--to", "lora", "--output", str(tmp_path / "lora")]) == 0
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["rank_pattern"] == cfg["alpha_pattern"]
    assert main(["export", str(igu_run), "--to", "merged", "--output", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "config.json").is_file()


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_baseline_methods(tmp_path, method, minilm_path, shared_data):
    out = tmp_path / method
    extra = ["--tensorboard"] if method == "lora" else []
    assert main(["train", "--task", "rte", "--method", method, "--output-dir", str(out), *FAST, *extra]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["steps"] == 8
    if extra:
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--task", "nope"], "unknown task 'nope'"),
        (["train", "--task", "sst2", "--estimator", "bogus"], "invalid choice: 'bogus'"),
        (["train", "--task", "sst2", "--init-r", "4", "--target-r", "8"], "target_r=8.0 is larger than init_r=4"),
        (["train", "--task", "sst2", "--max-steps", "0"], "max_steps must be >= 1"),
        (["train", "--task", "sst2", "--max-steps", "10", "--tinit", "5", "--tfinal", "5"], "no pruning phase"),
        (["train", "--task", "sst2", "--target-modules", "nothing_here"], "matches no module"),
        (["train", "--task", "sst2", "--model", "/nonexistent/model"], "/nonexistent/model"),
        (["train", "--task", "sst2", "--resume", "--overwrite"], "contradict"),
        (["train", "--task", "sst2", "--data-dir", "/nonexistent"], "not found"),
        (["train", "--task", "sst2", "--config", "/nonexistent.yaml"], "no such file"),
        (["inspect", "/tmp"], "neither a run directory nor an adapter folder"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(tmp_path, argv, message, minilm_path, shared_data):
    argv = [*argv, "--output-dir", str(tmp_path / "o")] if argv[0] == "train" else argv
    proc = subprocess.run([sys.executable, "-m", "igulora.cli", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2


def test_existing_output_dir_needs_resume_or_overwrite(igu_run, capsys):
    assert main(["train", "--task", "sst2", "--output-dir", str(igu_run), *FAST]) == 2
    assert "already exists" in capsys.readouterr().err


def test_two_stage(tmp_path, minilm_path, shared_data, capsys):
    out = tmp_path / "two"
    assert main(["train", "--task", "sst2", "--method", "igulora", "--two-stage", "--output-dir", str(out), *FAST]) == 0
    stage1 = json.loads((out / "stage1" / "rank_pattern.json").read_text())
    assert json.loads((out / "rank_pattern.json").read_text()) == stage1
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA"
    assert adapter["rank_pattern"] == {k: v for k, v in stage1.items() if v > 0}
    assert main(["export", str(out), "--to", "lora", "--output", str(tmp_path / "exp")]) == 0


def test_demo_command_wiring(tmp_path, monkeypatch, capsys, minilm_path, shared_data):
    """The demo runs ``train`` with its fixed settings and prints the allocation (tiny settings here)."""
    from igulora import commands

    monkeypatch.setattr(commands, "DEMO_ARGS", ["--task", "sst2", "--method", "igulora", *FAST[:-1]])
    assert main(["demo", "--output-dir", str(tmp_path / "demo"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Final rank allocation" in out and "rank heatmap:" in out and "accuracy" in out


def test_task_help_lists_every_registered_task():
    """The --task help is written out (no torch import at flag time); it must follow the registry."""
    from igulora.cli import TASK_HELP
    from igulora.data import list_tasks

    assert sorted(t.strip() for t in TASK_HELP.split(",")) == sorted(list_tasks())
