"""Catalogue of bad inputs across the CLI: one clear line each, exit code 2, no traceback."""

import json
import subprocess
import sys

import pytest

from igulora.cli import main

FAST = ["--model", "minilm", "--max-steps", "6", "--batch-size", "4", "--max-length", "16", "--init-r", "2",
        "--target-r", "1", "--tinit", "1", "--tfinal", "1", "--deltaT", "1", "--ig-steps", "2", "--quiet",
        "--max-train-samples", "8", "--max-eval-samples", "8"]


def write(path, text):
    path.write_text(text)
    return str(path)


def cases(tmp_path):
    d = tmp_path
    good_tsv = "label\tsentence\n1\tgood film\n0\tbad film\n1\tnice\n0\tawful\n"
    return {
        "missing column": (["--task", "custom", "--train-file", write(d / "a.tsv", "text\tx\nhi\t1\n"),
                            "--eval-file", str(d / "a.tsv"), "--text-fields", "text", "--label-field", "label"],
                           "missing field 'label'"),
        "label outside set": (["--task", "sst2", "--data-dir", str(_sst2_dir(d, "label\tsentence\n3\tgood\n"))],
                              "label 3 outside the label set"),
        "empty data file": (["--task", "custom", "--train-file", write(d / "e.csv", ""), "--eval-file",
                             str(d / "e.csv")], "e.csv"),
        "non-numeric stsb score": (["--task", "stsb", "--data-dir", str(_stsb_dir(d))], "sts-train.csv:1"),
        "model path not a model": (["--task", "sst2", "--model", str(d)], "no config.json"),
        "unknown method": (["--task", "sst2", "--method", "dora"], "invalid choice: 'dora'"),
        "negative steps": (["--task", "sst2", "--max-steps", "-5"], "max_steps must be >= 1"),
        "bad config file key": (["--task", "sst2", "--config", write(d / "c.yaml", "bogus_key: 1\n")],
                                "unknown option(s): bogus_key"),
        "good custom data, bad budget": (["--task", "custom", "--train-file", write(d / "g.tsv", good_tsv),
                                          "--eval-file", str(d / "g.tsv"), "--target-budget", "999999999"],
                                         "above the initial budget"),
    }


def _sst2_dir(d, train):
    root = d / "data"
    (root / "glue" / "sst2").mkdir(parents=True, exist_ok=True)
    (root / "glue" / "sst2" / "train.tsv").write_text(train)
    (root / "glue" / "sst2" / "dev.tsv").write_text("sentence\tlabel\tindex\ngood\t1\t0\n")
    return root


def _stsb_dir(d):
    root = d / "stsdata"
    (root / "glue" / "stsb").mkdir(parents=True, exist_ok=True)
    row = "main-captions\tMSRvid\t2012test\t0001\t{}\tA man.\tA person.\n"
    (root / "glue" / "stsb" / "sts-train.csv").write_text(row.format("high"))
    (root / "glue" / "stsb" / "sts-dev.csv").write_text(row.format("3.5"))
    return root


CASE_NAMES = ["missing column", "label outside set", "empty data file", "non-numeric stsb score",
              "model path not a model", "unknown method", "negative steps", "bad config file key",
              "good custom data, bad budget"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_train_mistakes(name, tmp_path, capsys, minilm_path):
    argv, message = cases(tmp_path)[name]
    argv = ["train", *FAST, *argv, "--output-dir", str(tmp_path / "o")]  # later flags win
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse rejects a flag value before main's handler
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_corrupt_checkpoint_on_resume(tmp_path, capsys, minilm_path, shared_data):
    out = tmp_path / "run"
    assert main(["train", "--task", "sst2", "--output-dir", str(out), *FAST]) == 0
    ckpt = out / "checkpoints" / json.loads((out / "checkpoints" / "latest.json").read_text())["file"]
    ckpt.write_bytes(b"garbage")
    (out / "metrics.json").unlink()
    assert main(["train", "--task", "sst2", "--output-dir", str(out), "--resume", *FAST]) == 2
    err = capsys.readouterr().err
    assert "corrupt checkpoint" in err and ckpt.name in err


def test_export_with_other_base_model(tmp_path, capsys, minilm_path, shared_data):
    out = tmp_path / "run"
    assert main(["train", "--task", "sst2", "--output-dir", str(out), *FAST]) == 0
    from export_helpers import other_base

    other = other_base(tmp_path / "other")
    from igulora.export import export_run

    with pytest.raises(ValueError, match="does not fit base model"):
        export_run(out, "lora", tmp_path / "x", base_model=str(other))


def test_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "igulora.cli", "train", "--task", "sst2", "--lr", "-1",
                           "--output-dir", str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "lr must be > 0" in proc.stderr and "Traceback" not in proc.stderr
