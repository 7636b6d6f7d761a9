"""The untrained model's score on a decoder suite's evaluation set: the floor that fine-tuning must beat.

Reads a suite config (default ``decoder``) for the model, tasks, evaluation slice, max length and
batch size, evaluates the base model without any adapter exactly as a run's final evaluation does,
and writes ``benchmarks/results/<suite>/zero_shot.json``.

    .venv/bin/python benchmarks/zero_shot.py            # decoder suite: SmolLM2-135M on arc-e, arc-e-cloze
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from igulora.cli import load_config_file
from igulora.compare import _split
from igulora.data import get_task, load_examples
from igulora.models import load_model_and_tokenizer
from igulora.pipeline import make_evaluator
from igulora.runner import quiet_transformers

ROOT = Path(__file__).resolve().parents[1]


def main(suite: str = "decoder") -> None:
    cfg = load_config_file(str(ROOT / "benchmarks" / "configs" / f"{suite}.yaml"))
    quiet_transformers()
    out: dict[str, dict] = {}
    model = tokenizer = None
    for name in _split(cfg["tasks"]):
        task = get_task(name)
        if not task.decoder:
            sys.exit(f"{name} is not a decoder task: the zero-shot floor is only defined for decoder suites")
        if model is None:
            model, tokenizer = load_model_and_tokenizer(cfg["model"], "causal_lm")
        rows = load_examples(name, "eval", cfg.get("data_dir"), max_samples=cfg.get("max_eval_samples"), seed=0)
        evaluate = make_evaluator(task, tokenizer, rows, cfg["max_length"], cfg.get("eval_batch_size", 32))
        start = time.perf_counter()
        metrics = evaluate(model)
        out[name] = {"metrics": metrics, "n_eval": len(rows), "eval_time_s": time.perf_counter() - start}
        print(f"{name}: {metrics} on {len(rows)} examples")
    path = ROOT / "benchmarks" / "results" / suite / "zero_shot.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": cfg["model"], "tasks": out}, indent=2) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:2])
