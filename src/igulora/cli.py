"""The ``igulora`` command line: parse, build a dataclass, call one function.

User mistakes print one line (``igulora: error: ...``) and exit with code 2; set
``IGULORA_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .config import BUDGET_UNITS, ESTIMATORS, IG_FORMS, LAMBDA_TERMS, SCORES, IguLoraConfig

METHOD_CHOICES = ("lora", "adalora", "igulora")
TASK_HELP = ("sst2, cola, mrpc, rte, stsb, boolq, arc-e, arc-c, obqa, boolq-qa, arc-e-cloze, arc-c-cloze, obqa-cloze, "
             "gsm8k, alpaca, custom")

# (flag, dest section, type, help); section "igulora" -> IguLoraConfig, "train" -> TrainArgs, "run" -> RunOptions
_ADAPTER_FLAGS: list[tuple[str, type | None, Any, str]] = [
    ("--estimator", str, ESTIMATORS, "sensitivity estimator (default stochastic)"),
    ("--ig-steps", int, None, "N, quadrature intervals of the IG path integral (default 20)"),
    ("--ig-form", str, IG_FORMS, "quadrature variable: u = alpha^3 (default) or alpha"),
    ("--score", str, SCORES, "snr = I/(U+eps) (default) or product = I*U (AdaLoRA)"),
    ("--lambda-term", str, LAMBDA_TERMS, "first term of the unit score (default score)"),
    ("--budget-unit", str, BUDGET_UNITS, "params (default) or ranks"),
    ("--init-r", int, None, "initial rank of every adapted matrix (default 12)"),
    ("--target-r", float, None, "target average rank (default 8); LoRA uses this rank"),
    ("--target-budget", int, None, "explicit final budget in budget units (overrides --target-r)"),
    ("--tinit", float, None, "warm-up steps without pruning, or fraction of the steps (default 0.1)"),
    ("--tfinal", float, None, "final steps with the mask frozen, or fraction (default 0.2)"),
    ("--deltaT", float, None, "steps between masking events, or fraction (default 10)"),
    ("--beta1", float, None, "EMA coefficient of the sensitivity (default 0.85)"),
    ("--beta2", float, None, "EMA coefficient of the uncertainty (default 0.85)"),
    ("--eps", float, None, "epsilon of the snr score (default 1e-6)"),
    ("--score-every", int, None, "update scores (probe passes) every k optimizer steps "
     "(default: 8 for stochastic, trapezoid, paper-eq6; 1 for gradient, coupled)"),
    ("--orth-reg-weight", float, None, "orthogonality regulariser weight (default 0.1)"),
    ("--lora-alpha", float, None, "adapter scaling numerator (default 32)"),
    ("--lora-dropout", float, None, "adapter input dropout (default 0)"),
]
_TRAIN_FLAGS: list[tuple[str, type | None, Any, str]] = [
    ("--max-steps", int, None, "optimizer steps (default: --epochs passes over the data)"),
    ("--epochs", float, None, "passes over the training data (default 1)"),
    ("--batch-size", int, None, "micro-batch size (default 16)"),
    ("--grad-accum", int, None, "micro-batches per optimizer step (default 1)"),
    ("--lr", float, None, "peak learning rate (default 5e-4)"),
    ("--weight-decay", float, None, "AdamW weight decay (default 0)"),
    ("--warmup-ratio", float, None, "LR warm-up fraction (default 0.06)"),
    ("--max-grad-norm", float, None, "gradient clipping, 0 disables (default 1.0)"),
    ("--eval-every", int, None, "evaluate every k steps (default: at the end only)"),
    ("--save-every", int, None, "checkpoint every k steps (default: ~10 per run)"),
    ("--log-every", int, None, "write a train_log.jsonl line every k steps (default 10)"),
    ("--seed", int, None, "seed of data order and initialisation (default 0)"),
    ("--on-nonfinite", str, ("skip", "stop"), "NaN/inf loss: skip the update (default) or stop"),
]
_RUN_FLAGS: list[tuple[str, type | None, Any, str]] = [
    ("--max-length", int, None, "maximum tokens per example (default 128)"),
    ("--max-train-samples", int, None, "seeded random subset of the training data"),
    ("--max-eval-samples", int, None, "fixed random subset of the eval data"),
    ("--eval-batch-size", int, None, "evaluation batch size (default 32)"),
    ("--max-new-tokens", int, None, "generation length for generation tasks (default 256)"),
    ("--data-dir", str, None, "data folder laid out like shared/data (default: $IGULORA_DATA_DIR, ../shared/data)"),
    ("--train-file", str, None, "custom training file (CSV/TSV/JSON/JSONL)"),
    ("--eval-file", str, None, "custom evaluation file"),
]


def _add_flags(p: argparse.ArgumentParser, flags: list, title: str) -> None:
    group = p.add_argument_group(title)
    for flag, typ, choices, helptext in flags:
        group.add_argument(flag, type=typ, choices=choices, default=None, help=helptext)


def add_run_arguments(p: argparse.ArgumentParser, *, single: bool = True) -> None:
    """Every flag of ``train`` (``compare`` reuses them for all its runs)."""
    if single:
        p.add_argument("--model", default=None, help="alias (minilm, smollm2-135m), local folder or hub id")
        p.add_argument("--task", default=None, help=f"one of: {TASK_HELP}")
        p.add_argument("--method", default=None, choices=METHOD_CHOICES, help="default igulora")
        p.add_argument("--output-dir", default=None, help="run directory (default runs/TASK-METHOD-seedSEED)")
        p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its checkpoint")
        p.add_argument("--overwrite", action="store_true", help="delete an existing --output-dir first")
    p.add_argument("--config", default=None, help="YAML or JSON file with the same keys; flags override it")
    p.add_argument("--target-modules", default=None, help="comma-separated module names (default: attention+MLP)")
    p.add_argument("--no-reapply-mask", action="store_true", default=None,
                   help="let pruned singular values regrow between masking events (PEFT AdaLoRA behaviour)")
    p.add_argument("--bf16", action="store_true", default=None, help="autocast forward passes to bfloat16")
    p.add_argument("--two-stage", action="store_true", default=None,
                   help="igulora: after allocation, retrain a fresh adapter with the found ranks fixed")
    p.add_argument("--tensorboard", action="store_true", default=None,
                   help="log to RUN/tensorboard (needs tensorboard)")
    p.add_argument("--text-fields", default=None, help="custom task: text column(s), comma-separated")
    p.add_argument("--label-field", default=None, help="custom task: label column")
    p.add_argument("--quiet", action="store_true", help="no progress bar; log lines only")
    _add_flags(p, _ADAPTER_FLAGS, "IGU-LoRA / adapter")
    _add_flags(p, _TRAIN_FLAGS, "training")
    _add_flags(p, _RUN_FLAGS, "data and evaluation")


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def load_config_file(path: str | None) -> dict[str, Any]:
    """Keys of a YAML/JSON config file, with ``-`` normalised to ``_``."""
    if not path:
        return {}
    from .runner import UsageError

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--config {path}: no such file")
    text = p.read_text()
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:
        raise UsageError(f"--config {path}: cannot parse: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _steps_value(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() and v >= 1 else v


def build_options(ns: argparse.Namespace, base: dict[str, Any] | None = None) -> Any:
    """Merge defaults < ``base`` (config file or experiment entry) < flags into :class:`RunOptions`."""
    from .config import TrainArgs
    from .runner import RunOptions, UsageError

    values = {**load_config_file(getattr(ns, "config", None)), **(base or {})}
    values.update({k: v for k, v in vars(ns).items() if v is not None and k not in ("config", "command", "func")})
    known_adapter = {f.name for f in dataclasses.fields(IguLoraConfig)}
    known_train = {f.name for f in dataclasses.fields(TrainArgs)} - {"output_dir"}
    known_run = {f.name for f in dataclasses.fields(RunOptions)} - {"igulora", "train"}
    extra_ok = {"quiet", "no_reapply_mask"}
    unknown = sorted(set(values) - known_adapter - known_train - known_run - extra_ok)
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(unknown)}")
    adapter = {k: values[k] for k in known_adapter if k in values}
    for k in ("tinit", "tfinal", "deltaT"):
        if k in adapter:
            adapter[k] = _steps_value(adapter[k])
    if isinstance(adapter.get("target_modules"), str):
        adapter["target_modules"] = [t.strip() for t in adapter["target_modules"].split(",") if t.strip()]
    if values.get("no_reapply_mask"):
        adapter["reapply_mask"] = False
    if "seed" in values:
        adapter.setdefault("seed", values["seed"])
    run = {k: values[k] for k in known_run if k in values}
    if isinstance(run.get("text_fields"), str):
        run["text_fields"] = [t.strip() for t in run["text_fields"].split(",")]
    train = TrainArgs(output_dir="", **{k: values[k] for k in known_train if k in values})
    return RunOptions(igulora=IguLoraConfig(**adapter), train=train, **run)


def _setup_logging(quiet: bool) -> None:
    import warnings

    logging.basicConfig(level=logging.INFO if quiet else logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("igulora.models").setLevel(logging.INFO)  # says where converted models are cached
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(argv: list[str] | None = None) -> int:
    from .commands import build_parser

    parser = build_parser()
    ns = parser.parse_args(argv)
    _setup_logging(getattr(ns, "quiet", False))
    if os.environ.get("IGULORA_DEBUG"):
        return ns.func(ns)
    try:
        return ns.func(ns)
    except RuntimeError as err:
        if type(err).__name__ != "TrainingStopped":
            raise
        print(f"igulora: {err}. Resume with the same command and --resume.", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("igulora: interrupted", file=sys.stderr)
        return 130
    except ValueError as err:  # config, data, model, checkpoint and usage errors all derive from it
        print(f"igulora: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
