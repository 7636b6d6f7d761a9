"""The ``igulora`` sub-commands: each parses its flags and calls one library function."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, NoReturn

from .cli import add_run_arguments, build_options

DEMO_ARGS = [
    "--model", "minilm", "--task", "sst2", "--method", "igulora", "--max-train-samples", "6000",
    "--max-steps", "300", "--batch-size", "32", "--lr", "3e-3", "--max-length", "64",
    "--init-r", "8", "--target-r", "4", "--tinit", "0.1", "--tfinal", "0.3", "--deltaT", "10",
    "--eval-batch-size", "64",
]


def _progress(quiet: bool, desc: str):
    """A tqdm progress bar showing loss, current budget and time left (``None`` when quiet)."""
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bar: dict[str, Any] = {}

    def on_step(info: dict[str, Any]) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=info["total"], desc=desc, unit="step", dynamic_ncols=True,
                              initial=info["step"] - 1)
        post = {"loss": f"{info['loss']:.4f}"}
        if "active_budget" in info:
            post["budget"] = info["active_budget"]
        bar["bar"].set_postfix(post, refresh=False)
        bar["bar"].update(1)

    return on_step, lambda: bar["bar"].close() if "bar" in bar else None


def _print_run_summary(run: Path) -> None:
    from .report import rank_table_markdown

    metrics = json.loads((run / "metrics.json").read_text())
    ranks = json.loads((run / "rank_pattern.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    shown = {k: round(v, 4) for k, v in metrics["metrics"].items()}
    print(f"\n{metrics['method']} on {metrics['task']} ({metrics['model']}), {metrics['steps']} steps, "
          f"{metrics['train_time_s']:.0f} s: {shown}")
    print(f"trainable parameters: {metrics['trainable_params_start']:,} at start -> "
          f"{metrics['trainable_params_end']:,} at the end")
    print("\nFinal rank allocation (layers x module types):\n")
    print(rank_table_markdown(ranks, init_r=cfg["igulora"]["init_r"]))
    for name in ("rank_heatmap.png", "budget_curve.png"):
        if (run / name).exists():
            print(f"{name.split('.')[0].replace('_', ' ')}: {run / name}")
    print(f"run directory: {run}")


def cmd_train(ns: argparse.Namespace) -> int:
    from .runner import run_training

    opts = build_options(ns)
    on_step, close = _progress(ns.quiet, f"{opts.method} {opts.task}")
    try:
        run = run_training(opts, on_step=on_step)
    finally:
        close()
    _print_run_summary(run)
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    extra = ["--output-dir", ns.output_dir, "--overwrite"]
    demo_ns = parser.parse_args(DEMO_ARGS + extra + (["--quiet"] if ns.quiet else []))
    print("igulora demo: IGU-LoRA on MiniLM (all-MiniLM-L6-v2) + SST-2, 6000 training sentences, "
          "300 steps of 32, rank 8 -> average 4; evaluated on the full SST-2 dev set (872 sentences).")
    return cmd_train(demo_ns)


def cmd_export(ns: argparse.Namespace) -> int:
    from .export import export_run

    out = export_run(ns.run_dir, ns.to, ns.output)
    print(f"wrote {ns.to} export to {out}")
    return 0


def cmd_inspect(ns: argparse.Namespace) -> int:
    from .inspect_run import inspect_path

    print(inspect_path(ns.path))
    return 0


def cmd_report(ns: argparse.Namespace) -> int:
    from .report import write_report

    for path in write_report(ns.path):
        print(path)
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from .compare import run_compare

    run_compare(ns)
    return 0


class _Parser(argparse.ArgumentParser):
    """Flag mistakes in one line (not argparse's full usage block), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"igulora: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="igulora", description="Adaptive-rank LoRA fine-tuning by IGU-LoRA (Integrated Gradients + "
        "uncertainty-aware rank allocation on PEFT AdaLoRA).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("train", help="fine-tune a model on a task with lora, adalora or igulora")
    add_run_arguments(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("demo", help="a short real run: IGU-LoRA on MiniLM + SST-2 (a few minutes on 2 CPU cores)")
    p.add_argument("--output-dir", default="runs/demo", help="run directory (default runs/demo, overwritten)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("export", help="export a run's adapter as plain LoRA or as a merged full model")
    p.add_argument("run_dir", help="a run directory made by 'igulora train'")
    p.add_argument("--to", required=True, choices=("lora", "merged"), help="lora adapter or merged model")
    p.add_argument("--output", required=True, help="folder to write")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("inspect", help="ranks per module, trainable parameters, budget by layer and module type")
    p.add_argument("path", help="a run directory or a saved adapter folder")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("compare", help="methods x tasks x seeds at matched budgets, with tables and plots")
    p.add_argument("--model", default=None, help="model for every run (default minilm)")
    p.add_argument("--tasks", default=None, help="comma-separated tasks")
    p.add_argument("--methods", default=None,
                   help="comma-separated methods or variants, e.g. lora,adalora,igulora,igulora:estimator=gradient")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0)")
    p.add_argument("--output-dir", default=None, help="experiment directory (default runs/compare)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate every run's options and list the runs (new, to resume, finished); train nothing")
    add_run_arguments(p, single=False)
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("report", help="tables and plots for a run or compare directory")
    p.add_argument("path", help="a run directory or a compare directory")
    p.set_defaults(func=cmd_report)
    return parser
