"""One training run from options to a finished run directory (used by ``train``, ``compare`` and ``demo``).

A run directory holds ``config.json`` (everything needed to rerun), ``metrics.json``,
``rank_pattern.json``, ``allocation_history.jsonl``, ``budget_schedule.json``,
``train_log.jsonl``, ``adapter/`` (stock ``peft`` loads it), ``rank_heatmap.png``,
``budget_curve.png`` and ``checkpoints/``. Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import IguLoraConfig, TrainArgs
from .io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

RESULT_FILES = ("metrics.json", "config.json", "rank_pattern.json")


class UsageError(ValueError):
    """A user mistake in the options (the CLI prints it in one line and exits with code 2)."""


@dataclass
class RunOptions:
    """Everything one run needs: model, task, method, adapter config, training and data settings."""

    model: str = "minilm"
    task: str = "sst2"
    method: str = "igulora"
    output_dir: str | None = None
    igulora: IguLoraConfig = field(default_factory=IguLoraConfig)
    train: TrainArgs = field(default_factory=lambda: TrainArgs(output_dir=""))
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    eval_batch_size: int = 32
    max_new_tokens: int = 256
    data_dir: str | None = None
    train_file: str | None = None
    eval_file: str | None = None
    text_fields: list[str] | None = None
    label_field: str | None = None
    variant: str | None = None
    tensorboard: bool = False
    two_stage: bool = False
    resume: bool = False
    overwrite: bool = False

    def run_dir(self) -> Path:
        name = self.output_dir or f"runs/{self.task}-{self.method}-seed{self.train.seed}"
        return Path(name)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["igulora"] = self.igulora.to_dict()
        d["train"] = dataclasses.asdict(self.train)
        return d


def quiet_transformers() -> None:
    """Silence transformers' load reports and progress bars (the CLI shows its own progress)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def prepare_run_dir(opts: RunOptions) -> Path:
    """Create the run directory; refuse to reuse one without ``resume``/``overwrite``."""
    run = opts.run_dir()
    if opts.resume and opts.overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pick one")
    if run.exists() and any(run.iterdir()):
        if opts.overwrite:
            shutil.rmtree(run)
        elif not opts.resume:
            raise UsageError(f"output directory {run} already exists; pass --resume to continue it or --overwrite")
    elif opts.resume:
        logger.info("nothing to resume in %s; starting a new run", run)
    run.mkdir(parents=True, exist_ok=True)
    return run


def classifier_head(model: Any, num_labels: int) -> list[str]:
    """Top-level module(s) holding the newly initialised head: the last linear with ``num_labels``
    outputs, found by shape (``classifier`` for BERT, ``score`` for Llama), trained in full."""
    from torch import nn

    heads = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
    return [heads[-1].split(".")[0]] if heads else []


def run_two_stage(opts: RunOptions, on_step: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """The authors' two-stage option: stage 1 (``RUN/stage1``) allocates ranks with IGU-LoRA; stage 2
    (``RUN``) retrains a freshly initialised adapter with that rank pattern fixed."""
    if opts.method != "igulora":
        raise UsageError("--two-stage applies to --method igulora")
    run = prepare_run_dir(opts)
    stage1 = dataclasses.replace(opts, output_dir=str(run / "stage1"), two_stage=False, overwrite=False,
                                 resume=(run / "stage1").exists())
    if not is_finished(stage1.run_dir()):
        run_training(stage1, on_step)
    ranks = json.loads((stage1.run_dir() / "rank_pattern.json").read_text())
    stage2 = dataclasses.replace(opts, resume=True, overwrite=False)
    return run_training(stage2, on_step, fixed_ranks=ranks)


def run_training(opts: RunOptions, on_step: Callable[[dict[str, Any]], None] | None = None,
                 fixed_ranks: dict[str, int] | None = None) -> Path:
    """Load data and model, train with ``opts.method`` and write the run directory. Returns it.

    ``fixed_ranks`` trains a fresh LoRA adapter with that rank pattern instead (two-stage option).
    """
    if opts.two_stage and fixed_ranks is None:
        return run_two_stage(opts, on_step)
    from .data import get_task, load_examples
    from .methods import adapter_param_count, build_fixed_lora, build_method, head_param_count
    from .models import load_model_and_tokenizer
    from .pipeline import make_collate, make_evaluator
    from .train import fit, seed_everything

    quiet_transformers()
    task = get_task(opts.task)
    run = prepare_run_dir(opts)
    data_kw = {"train_file": opts.train_file, "eval_file": opts.eval_file, "text_fields": opts.text_fields,
               "label_field": opts.label_field}
    train_rows = load_examples(opts.task, "train", opts.data_dir, max_samples=opts.max_train_samples,
                               seed=opts.train.seed, **data_kw)
    eval_rows = load_examples(opts.task, "eval", opts.data_dir, max_samples=opts.max_eval_samples, seed=0, **data_kw)
    num_labels = task.num_labels or (1 + max(int(r["label"]) for r in train_rows) if not task.decoder else 0)
    kind = "causal_lm" if task.decoder else "seq_cls"
    seed_everything(opts.train.seed)  # the new head and the adapter are initialised from the seed
    model, tokenizer = load_model_and_tokenizer(opts.model, kind, num_labels=max(num_labels, 1))
    igu = opts.igulora
    if not task.decoder:
        igu = dataclasses.replace(igu, modules_to_save=igu.modules_to_save or classifier_head(model, num_labels),
                                  task_type=igu.task_type or "SEQ_CLS")
    else:
        igu = dataclasses.replace(igu, task_type=igu.task_type or "CAUSAL_LM")
    args = dataclasses.replace(opts.train, output_dir=str(run))
    total = args.total_steps(len(train_rows))
    if fixed_ranks is None:
        peft_model, controller = build_method(model, opts.method, igu, total)
    else:
        peft_model, controller = build_fixed_lora(model, fixed_ranks, igu)
    resolved = dataclasses.replace(opts, igulora=getattr(controller, "config", igu).with_total_step(total), train=args)
    atomic_write_json(run / "config.json", {**resolved.to_dict(), "model_kind": kind, "num_labels": num_labels})
    start_params = head_param_count(peft_model) + sum(
        p.numel() for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" in n)
    on_step = _with_tensorboard(run, on_step) if opts.tensorboard else on_step
    result = fit(peft_model, controller, train_rows, make_collate(task, tokenizer, opts.max_length), args,
                 evaluate=make_evaluator(task, tokenizer, eval_rows, opts.max_length, opts.eval_batch_size,
                                         opts.max_new_tokens),
                 resume=opts.resume, on_step=on_step)
    adapter_params = adapter_param_count(peft_model, controller)
    _write_outputs(run, opts, task, peft_model, controller, result, start_params,
                   head_param_count(peft_model) + adapter_params, adapter_params)
    return run


def _with_tensorboard(run: Path, on_step: Callable[[dict[str, Any]], None] | None) -> Callable:
    """Also log loss, learning rate and budget to TensorBoard in ``RUN/tensorboard``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard") from err
    writer = SummaryWriter(str(run / "tensorboard"))

    def log(info: dict[str, Any]) -> None:
        for key in ("loss", "lr", "budget", "active_budget"):
            if key in info:
                writer.add_scalar(f"train/{key}", info[key], info["step"])
        if info["step"] == info["total"]:
            writer.close()
        if on_step is not None:
            on_step(info)

    return log


def _write_outputs(run: Path, opts: RunOptions, task: Any, peft_model: Any, controller: Any, result: Any,
                   start_params: int, end_params: int, adapter_params: int) -> None:
    from .peft_backend import pruned_modules_saved

    tmp = run / "adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with pruned_modules_saved():
        peft_model.save_pretrained(str(tmp))
    shutil.rmtree(run / "adapter", ignore_errors=True)
    tmp.rename(run / "adapter")
    atomic_write_json(run / "rank_pattern.json", controller.rank_pattern())
    atomic_write_text(run / "allocation_history.jsonl",
                      "".join(json.dumps(h, sort_keys=True) + "\n" for h in controller.history))
    schedule = _budget_curve(controller)
    if schedule is not None:
        atomic_write_json(run / "budget_schedule.json", schedule)
    metrics = {
        "task": opts.task, "method": opts.method, "variant": opts.variant or opts.method, "seed": opts.train.seed,
        "model": opts.model, "metrics": result.metrics, "primary_metric": task.primary,
        "higher_is_better": task.higher_is_better, "train_time_s": result.train_time_s,
        "peak_memory_mb": result.peak_memory_mb, "trainable_params_start": start_params,
        "trainable_params_end": end_params, "adapter_params_end": adapter_params, "steps": result.steps,
        "nonfinite_steps": result.nonfinite_steps, "final_train_loss": result.final_loss, "status": "ok",
    }
    atomic_write_json(run / "metrics.json", metrics)
    try:
        from .report import write_run_report

        write_run_report(run)
    except Exception as err:  # plots must never lose a finished run
        logger.warning("could not draw the run's plots: %s", err)


def _budget_curve(controller: Any) -> dict[str, Any] | None:
    schedule = getattr(controller, "schedule", None)
    if schedule is not None:
        steps, budget = zip(*schedule.curve())
        return {"steps": list(steps), "budget": list(budget), "unit": controller.config.budget_unit}
    alloc = getattr(controller, "alloc", None)
    if alloc is not None:
        total = controller.cfg.total_step
        return {"steps": list(range(1, total + 1)),
                "budget": [alloc.budget_schedule(t)[0] for t in range(1, total + 1)], "unit": "ranks"}
    return None


def is_finished(run: Path) -> bool:
    """A run is finished when its ``metrics.json`` says ``status: ok``."""
    path = run / "metrics.json"
    try:
        return json.loads(path.read_text()).get("status") == "ok"
    except (OSError, ValueError):
        return False
