"""Cost of IGU-LoRA's scoring: wall time per optimizer step and peak memory, against PEFT AdaLoRA and LoRA.

Timing is interleaved (A B C ... A B C ...) in one process so that machine drift cancels; each
method gets the same model, data and steps. Peak memory is measured per method in a fresh
subprocess (peak RSS on CPU, ``max_memory_allocated`` on CUDA). The allocator's own bookkeeping
(EMA, scores, masks; excluding probe passes) is timed inside ``allocator.step``.

    .venv/bin/python benchmarks/cost.py            # writes benchmarks/results/cost.json and cost.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
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

VARIANTS = {
    "lora": ("lora", {}),
    "adalora": ("adalora", {}),
    "igulora (stochastic, default)": ("igulora", {}),
    "igulora trapezoid N=4": ("igulora", {"estimator": "trapezoid", "ig_steps": 4}),
    "igulora trapezoid N=20": ("igulora", {"estimator": "trapezoid", "ig_steps": 20}),
    "igulora paper-eq6": ("igulora", {"estimator": "paper-eq6"}),
    "igulora coupled": ("igulora", {"estimator": "coupled"}),
    "igulora gradient": ("igulora", {"estimator": "gradient"}),
    "igulora stochastic score_every=4": ("igulora", {"score_every": 4}),
    "igulora stochastic score_every=8": ("igulora", {"score_every": 8}),
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


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(name, args):
    """Peak memory of training in a fresh process. CUDA: ``max_memory_allocated``. CPU: the peak of the
    resident set sampled every 2 ms during 4 training steps, minus the resident set just before them.
    Also the allocator's score-state bytes."""
    model, timed, opt, tok = setup(name, args.model, 20)
    data = batches(tok, 4, args.mem_batch_size, args.mem_max_length)
    one_step(model, timed, opt, data[0])  # first step allocates optimizer state
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base, peak, stop = _rss_mb(), [0.0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    for b in data[1:]:
        one_step(model, timed, opt, b)
    stop.set()
    thread.join()
    train_peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                  else max(peak[0], _rss_mb()) - base)
    state = getattr(timed.ctrl, "score_memory_bytes", None)
    print(json.dumps({"train_peak_mb": train_peak, "score_state_mb": state() / 2**20 if state else 0.0}))


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
             f"Memory: fresh process per method, {args.mem_batch_size} x {args.mem_max_length}-token batches; "
             "training peak = resident-set peak during 3 steps minus the resident set before them (CPU, sampled every "
             "2 ms) or max_memory_allocated (CUDA).",
             "",
             "| method | s / step (mean ± sd) | x AdaLoRA | x LoRA | bookkeeping share | training peak MB | "
             "x AdaLoRA mem | score state MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    t, m = results["timing"], results["memory"]
    for n in VARIANTS:
        lines.append(f"| {n} | {t[n]['step_s_mean']:.3f} ± {t[n]['step_s_stdev']:.3f} | {t[n]['x_adalora']:.2f} | "
                     f"{t[n]['x_lora']:.2f} | {100 * t[n]['bookkeeping_share']:.1f}% | {m[n]['train_peak_mb']:.0f} | "
                     f"{m[n]['train_peak_mb'] / max(m['adalora']['train_peak_mb'], 1e-9):.3f} | "
                     f"{m[n]['score_state_mb']:.2f} |")
    (res_dir / "cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    quiet_transformers()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps-per-round", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--memory-child", default=None)
    p.add_argument("--reuse-timing", action="store_true", help="reuse a saved timing part (after a failed memory part)")
    p.add_argument("--mem-batch-size", type=int, default=64, help="batch of the memory runs (activations dominate)")
    p.add_argument("--mem-max-length", type=int, default=128)
    args = p.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args)
        return
    partial = ROOT / "benchmarks" / "results" / "cost.timing.json"
    if args.reuse_timing and partial.is_file():
        results = {"timing": json.loads(partial.read_text())}
    else:
        results = {"timing": timing(args)}
        partial.write_text(json.dumps(results["timing"], indent=2))
    results["memory"] = memory(args)
    write(results, args)
    partial.unlink()


if __name__ == "__main__":
    main()
