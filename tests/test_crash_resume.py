"""Crash safety: SIGKILL a real training run mid-way, --resume it, and get the uninterrupted result."""

import json
import os
import signal
import subprocess
import sys
import time

ARGS = ["train", "--model", "minilm", "--task", "sst2", "--method", "igulora", "--max-train-samples", "96",
        "--max-eval-samples", "32", "--max-steps", "24", "--batch-size", "8", "--max-length", "32", "--init-r", "4",
        "--target-r", "2", "--tinit", "2", "--tfinal", "4", "--deltaT", "2", "--ig-steps", "4", "--save-every", "2",
        "--log-every", "1", "--quiet"]


def cli(*argv, **kw):
    return subprocess.Popen([sys.executable, "-m", "igulora.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def result(run):
    m = json.loads((run / "metrics.json").read_text())
    return m["metrics"], json.loads((run / "rank_pattern.json").read_text())


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, minilm_path, shared_data):
    full, killed = tmp_path / "full", tmp_path / "killed"
    p = cli(*ARGS, "--output-dir", str(full))
    assert p.wait(timeout=600) == 0, p.stderr.read()
    p = cli(*ARGS, "--output-dir", str(killed))
    latest = killed / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        if latest.exists() and json.loads(latest.read_text())["step"] >= 8:
            break
        time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    step_at_kill = json.loads(latest.read_text())["step"]
    assert 8 <= step_at_kill < 24 and not (killed / "metrics.json").exists()
    p = cli(*ARGS, "--output-dir", str(killed), "--resume")
    assert p.wait(timeout=600) == 0, p.stderr.read()
    metrics_full, pattern_full = result(full)
    metrics_killed, pattern_killed = result(killed)
    assert pattern_killed == pattern_full
    assert abs(metrics_killed["primary"] - metrics_full["primary"]) <= 1e-6
    log = [json.loads(line)["step"] for line in (killed / "train_log.jsonl").read_text().splitlines()]
    assert log == list(range(1, 25))


def test_same_seed_same_result(tmp_path, minilm_path, shared_data):
    """Determinism on CPU: two runs with the same seed and settings agree exactly."""
    runs = []
    for name in ("a", "b"):
        p = cli(*ARGS, "--max-steps", "10", "--output-dir", str(tmp_path / name))
        assert p.wait(timeout=600) == 0, p.stderr.read()
        runs.append(result(tmp_path / name))
    assert runs[0] == runs[1]
