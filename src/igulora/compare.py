"""``igulora compare``: methods x tasks x seeds at matched budgets, resumable, with tables and plots.

A variant is a method name with optional overrides of run options, separated by ``:``, e.g.
``igulora:estimator=gradient`` or ``igulora:score=product:ig_steps=4``. Each run lives in
``DIR/runs/<task>/<variant>/seed<seed>/``; finished runs are skipped, an interrupted one is
resumed from its checkpoint, and a failed one is recorded with its error without stopping the
others. ``DIR/results.json`` lists every run, including runs of earlier invocations in the same
folder; ``results.md``/``results.csv``/``report.md`` and the plots are written at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .io import atomic_write_json
from .runner import RunOptions, UsageError, is_finished

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    name: str
    method: str
    overrides: dict[str, Any]

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.name.replace(":", "__"))


def parse_variant(text: str) -> Variant:
    """``method[:key=value[:key=value...]]`` -> :class:`Variant` (values parsed as YAML scalars)."""
    import yaml

    from .methods import METHODS

    parts = [p.strip() for p in text.strip().split(":") if p.strip()]
    if not parts or parts[0] not in METHODS:
        raise UsageError(f"unknown method in variant {text!r}; methods are {', '.join(METHODS)}")
    overrides = {}
    for part in parts[1:]:
        if "=" not in part:
            raise UsageError(f"variant {text!r}: expected key=value after ':', got {part!r}")
        key, value = part.split("=", 1)
        overrides[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return Variant(text.strip(), parts[0], overrides)


def _split(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def plan(ns: argparse.Namespace) -> tuple[Path, list[tuple[str, Variant, int]], dict[str, Any]]:
    """The experiment's folder, its runs (task, variant, seed) and the shared options."""
    from .cli import load_config_file

    file_cfg = load_config_file(ns.config)
    tasks = _split(ns.tasks or file_cfg.pop("tasks", ""))
    methods = _split(ns.methods or file_cfg.pop("methods", "lora,adalora,igulora"))
    seeds_raw = _split(ns.seeds or file_cfg.pop("seeds", "0"))
    out = Path(ns.output_dir or file_cfg.pop("output_dir", "runs/compare"))
    for key in ("tasks", "methods", "seeds", "output_dir"):
        file_cfg.pop(key, None)
    if not tasks:
        raise UsageError("--tasks is required (comma-separated, e.g. sst2,rte)")
    try:
        seeds = [int(s) for s in seeds_raw]
    except ValueError as err:
        raise UsageError(f"--seeds must be comma-separated integers, got {','.join(seeds_raw)}") from err
    variants = [parse_variant(m) for m in methods]
    if len({v.name for v in variants}) != len(variants):
        raise UsageError("--methods lists the same variant twice")
    runs = [(t, v, s) for t in tasks for v in variants for s in seeds]
    return out, runs, file_cfg


def _run_dir(out: Path, task: str, variant: Variant, seed: int) -> Path:
    return out / "runs" / task / variant.slug / f"seed{seed}"


def _has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / "checkpoints" / "latest.json").is_file()


def _options(ns: argparse.Namespace, base: dict[str, Any], task: str, variant: Variant, seed: int,
             run_dir: Path) -> RunOptions:
    from .cli import build_options

    sub = argparse.Namespace(**{k: v for k, v in vars(ns).items()
                                if k not in ("tasks", "methods", "seeds", "output_dir", "config", "dry_run")})
    values = {**base, **variant.overrides, "task": task, "method": variant.method, "seed": seed,
              "output_dir": str(run_dir), "variant": variant.name}
    # variant overrides win over shared flags: drop flags the variant sets
    for key in variant.overrides:
        if getattr(sub, key, None) is not None:
            setattr(sub, key, None)
    opts = build_options(sub, values)
    has_checkpoint = _has_checkpoint(run_dir)
    return dataclasses.replace(opts, resume=has_checkpoint, overwrite=not has_checkpoint)


def _record(out: Path, run_dir: Path, task: str, variant: Variant, seed: int, error: str | None) -> dict[str, Any]:
    rec: dict[str, Any] = {"task": task, "method": variant.method, "variant": variant.name, "seed": seed,
                           "run_dir": str(run_dir.relative_to(out)), "status": "failed" if error else "ok",
                           "error": error}
    if error is None:
        m = json.loads((run_dir / "metrics.json").read_text())
        rec.update({k: m.get(k) for k in ("metrics", "primary_metric", "higher_is_better", "trainable_params_end",
                                          "train_time_s", "peak_memory_mb", "steps")})
        rec["primary"] = m["metrics"].get("primary")
    return rec


def _earlier_records(out: Path, planned: set[str]) -> list[dict[str, Any]]:
    """Records of runs in ``out/results.json`` from earlier invocations that this one does not plan
    (an experiment folder accumulates, e.g. core methods first, ablations later)."""
    path = out / "results.json"
    if not path.is_file():
        return []
    try:
        runs = json.loads(path.read_text()).get("runs", [])
    except ValueError:
        return []
    return [r for r in runs if r.get("run_dir") not in planned and (out / r.get("run_dir", "")).is_dir()]


def _print_plan(out: Path, runs: list[tuple[str, Variant, int]]) -> list[dict[str, Any]]:
    """``--dry-run``: list the planned runs and what a real invocation would do with each."""
    plan_rows = []
    for i, (task, variant, seed) in enumerate(runs, 1):
        run_dir = _run_dir(out, task, variant, seed)
        if is_finished(run_dir):
            status = "finished, would be skipped"
        elif _has_checkpoint(run_dir):
            status = "interrupted, would resume"
        else:
            status = "would run"
        print(f"[{i}/{len(runs)}] {task} {variant.name} seed {seed}: {status} ({run_dir})")
        plan_rows.append({"task": task, "variant": variant.name, "seed": seed, "run_dir": str(run_dir),
                          "status": status})
    print(f"dry run: {len(runs)} runs planned, all options valid; nothing was trained")
    return plan_rows


def run_compare(ns: argparse.Namespace) -> list[dict[str, Any]]:
    """Run (or skip) every planned run, then write the tables and plots. Returns the run records.

    Every run's options (and every task name) are validated before the first run starts; with
    ``ns.dry_run`` the plan is printed and nothing is trained or written."""
    from .data import get_task
    from .report import write_compare_report
    from .runner import run_training

    out, runs, base = plan(ns)
    for task in dict.fromkeys(t for t, _, _ in runs):
        get_task(task)  # an unknown task fails now, not after hours of other runs
    for i, (task, variant, seed) in enumerate(runs, 1):
        _options(ns, base, task, variant, seed, _run_dir(out, task, variant, seed))  # validate all
        logger.debug("planned run %d: %s %s %s", i, task, variant.name, seed)
    if getattr(ns, "dry_run", False):
        return _print_plan(out, runs)
    out.mkdir(parents=True, exist_ok=True)
    earlier = _earlier_records(out, {str(_run_dir(out, *run).relative_to(out)) for run in runs})
    records: list[dict[str, Any]] = []
    for i, (task, variant, seed) in enumerate(runs, 1):
        run_dir = _run_dir(out, task, variant, seed)
        label = f"[{i}/{len(runs)}] {task} {variant.name} seed {seed}"
        error = None
        if is_finished(run_dir):
            print(f"{label}: finished earlier, skipped")
        else:
            print(f"{label}: training ...", flush=True)
            try:
                run_training(_options(ns, base, task, variant, seed, run_dir))
            except Exception as err:  # one failed run must not stop the others
                error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                logger.debug("%s failed:\n%s", label, traceback.format_exc())
                print(f"{label}: FAILED: {error}")
            gc.collect()
        records.append(_record(out, run_dir, task, variant, seed, error))
        atomic_write_json(out / "results.json", {"runs": earlier + records, "planned": len(earlier) + len(runs)})
        if error is None:
            m = records[-1]
            print(f"{label}: {m['primary_metric']} = {m['primary']:.4f}, "
                  f"trainable params {m['trainable_params_end']:,},"
                  f" {m['train_time_s']:.0f} s")
    write_compare_report(out)
    print((out / "results.md").read_text())
    print(f"report: {out / 'report.md'}")
    return records
