"""PNG figures of results and the numbers they show: rank layout, allocation stability, plots.

No file is read here: :mod:`igulora.report` loads the result files and passes plain data in.
matplotlib is imported inside the functions and used through its Agg canvas (no pyplot, no
global backend change). Every PNG is saved under a temporary name in its folder, then renamed.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

DPI = 120


# ----------------------------------------------------------------------------- rank layout
def _split_module(name: str) -> tuple[int, str]:
    """``(layer, type)`` of a module name: the last numeric path component and the path after it."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            return int(parts[i]), ".".join(parts[i + 1 :]) or name
    return -1, name


def module_layout(names: list[str]) -> tuple[list[int], list[str]]:
    """Sorted unique layer indices and module types (first-seen order) of module names.

    The layer is the last numeric path component (``model.layers.12.self_attn.q_proj`` -> 12) and
    the type the path after it (``self_attn.q_proj``); a name without an index is layer -1 with
    the full name as its type.
    """
    layers: set[int] = set()
    types: dict[str, None] = {}
    for name in names:
        layer, kind = _split_module(name)
        layers.add(layer)
        types.setdefault(kind, None)
    return sorted(layers), list(types)


def rank_grid(rank_pattern: dict[str, float]) -> tuple[list[int], list[str], np.ndarray]:
    """``(layers, types, matrix)``: ranks laid out layers x types, NaN where no module exists."""
    layers, types = module_layout(list(rank_pattern))
    grid = np.full((len(layers), len(types)), np.nan)
    row, col = {v: i for i, v in enumerate(layers)}, {v: j for j, v in enumerate(types)}
    for name, rank in rank_pattern.items():
        layer, kind = _split_module(name)
        i, j = row[layer], col[kind]
        if not np.isnan(grid[i, j]):
            logging.getLogger(__name__).warning("modules share layer %d / %s: ranks summed", layer, kind)
        grid[i, j] = float(rank) + (0.0 if np.isnan(grid[i, j]) else grid[i, j])
    return layers, types, grid


# ----------------------------------------------------------------------------- stability
def _rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inv = np.unique(x, return_inverse=True)
    return (np.bincount(inv, weights=ranks) / np.bincount(inv))[inv]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two vectors; NaN when either is constant (correlation undefined)."""
    ra, rb = _rankdata(np.asarray(a, float)), _rankdata(np.asarray(b, float))
    if len(ra) < 2 or np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def rank_stability(patterns: list[dict[str, float]]) -> dict[str, float]:
    """Mean/std over seed pairs of the Spearman correlation and mean |Δrank| of final rank patterns.

    Each pair is compared on the modules both have. ``constant`` is 1.0 when every pair had an
    undefined correlation (constant ranks, as for LoRA), whose Spearman values are then NaN.
    """
    rho, mad = [], []
    for p, q in itertools.combinations(patterns, 2):
        keys = sorted(set(p) & set(q))
        if keys:
            a, b = np.array([p[k] for k in keys], float), np.array([q[k] for k in keys], float)
            rho.append(spearman(a, b))
            mad.append(float(np.mean(np.abs(a - b))))
    ok = [r for r in rho if np.isfinite(r)]
    nan = float("nan")
    return {"pairs": float(len(mad)), "constant": float(bool(mad) and not ok),
            "spearman_mean": float(np.mean(ok)) if ok else nan,
            "spearman_std": float(np.std(ok)) if ok else nan,
            "mad_mean": float(np.mean(mad)) if mad else nan, "mad_std": float(np.std(mad)) if mad else nan}


# ----------------------------------------------------------------------------- drawing
def _figure(width: float, height: float, layout: str | None = None) -> Any:
    """A new matplotlib ``Figure`` on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | Path, rect: tuple[float, float, float, float] | None = None) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically (temporary file in the same folder, then rename).

    A figure without a layout engine gets ``tight_layout`` (within ``rect`` when given).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout(rect=rect)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _colour(i: int) -> Any:
    """The i-th colour of the tab10 palette."""
    import matplotlib

    return matplotlib.colormaps["tab10"](i % 10)


def _heatmap(ax: Any, layers: list[int], types: list[str], grid: np.ndarray,
             vmin: float, vmax: float, title: str) -> Any:
    """Draw one layers x types rank heatmap on ``ax`` (numbers annotated when the grid is small)."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    img = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                    interpolation="nearest")
    ax.set_xticks(range(len(types)), [t.replace(".", ".\u200b") for t in types], rotation=35,
                  ha="right", fontsize=8)
    step = max(1, len(layers) // 24)
    ax.set_yticks(range(0, len(layers), step), [str(v) if v >= 0 else "–" for v in layers[::step]],
                  fontsize=8)
    ax.set_xlabel("module type")
    ax.set_ylabel("layer index")
    ax.set_title(title, fontsize=10)
    if grid.size <= 400:
        size = 8 if grid.size <= 120 else 6
        mid = (vmin + vmax) / 2
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                text = str(int(v)) if float(v).is_integer() else f"{v:.1f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=size,
                        color="white" if v < mid else "black")
    return img


def _heatmap_size(n_layers: int, n_panels: int) -> tuple[float, float]:
    """Figure size for ``n_panels`` heatmaps side by side."""
    return min(12.0, 2.5 + 4.2 * n_panels), float(np.clip(2.0 + 0.25 * n_layers, 4.0, 8.0))


def rank_heatmap_png(path: str | Path, layers: list[int], types: list[str], grid: np.ndarray,
                     title: str) -> Path:
    """Final ranks of one run as a layers x module types heatmap."""
    fig = _figure(*_heatmap_size(len(layers), 1))
    ax = fig.add_subplot()
    vmax = float(np.nanmax(grid)) if np.isfinite(grid).any() else 1.0
    img = _heatmap(ax, layers, types, grid, 0.0, max(vmax, 1.0), title)
    fig.colorbar(img, ax=ax, label="active rank")
    return save_png(fig, path)


def rank_heatmaps_png(path: str | Path, panels: list[tuple[str, list[int], list[str], np.ndarray]],
                      title: str) -> Path:
    """Several rank heatmaps side by side with one shared colour scale."""
    n_layers = max(len(p[1]) for p in panels)
    fig = _figure(*_heatmap_size(n_layers, len(panels)), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    vmax = max([float(np.nanmax(p[3])) for p in panels if np.isfinite(p[3]).any()] or [1.0])
    img = None
    for ax, (name, layers, types, grid) in zip(axes, panels):
        img = _heatmap(ax, layers, types, grid, 0.0, max(vmax, 1.0), name)
    fig.colorbar(img, ax=list(axes), label="active rank (mean over seeds)", shrink=0.9)
    fig.suptitle(title, fontsize=11)
    return save_png(fig, path)


def budget_curve_png(path: str | Path, schedule: dict | None, history: list[dict], title: str) -> Path:
    """Planned budget curve (``budget_schedule.json``) with markers at the masking events."""
    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    unit = (schedule or {}).get("unit", "params")
    if schedule and schedule.get("steps"):
        ax.plot(schedule["steps"], schedule["budget"], color="tab:blue", lw=1.5, label="planned budget")
    events = [h for h in history if "step" in h]
    if events:
        steps = [h["step"] for h in events]
        if any("budget" in h for h in events):
            ax.plot(steps, [h.get("budget", np.nan) for h in events], "o", ms=5, color="tab:orange",
                    label="masking event: target budget")
        if any("active_budget" in h for h in events):
            ax.plot(steps, [h.get("active_budget", np.nan) for h in events], "x", ms=6, color="tab:red",
                    label="masking event: active budget")
    _budget_axes(ax, unit, title)
    return save_png(fig, path)


def _budget_axes(ax: Any, unit: str, title: str) -> None:
    """Labels, grid and legend of a budget plot."""
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"budget ({unit})")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    from matplotlib.ticker import EngFormatter

    ax.yaxis.set_major_formatter(EngFormatter(sep=""))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no budget data", ha="center", va="center", transform=ax.transAxes)


def budget_curves_png(path: str | Path, curves: list[tuple[str, list[float], list[float]]], unit: str,
                      title: str, note: str = "", variants: list[str] | None = None) -> Path:
    """One budget line per variant (``curves``: label, steps, budget values); a label's colour is
    that of its index in ``variants`` (as in the other compare plots)."""
    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    for i, (label, steps, values) in enumerate(curves):
        k = variants.index(label) if variants and label in variants else i
        ax.plot(steps, values, "-o", ms=3, lw=1.5, color=_colour(k), label=label)
    _budget_axes(ax, unit, title)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="dimgrey", va="bottom")
    return save_png(fig, path, rect=(0, 0.04, 1, 1) if note else None)


def metric_vs_params_png(path: str | Path, points: dict[str, list[tuple[str, float, float]]],
                         ylabels: dict[str, str], variants: list[str], title: str) -> Path:
    """Primary metric vs trainable parameters: one subplot per task, one marker per run."""
    tasks = list(points)
    ncols = min(4, len(tasks))
    nrows = -(-len(tasks) // ncols)
    fig = _figure(min(12.0, 1.0 + 3.8 * ncols), min(6.0, 0.8 + 3.4 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colour = {v: _colour(i) for i, v in enumerate(variants)}
    markers = "osD^vP*X"
    for ax, task in zip(axes, tasks):
        for v in variants:
            xy = [(p / 1e6, y) for name, p, y in points[task] if name == v]
            if xy:
                xs, ys = zip(*xy)
                ax.scatter(xs, ys, color=colour[v], marker=markers[variants.index(v) % len(markers)],
                           s=36, alpha=0.85, label=v)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("trainable parameters (millions)")
        ax.set_ylabel(ylabels.get(task, "primary metric"))
        ax.grid(alpha=0.3)
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for ax in axes[1 : len(tasks)]:
        seen.update(zip(ax.get_legend_handles_labels()[1], ax.get_legend_handles_labels()[0]))
    axes[0].legend(seen.values(), seen.keys(), fontsize=7, loc="best")
    fig.suptitle(title, fontsize=11)
    return save_png(fig, path)


def rank_stability_png(path: str | Path, stats: list[dict], variants: list[str], tasks: list[str],
                       note: str = "") -> Path:
    """Grouped bars (tasks x variants) of mean pairwise Spearman and mean |Δrank| across seeds.

    ``stats`` holds dicts with ``variant``, ``task``, ``spearman_mean``/``_std`` (NaN: undefined,
    bar skipped) and ``mad_mean``/``_std``.
    """
    fig = _figure(min(12.0, 4.0 + 1.6 * len(tasks) * 2), 4.8)
    ax_rho, ax_mad = fig.subplots(1, 2)
    width = 0.8 / max(1, len(variants))
    for k, v in enumerate(variants):
        for ax, key in ((ax_rho, "spearman"), (ax_mad, "mad")):
            xs, ys, es = [], [], []
            for i, t in enumerate(tasks):
                st = next((s for s in stats if s["variant"] == v and s["task"] == t), None)
                if st is not None and np.isfinite(st[f"{key}_mean"]):
                    xs.append(i - 0.4 + width * (k + 0.5))
                    ys.append(st[f"{key}_mean"])
                    es.append(st[f"{key}_std"] if np.isfinite(st[f"{key}_std"]) else 0.0)
            if xs:
                bars = ax.bar(xs, ys, width, yerr=es, capsize=3, color=_colour(k), label=v)
                ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    for ax, ylabel, name in ((ax_rho, "mean pairwise Spearman ρ", "rank agreement across seeds"),
                             (ax_mad, "mean |Δ rank| (rank units per module)", "rank difference, seed pairs")):
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set_xlabel("task")
        ax.set_ylabel(ylabel)
        ax.set_title(name, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(top=ax.get_ylim()[1] * 1.2)  # room for the legend above the bars
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper center", ncol=len(variants))
    ax_rho.set_ylim(min(0.0, ax_rho.get_ylim()[0]), 1.25)
    ax_rho.axhline(0, color="black", lw=0.8)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="dimgrey", va="bottom")
    fig.suptitle("Allocation stability of final ranks across seeds (error bars: std over seed pairs)",
                 fontsize=11)
    return save_png(fig, path, rect=(0, 0.04, 1, 1) if note else None)


# ----------------------------------------------------------------------------- compare figures
def _mean_pattern(patterns: list[dict[str, float]]) -> dict[str, float]:
    """Per-module mean rank over several rank patterns."""
    keys = dict.fromkeys(k for p in patterns for k in p)
    return {k: float(np.mean([p[k] for p in patterns if k in p])) for k in keys}


def _by_variant(runs: list[dict], task: str, variants: list[str], key: str) -> dict[str, list[dict]]:
    """Runs of ``task`` that have ``key`` data, grouped by variant (in ``variants`` order)."""
    out = {v: [r for r in runs if r["task"] == task and r["variant"] == v and r.get(key)] for v in variants}
    return {v: rs for v, rs in out.items() if rs}


def compare_figures(
    out_dir: Path, runs: list[dict], s: dict
) -> tuple[dict[str, Path], list[dict], list[str]]:
    """Write the compare PNGs from ok ``runs`` (each with ``rank_pattern``/``history``/``schedule``
    loaded) and the :func:`igulora.report.summarise` dict ``s``.

    Returns ``(figures by name, stability rows, notes)``; a figure without data is skipped and noted.
    """
    variants, tasks, figs, notes = s["variants"], s["tasks"], {}, []
    runs = sorted(runs, key=lambda r: (not isinstance(r.get("seed"), int), r.get("seed") or 0))
    task = next((t for t in tasks if any(r["task"] == t and r.get("rank_pattern") for r in runs)), None)
    if task is not None:
        groups = _by_variant(runs, task, variants, "rank_pattern")
        panels = [(f"{v} (n={len(rs)})", *rank_grid(_mean_pattern([r["rank_pattern"] for r in rs])))
                  for v, rs in groups.items()]
        figs["rank_heatmaps"] = rank_heatmaps_png(out_dir / "rank_heatmaps.png", panels,
                                                  f"Final active rank per module, task {task}")
        hist = _by_variant(runs, task, variants, "history")
        events = {v: [h for h in rs[0]["history"] if "step" in h] for v, rs in hist.items()}
        curves = [(v, [h["step"] for h in ev], [h.get("active_budget", h.get("budget", np.nan)) for h in ev])
                  for v, ev in events.items() if ev]
        unit = next((r["schedule"].get("unit") for rs in hist.values() for r in rs
                     if isinstance(r.get("schedule"), dict) and r["schedule"].get("unit")), "params")
        missing = [v for v in groups if v not in hist]
        note = f"no allocation history (no budget curve): {', '.join(missing)}" if missing else ""
        if curves:
            figs["budget_curves"] = budget_curves_png(
                out_dir / "budget_curves.png", curves, unit,
                f"Active budget at masking events, task {task} (first seed)", note, variants)
        notes += [note] if note else []
    points = {t: [(r["variant"], float(r["trainable_params_end"]), float(r["primary"]) * s["scale"][t])
                  for r in runs if r["task"] == t and isinstance(r.get("trainable_params_end"), (int, float))]
              for t in tasks}
    points = {t: p for t, p in points.items() if p}
    if points:
        ylabels = {t: f"{s['metric'][t]}{' ×100' if s['scale'][t] != 1 else ''}" for t in points}
        figs["metric_vs_params"] = metric_vs_params_png(out_dir / "metric_vs_params.png", points, ylabels,
                                                        variants, "Primary metric vs trainable parameters")
    stats = []
    for v, t in itertools.product(variants, tasks):
        pats = [r["rank_pattern"] for r in runs
                if r["variant"] == v and r["task"] == t and r.get("rank_pattern")]
        if len(pats) >= 2:
            stats.append({"variant": v, "task": t, "seeds": len(pats), **rank_stability(pats)})
    const = sorted({st["variant"] for st in stats if st["constant"]})
    if const:
        notes.append(f"constant rank, Spearman undefined (skipped): {', '.join(const)}")
    if stats:
        figs["rank_stability"] = rank_stability_png(out_dir / "rank_stability.png", stats, variants, tasks,
                                                    notes[-1] if const else "")
    return figs, stats, notes
