"""Reports from results files: markdown/CSV tables and PNG plots.

Reads only the JSON files the training code writes (``metrics.json``, ``rank_pattern.json``,
``allocation_history.jsonl``, ``budget_schedule.json``, ``config.json`` in a run directory;
``results.json`` in a compare directory) and never imports torch or transformers. Plots are
drawn by :mod:`igulora.plots`; every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from igulora import plots
from igulora.io import atomic_write_text
from igulora.plots import module_layout, rank_grid

__all__ = ["module_layout", "rank_grid", "rank_table_markdown", "write_compare_report",
           "write_compare_tables", "write_report", "write_run_report"]

log = logging.getLogger(__name__)

_RAW_METRIC_WORDS = ("perplexity", "ppl", "loss")
"""Metrics containing one of these words are never scaled by 100."""


# ----------------------------------------------------------------------------- reading
def _read_json(path: Path) -> Any:
    """Parsed JSON of ``path``, or ``None`` when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


def _read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file; a torn line (killed writer) is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in filter(str.strip, path.read_text().splitlines()):
        try:
            records.append(json.loads(line))
        except ValueError:
            log.warning("skipping a bad line in %s", path)
    return [r for r in records if isinstance(r, dict)]


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """The result files of one run directory (missing files read as ``None`` / ``[]``)."""
    d = Path(run_dir)
    return {"metrics": _read_json(d / "metrics.json") or {}, "rank_pattern": _read_json(d / "rank_pattern.json") or {},
            "history": _read_jsonl(d / "allocation_history.jsonl"), "config": _read_json(d / "config.json") or {},
            "schedule": _read_json(d / "budget_schedule.json")}


def _num(x: float) -> str:
    """An integer when ``x`` is whole, else one decimal."""
    return str(round(x)) if float(x).is_integer() else f"{x:.1f}"


def _md(text: Any) -> str:
    """Text made safe for one markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def rank_table_markdown(rank_pattern: dict[str, int], init_r: int | None = None) -> str:
    """Markdown table of final ranks: layers as rows, module types as columns, with totals.

    With ``init_r`` a line under the table gives the active share of the initial rank budget.
    """
    if not rank_pattern:
        return "_no rank pattern_\n"
    layers, types, grid = rank_grid(rank_pattern)
    head = "| layer | " + " | ".join(_md(t) for t in types) + " | total |"
    lines = [head, "|---:|" + "---:|" * (len(types) + 1)]
    for i, layer in enumerate(layers):
        cells = ["–" if np.isnan(v) else _num(v) for v in grid[i]]
        label = str(layer) if layer >= 0 else "–"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {_num(np.nansum(grid[i]))} |")
    col_tot = [_num(np.nansum(grid[:, j])) for j in range(len(types))]
    total = float(np.nansum(grid))
    lines.append("| **total** | " + " | ".join(col_tot) + f" | **{_num(total)}** |")
    if init_r:
        n, full = len(rank_pattern), init_r * len(rank_pattern)
        share = f"{_num(total)} of {full} ({100 * total / full:.1f} %)"
        lines += ["", f"Active rank {share} over {n} modules, init_r = {init_r}."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- run report
def _init_r(config: dict) -> int | None:
    """``init_r`` from a run's config when it is there (optional)."""
    for source in (config.get("igulora"), config):
        if isinstance(source, dict) and isinstance(source.get("init_r"), int):
            return source["init_r"]
    return None


_RUN_KEYS = ("task", "method", "variant", "seed", "model", "status", "primary_metric")
_COST_KEYS = ("train_time_s", "peak_memory_mb", "steps", "trainable_params_start", "trainable_params_end",
              "adapter_params_end")


def _metrics_markdown(m: dict) -> str:
    """Two-column table of a ``metrics.json`` (its nested ``metrics`` dict inlined)."""
    items = [(k, m[k]) for k in _RUN_KEYS if k in m] + list((m.get("metrics") or {}).items())
    items += [(k, m[k]) for k in _COST_KEYS if k in m]
    cells = [f"| {_md(k)} | {f'{v:.4g}' if isinstance(v, float) else _md(v)} |" for k, v in items]
    return "\n".join(["| key | value |", "|---|---:|", *cells]) + "\n"


def write_run_report(run_dir: str | Path) -> list[Path]:
    """Write ``rank_heatmap.png``, ``budget_curve.png`` and ``report.md`` into a run directory.

    A plot whose data is missing (no rank pattern; no schedule and no allocation history) is
    skipped and the report says so. Returns the written paths.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    m = run["metrics"]
    title = f"{m.get('task', '?')} / {m.get('variant') or m.get('method', '?')} / seed {m.get('seed', '?')}"
    written: list[Path] = []
    parts = [f"# Run report: {_md(title)}", "", "## Metrics", "", _metrics_markdown(m)]
    parts += ["## Final rank allocation", ""]
    if run["rank_pattern"]:
        layers, types, grid = rank_grid(run["rank_pattern"])
        written.append(plots.rank_heatmap_png(run_dir / "rank_heatmap.png", layers, types, grid,
                                              f"Final active rank per module\n{title}"))
        parts += ["![final rank heatmap](rank_heatmap.png)", ""]
        parts += [rank_table_markdown(run["rank_pattern"], _init_r(run["config"]))]
    else:
        parts += ["_no rank_pattern.json: heatmap skipped_", ""]
    parts += ["## Budget", ""]
    if run["schedule"] or run["history"]:
        written.append(plots.budget_curve_png(run_dir / "budget_curve.png", run["schedule"], run["history"],
                                              f"Rank budget: {title}"))
        parts += ["![budget curve](budget_curve.png)", ""]
    else:
        parts += ["_no budget_schedule.json and no allocation history: budget curve skipped_", ""]
    report = run_dir / "report.md"
    atomic_write_text(report, "\n".join(parts).rstrip() + "\n")
    log.info("wrote run report %s", report)
    return [*written, report]


# ----------------------------------------------------------------------------- compare tables
def _runs(compare_dir: Path) -> list[dict]:
    """Runs of a ``results.json`` with ``variant`` always filled in."""
    data = _read_json(compare_dir / "results.json")
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ValueError(f"{compare_dir / 'results.json'} has no 'runs' list")
    runs = [dict(r) for r in data["runs"] if isinstance(r, dict)]
    for r in runs:
        r["variant"] = r.get("variant") or r.get("method") or "?"
        r["task"] = r.get("task") or "?"
    return runs


def _ok(run: dict) -> bool:
    """An ``ok`` run that has a primary value."""
    return run.get("status") == "ok" and isinstance(run.get("primary"), (int, float))


def _task_scale(metric: str, values: list[float]) -> float:
    """100 for bounded metrics (all values in [-1, 1], not a loss/perplexity), else 1."""
    if any(w in metric.lower() for w in _RAW_METRIC_WORDS) or not values:
        return 1.0
    return 100.0 if all(-1.0 <= v <= 1.0 for v in values) else 1.0


def _variant_mean(runs: list[dict], variant: str, key: str) -> float | None:
    """Mean of a numeric field over the ok runs of a variant (``None`` without values)."""
    vals = [r[key] for r in runs if r.get("status") == "ok" and r["variant"] == variant
            and isinstance(r.get(key), (int, float))]
    return float(np.mean(vals)) if vals else None


def summarise(runs: list[dict]) -> dict[str, Any]:
    """Per (variant, task) mean/std/n of the (scaled) primary metric over ok runs, plus per-variant
    averages, parameter counts and train times."""
    from .data import list_tasks

    known = {t: i for i, t in enumerate(list_tasks())}
    tasks = sorted(dict.fromkeys(r["task"] for r in runs), key=lambda t: known.get(t, len(known)))  # stable order
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    ok = [r for r in runs if _ok(r)]
    metric, hib, scale = {}, {}, {}
    for t in tasks:
        first = next((r for r in runs if r["task"] == t), {})
        metric[t] = first.get("primary_metric") or "primary"
        hib[t] = bool(first.get("higher_is_better", True))
        scale[t] = _task_scale(metric[t], [float(r["primary"]) for r in ok if r["task"] == t])
    cells: dict[str, dict[str, dict]] = {v: {} for v in variants}
    for v, t in itertools.product(variants, tasks):
        vals = [float(r["primary"]) * scale[t] for r in ok if r["variant"] == v and r["task"] == t]
        if vals:
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
            cells[v][t] = {"mean": float(np.mean(vals)), "std": std, "n": len(vals)}
    same_dir = len(set(hib.values())) <= 1
    avg = {v: float(np.mean([cells[v][t]["mean"] for t in tasks]))
           for v in variants if same_dir and tasks and all(t in cells[v] for t in tasks)}
    params = {v: m for v in variants if (m := _variant_mean(runs, v, "trainable_params_end")) is not None}
    time_s = {v: m for v in variants if (m := _variant_mean(runs, v, "train_time_s")) is not None}
    failed = [r for r in runs if r.get("status") != "ok"]
    counts = [c["n"] for v in variants for c in cells[v].values()]
    usual_n = max(set(counts), key=lambda n: (counts.count(n), n)) if counts else 0
    return {"tasks": tasks, "variants": variants, "metric": metric, "higher_is_better": hib,
            "scale": scale, "cells": cells, "avg": avg, "avg_higher_is_better": all(hib.values()),
            "params": params, "time_s": time_s, "failed": failed, "same_direction": same_dir,
            "usual_n": usual_n}


def human_count(n: float) -> str:
    """A parameter count made short: 330000 -> ``0.33M``, 12500 -> ``12.5K``."""
    if abs(n) >= 1e9:
        return f"{n / 1e9:.2f}B"
    if abs(n) >= 1e5:
        return f"{n / 1e6:.2f}M"
    if abs(n) >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(round(n))


def _best(values: dict[str, float], higher: bool) -> set[str]:
    """Keys whose value, at the displayed precision, is the best one."""
    if not values:
        return set()
    rounded = {k: round(v, 2) for k, v in values.items()}
    target = max(rounded.values()) if higher else min(rounded.values())
    return {k for k, v in rounded.items() if v == target}


def _table_markdown(s: dict) -> str:
    """The paper-layout table: variants x (tasks, Avg, Params, Time (s))."""
    tasks, variants, cells = s["tasks"], s["variants"], s["cells"]
    best = {t: _best({v: cells[v][t]["mean"] for v in variants if t in cells[v]}, s["higher_is_better"][t])
            for t in tasks}
    best_avg = _best(s["avg"], s["avg_higher_is_better"])
    lines = ["| Method | " + " | ".join(_md(t) for t in tasks) + " | Avg | Params | Time (s) |",
             "|---|" + "---:|" * (len(tasks) + 3)]
    for v in variants:
        row = []
        for t in tasks:
            c = cells[v].get(t)
            if c is None:
                row.append("–")
                continue
            text = f"{c['mean']:.2f}" + ("" if np.isnan(c["std"]) else f" ± {c['std']:.2f}")
            text = f"**{text}**" if v in best[t] else text
            row.append(text + (f" (n={c['n']})" if c["n"] != s["usual_n"] else ""))
        avg = f"{s['avg'][v]:.2f}" if v in s["avg"] else "–"
        row.append(f"**{avg}**" if v in best_avg else avg)
        row.append(human_count(s["params"][v]) if v in s["params"] else "–")
        row.append(f"{s['time_s'][v]:.1f}" if v in s["time_s"] else "–")
        lines.append(f"| {_md(v)} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _params_markdown(runs: list[dict], s: dict) -> str:
    """Trainable parameters at the end, mean per (variant, task): budgets are matched per task, and
    a rank-counted budget (AdaLoRA) can end with more or fewer parameters than a parameter budget."""
    tasks, variants = s["tasks"], s["variants"]
    lines = ["Trainable parameters at the end of training (mean over seeds):", "",
             "| Method | " + " | ".join(_md(t) for t in tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for v in variants:
        row = []
        for t in tasks:
            vals = [r["trainable_params_end"] for r in runs if _ok(r) and r["variant"] == v and r["task"] == t
                    and isinstance(r.get("trainable_params_end"), (int, float))]
            m = float(np.mean(vals)) if vals else None
            row.append("–" if m is None else f"{m / 1e3:.1f}K" if m < 1e6 else f"{m / 1e6:.3f}M")
        lines.append(f"| {_md(v)} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _table_notes(s: dict) -> str:
    """Notes under the table: metrics, scaling, std convention, seeds, bold, Avg."""
    desc = []
    for t in s["tasks"]:
        arrow = "↑" if s["higher_is_better"][t] else "↓"
        desc.append(f"{t}: {s['metric'][t]}{' ×100' if s['scale'][t] != 1 else ''} ({arrow})")
    notes = [
        f"Metrics: {'; '.join(desc)}.",
        "Metrics bounded in [-1, 1] (accuracy, F1, MCC, Pearson, ...) are shown ×100; perplexity as is.",
        f"Cells: mean ± sample std (ddof=1) over the seeds of ok runs ({s['usual_n']} unless a cell says "
        + "(n=k)). Best per column in **bold**.",
        "Avg: mean of the task means (only for methods with every task). Params: mean trainable parameters "
        + "at the end of training. Time (s): mean training time per run.",
    ]
    if not s["same_direction"]:
        notes.append("Avg omitted: tasks mix higher- and lower-is-better metrics.")
    return "\n".join(f"- {n}" for n in notes) + "\n"


def _failed_markdown(failed: list[dict]) -> str:
    """Bulleted list of failed runs with the first line of their error."""
    if not failed:
        return ""
    lines = [f"### Failed runs ({len(failed)})", ""]
    for r in failed:
        err = str(r.get("error") or "no error message").strip().splitlines() or ["no error message"]
        msg = err[0][:300].replace("`", "'")
        lines.append(f"- {r['task']} / {r['variant']} / seed {r.get('seed', '?')} "
                     f"({r.get('status', '?')}): `{msg}`")
    return "\n".join(lines) + "\n"


def _results_csv(runs: list[dict]) -> str:
    """CSV text with one row per run (metrics flattened as ``metric.<name>`` columns)."""
    base = ["task", "method", "variant", "seed", "status", "primary_metric", "primary", "higher_is_better",
            "trainable_params_end", "train_time_s", "run_dir", "error"]
    mkeys = sorted({k for r in runs for k in (r.get("metrics") or {})})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(base + [f"metric.{k}" for k in mkeys])
    for r in runs:
        m = r.get("metrics") or {}
        row = ["" if r.get(k) is None else r.get(k) for k in base]
        writer.writerow(row + ["" if m.get(k) is None else m.get(k) for k in mkeys])
    return buf.getvalue()


def write_compare_tables(compare_dir: str | Path) -> dict[str, Any]:
    """Write ``results.csv`` (one row per run) and ``results.md`` (the paper-layout table).

    Returns the :func:`summarise` dict plus ``csv`` and ``md`` (paths) and ``markdown`` (the text
    of ``results.md`` without its heading).
    """
    compare_dir = Path(compare_dir)
    runs = _runs(compare_dir)
    s = summarise(runs)
    body = _table_markdown(s) + "\n" + _table_notes(s) + "\n" + _params_markdown(runs, s)
    if s["failed"]:
        body += "\n" + _failed_markdown(s["failed"])
    csv_path, md_path = compare_dir / "results.csv", compare_dir / "results.md"
    atomic_write_text(csv_path, _results_csv(runs))
    atomic_write_text(md_path, f"# Results: {compare_dir.name}\n\n{body}")
    log.info("wrote %s and %s", csv_path, md_path)
    return {**s, "csv": csv_path, "md": md_path, "markdown": body}


_FIGURES = (
    ("rank_heatmaps", "Final rank allocation",
     "Final active rank per module (layers x module types), first task, averaged over seeds; shared colour "
     + "scale."),
    ("budget_curves", "Rank budget", "Active budget at each masking event, first task, first seed."),
    ("metric_vs_params", "Metric vs trainable parameters", "One marker per run, one panel per task."),
    ("rank_stability", "Allocation stability across seeds",
     "Agreement of final per-module ranks between seeds: mean pairwise Spearman correlation and mean "
     + "absolute rank difference."),
)


def _stability_markdown(stats: list[dict]) -> str:
    """Stability table: one row per (variant, task) with at least two seeds."""
    if not stats:
        return "_fewer than two seeds with a rank pattern everywhere: no stability table_\n"
    lines = ["| Method | Task | Seeds | Spearman ρ (mean ± std) | mean abs Δrank (mean ± std) |",
             "|---|---|---:|---:|---:|"]
    for st in stats:
        rho = f"{st['spearman_mean']:.3f} ± {st['spearman_std']:.3f}"
        rho = "n/a (constant rank)" if st["constant"] else "–" if np.isnan(st["spearman_mean"]) else rho
        lines.append(f"| {_md(st['variant'])} | {_md(st['task'])} | {st['seeds']} | {rho} | "
                     f"{st['mad_mean']:.2f} ± {st['mad_std']:.2f} |")
    return "\n".join(lines) + "\n"


def write_compare_report(compare_dir: str | Path) -> list[Path]:
    """Write the compare tables (:func:`write_compare_tables`), the compare PNGs and ``report.md``.

    Returns the written paths (``results.csv``, ``results.md``, the PNGs, ``report.md``).
    """
    compare_dir = Path(compare_dir)
    tables = write_compare_tables(compare_dir)
    ok = []
    for r in _runs(compare_dir):
        if _ok(r):
            run = load_run(compare_dir / r["run_dir"]) if r.get("run_dir") else {}
            ok.append({**r, **{k: run.get(k) for k in ("rank_pattern", "history", "schedule")}})
    figs, stats, notes = plots.compare_figures(compare_dir, ok, tables)
    parts = [f"# Comparison report: {_md(compare_dir.name)}", "", "## Results", "", tables["markdown"]]
    for name, heading, caption in _FIGURES:
        parts += [f"## {heading}", ""]
        if name in figs:
            parts += [f"![{heading}]({name}.png)", "", caption, ""]
        else:
            parts += [f"_{name}.png skipped: no data for it in the run directories_", ""]
        if name == "rank_stability":
            parts += [_stability_markdown(stats)]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    report = compare_dir / "report.md"
    atomic_write_text(report, "\n".join(parts).rstrip() + "\n")
    log.info("wrote compare report %s", report)
    return [tables["csv"], tables["md"], *figs.values(), report]


def write_report(path: str | Path) -> list[Path]:
    """Write the report of a compare directory (``results.json``) or a run directory (``metrics.json``)."""
    path = Path(path)
    if (path / "results.json").is_file():
        return write_compare_report(path)
    if (path / "metrics.json").is_file():
        return write_run_report(path)
    raise ValueError(f"{path} is neither a compare dir (results.json) nor a run dir (metrics.json)")
