"""Cost of IGU-LoRA's scoring: wall time per optimizer step and peak memory, against PEFT AdaLoRA and LoRA.

Timing is interleaved (A B C ... A B C ...) in one process so that machine drift cancels; each
method gets the same model, data and steps. The allocator's own bookkeeping (EMA, scores, masks;
excluding probe passes) is timed inside ``allocator.step``.

Peak memory is measured per method in a fresh subprocess, as the peak of the bytes held by live
torch tensors (what ``torch.cuda.max_memory_allocated`` reports on CUDA):

    peak = static + step_peak
    static    = parameters + buffers + optimizer state + allocator score state (exact, counted)
    step_peak = max over the 3 measured steps of the bytes allocated minus freed since the first of
                them began (gradients, activations, probe passes), summed from the allocation events
                of ``torch.profiler`` (``profile_memory=True``); deterministic, unlike the resident set

On CUDA, ``max_memory_allocated`` is reported instead.

    .venv/bin/python benchmarks/cost.py                  # writes benchmarks/results/cost.json and cost.md
    .venv/bin/python benchmarks/cost.py --only memory    # redo the memory part, keep the saved timing
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from igulora import IguLoraConfig
from igulora import allocator as alloc_mod
from igulora.data import (
    get_task,
    load_examples,
)
from igulora.methods import build_method
from igulora.models import load_model_and_tokenizer
from igulora.pipeline import make_collate
from igulora.runner import quiet_transformers

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {  # explicit score_every, so that a label does not depend on the library's defaults
    "lora": ("lora", {}),
    "adalora": ("adalora", {}),
    "igulora stochastic, every step": ("igulora", {"score_every": 1}),
    "igulora trapezoid N=4, every step": ("igulora", {"estimator": "trapezoid", "ig_steps": 4, "score_every": 1}),
    "igulora trapezoid N=20, every step": ("igulora", {"estimator": "trapezoid", "ig_steps": 20, "score_every": 1}),
    "igulora paper-eq6, every step": ("igulora", {"estimator": "paper-eq6", "score_every": 1}),
    "igulora coupled (default interval 1)": ("igulora", {"estimator": "coupled"}),
    "igulora gradient (default interval 1)": ("igulora", {"estimator": "gradient"}),
    "igulora stochastic, score_every=4": ("igulora", {"score_every": 4}),
    "igulora stochastic, score_every=8 (default)": ("igulora", {}),
    "igulora trapezoid N=20, score_every=8": ("igulora", {"estimator": "trapezoid", "ig_steps": 20}),
}


class Timed:
    """Wraps a controller; times step() and the probe passes inside it."""

    def __init__(self, ctrl):
        self.ctrl, self.step_s, self.probe_s = ctrl, 0.0, 0.0

    def step(self, batch):
        t0 = time.perf_counter()
        out = self.ctrl.step(batch)
        self.step_s += time.perf_counter() - t0
        return out


def setup(name, model_name, steps, seed=0):
    method, overrides = VARIANTS[name]
    torch.manual_seed(seed)
    model, tok = load_model_and_tokenizer(model_name, "seq_cls", num_labels=2)
    cfg = IguLoraConfig(init_r=8, target_r=4, tinit=0.1, tfinal=0.2, deltaT=10, modules_to_save=["classifier"],
                        task_type="SEQ_CLS", **overrides)
    peft_model, ctrl = build_method(model, method, cfg, steps)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    return peft_model, Timed(ctrl), opt, tok


def one_step(model, timed, opt, batch):
    t0 = time.perf_counter()
    model(**batch).loss.backward()
    opt.step()
    timed.step(batch)
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def batches(tok, n, bs, max_length):
    rows = load_examples("sst2", "train", max_samples=n * bs, seed=0)
    collate = make_collate(get_task("sst2"), tok, max_length)
    return [collate(rows[i * bs : (i + 1) * bs]) for i in range(n)]


def probe_timer():
    """Count time spent in probe passes (path_gradients)."""
    box = {"s": 0.0}
    original = alloc_mod.path_gradients

    def wrapped(*a, **k):
        t0 = time.perf_counter()
        out = original(*a, **k)
        box["s"] += time.perf_counter() - t0
        return out

    alloc_mod.path_gradients = wrapped
    return box


def timing(args):
    names = list(VARIANTS)
    total_steps = args.rounds * args.steps_per_round + args.warmup
    setups = {n: setup(n, args.model, total_steps) for n in names}
    data = batches(setups[names[0]][3], args.warmup + args.rounds * args.steps_per_round, args.batch_size,
                   args.max_length)
    box = probe_timer()
    per = {n: [] for n in names}
    bookkeeping = {n: 0.0 for n in names}
    for n in names:  # warm-up (not timed)
        model, timed, opt, _ = setups[n]
        for b in data[: args.warmup]:
            one_step(model, timed, opt, b)
    for r in range(args.rounds):
        for n in names:  # interleaved: A B C ... per round
            model, timed, opt, _ = setups[n]
            for b in data[args.warmup + r * args.steps_per_round : args.warmup + (r + 1) * args.steps_per_round]:
                box["s"] = 0.0
                s0 = timed.step_s
                per[n].append(one_step(model, timed, opt, b))
                bookkeeping[n] += (timed.step_s - s0) - box["s"]
    out = {}
    for n in names:
        mean = statistics.mean(per[n])
        out[n] = {"step_s_mean": mean, "step_s_median": statistics.median(per[n]),
                  "step_s_stdev": statistics.stdev(per[n]) if len(per[n]) > 1 else 0.0,
                  "bookkeeping_share": bookkeeping[n] / sum(per[n]), "steps_timed": len(per[n])}
    for n in names:
        out[n]["x_adalora"] = out[n]["step_s_mean"] / out["adalora"]["step_s_mean"]
        out[n]["x_lora"] = out[n]["step_s_mean"] / out["lora"]["step_s_mean"]
    return out


def static_bytes(model, opt, ctrl) -> int:
    """Parameters + buffers + optimizer state + allocator score state, counted once each."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers(),
              *(v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor))]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    state = getattr(ctrl, "score_memory_bytes", None)
    return total + (state() if state else 0)


def profiled_peak_bytes(fn) -> int:
    """Peak of (bytes allocated - bytes freed) by torch on CPU while ``fn()`` runs, from the profiler's
    allocation events in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def memory_child(name, args):
    """Peak memory of 3 training steps in a fresh process (after the step(s) that create the optimizer
    state and reach a scoring step): static bytes + the profiled step peak on CPU, ``max_memory_allocated`` on CUDA."""
    model, timed, opt, tok = setup(name, args.model, 20)
    # the measured 3 steps must include a scoring step: with score_every=k, step k is the first
    pre = max(1, getattr(getattr(timed.ctrl, "config", None), "score_interval", 1) - 2)
    data = batches(tok, 1, args.mem_batch_size, args.mem_max_length) * (pre + 3)  # one batch: same activations
    for b in data[:pre]:  # the first step allocates the optimizer state
        one_step(model, timed, opt, b)
    device = next(model.parameters()).device

    def steps():
        for b in data[pre:]:
            one_step(model, timed, opt, b)

    static = static_bytes(model, opt, timed.ctrl)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        steps()
        peak, step_peak = torch.cuda.max_memory_allocated(device), None
    else:
        step_peak = profiled_peak_bytes(steps)
        peak = static + step_peak
    state = getattr(timed.ctrl, "score_memory_bytes", None)
    print(json.dumps({"peak_mb": peak / 2**20, "static_mb": static / 2**20,
                      "step_peak_mb": None if step_peak is None else step_peak / 2**20,
                      "score_state_mb": state() / 2**20 if state else 0.0}))


def memory(args):
    out = {}
    for n in VARIANTS:
        cmd = [sys.executable, __file__, "--memory-child", n, "--model", args.model,
               "--mem-batch-size", str(args.mem_batch_size), "--mem-max-length", str(args.mem_max_length)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[n] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def write(results, args):
    res_dir = ROOT / "benchmarks" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    env = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
           "cpus": torch.get_num_threads(), "device": "cuda" if torch.cuda.is_available() else "cpu"}
    (res_dir / "cost.json").write_text(json.dumps({"settings": vars(args), "env": env, **results}, indent=2))
    lines = [f"Model {args.model}, SST-2 batches of {args.batch_size} x <= {args.max_length} tokens, "
             f"{args.rounds} interleaved rounds x {args.steps_per_round} steps, {env['device']} "
             f"({env['cpus']} threads), torch {env['torch']}.", "",
             f"Memory: fresh process per method, 3 steps of {args.mem_batch_size} x {args.mem_max_length}-token "
             "batches; peak = bytes of live torch tensors at their peak: static (parameters, buffers, optimizer "
             "and score state) + the step peak summed from torch.profiler's allocation events (CPU), or "
             "max_memory_allocated (CUDA).",
             "",
             "| method | s / step (mean ± sd) | x AdaLoRA | x LoRA | bookkeeping share | peak MB | x AdaLoRA mem | "
             "step peak MB | x AdaLoRA step peak | score state MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    t, m = results["timing"], results["memory"]
    ada = m["adalora"]
    for n in VARIANTS:
        sp = m[n].get("step_peak_mb")
        sp_cells = (f"{sp:.1f} | {sp / ada['step_peak_mb']:.3f}" if sp is not None else "– | –")
        lines.append(f"| {n} | {t[n]['step_s_mean']:.3f} ± {t[n]['step_s_stdev']:.3f} | {t[n]['x_adalora']:.2f} | "
                     f"{t[n]['x_lora']:.2f} | {100 * t[n]['bookkeeping_share']:.1f}% | {m[n]['peak_mb']:.1f} | "
                     f"{m[n]['peak_mb'] / ada['peak_mb']:.3f} | {sp_cells} | {m[n]['score_state_mb']:.2f} |")
    (res_dir / "cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    quiet_transformers()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps-per-round", type=int, default=8,
                   help="a multiple of score_every=8, so scoring steps are sampled at their true rate")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--memory-child", default=None)
    p.add_argument("--only", choices=("timing", "memory"), default=None,
                   help="redo one part and keep the other from benchmarks/results/cost.json")
    p.add_argument("--mem-batch-size", type=int, default=64, help="batch of the memory runs (activations dominate)")
    p.add_argument("--mem-max-length", type=int, default=128)
    args = p.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args)
        return
    saved_path = ROOT / "benchmarks" / "results" / "cost.json"
    partial = saved_path.with_suffix(".timing.json")  # kept if the memory part fails: rerun with --only memory
    source = partial if args.only == "memory" and partial.is_file() else saved_path
    saved = json.loads(source.read_text()) if args.only and source.is_file() else {}
    results = {"timing": saved["timing"] if args.only == "memory" and "timing" in saved else timing(args)}
    partial.write_text(json.dumps({**saved, "timing": results["timing"]}, indent=2))
    results["memory"] = (saved["memory"] if args.only == "timing" and "peak_mb" in saved.get("memory", {}).get(
        "adalora", {}) else memory(args))
    write(results, args)
    partial.unlink()


if __name__ == "__main__":
    main()
