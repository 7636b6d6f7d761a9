"""One readable reference training loop (the CLI uses it).

Per optimizer step: ``grad_accum`` micro-batches forward/backward (loss divided by
``grad_accum`` so the gradient is the mean over the effective batch), a finiteness check,
gradient clipping, ``optimizer.step()``, the LR schedule, then **one** rank-controller step
(IGU-LoRA's allocator, PEFT AdaLoRA's, or nothing for LoRA) while ``.grad`` still holds the
training gradient, then ``zero_grad()``.

Data order is a pure function of ``(seed, epoch)``, so a run resumed from a checkpoint at
step k sees exactly the batches an uninterrupted run sees. Checkpoints hold every trainable
tensor, optimizer, LR scheduler, rank-controller state and all RNG states, written
atomically; ``checkpoints/latest.json`` names the newest complete one.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import TrainArgs
from .io import append_jsonl, atomic_torch_save, atomic_write_json
from .methods import RankController, trainable_state

logger = logging.getLogger(__name__)

class TrainingStopped(RuntimeError):
    """Training stopped early (Ctrl-C or a non-finite loss with ``on_nonfinite='stop'``); a checkpoint
    was saved and the run can be resumed."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for ``--resume``."""


@dataclass
class TrainResult:
    steps: int
    train_time_s: float
    peak_memory_mb: float
    nonfinite_steps: int
    final_loss: float | None
    metrics: dict[str, float]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def micro_batches(n: int, batch_size: int, seed: int, start: int = 0) -> Iterator[list[int]]:
    """Index lists of micro-batches ``start, start + 1, ...``; each epoch is a permutation seeded by
    ``(seed, epoch)``, so position ``m`` always holds the same examples."""
    per_epoch = math.ceil(n / batch_size)
    m = start
    while True:
        epoch, pos = divmod(m, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
        while pos < per_epoch:
            yield perm[pos * batch_size : (pos + 1) * batch_size]
            pos += 1
            m += 1


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


@contextmanager
def _interrupt_flag() -> Iterator[dict[str, bool]]:
    """Turn Ctrl-C into a flag the loop checks at the end of each optimizer step."""
    flag = {"set": False}

    def handler(signum: int, frame: Any) -> None:
        flag["set"] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


class Checkpointer:
    """``<run>/checkpoints/step-XXXXXXXX.pt`` plus ``latest.json``, all written atomically."""

    def __init__(self, run_dir: str | Path, keep: int = 2) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.keep = keep

    def save(self, step: int, state: dict[str, Any]) -> Path:
        path = self.dir / f"step-{step:08d}.pt"
        atomic_torch_save(path, state)
        atomic_write_json(self.dir / "latest.json", {"step": step, "file": path.name})
        for old in sorted(self.dir.glob("step-*.pt"))[: -self.keep]:
            old.unlink()
        return path

    def latest(self) -> Path | None:
        pointer = self.dir / "latest.json"
        if not pointer.exists():
            return None
        import json

        try:
            name = json.loads(pointer.read_text())["file"]
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"corrupt checkpoint pointer {pointer}: {err}") from err
        return self.dir / name

    def load(self) -> dict[str, Any] | None:
        path = self.latest()
        if path is None:
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # torch raises many types for a damaged file
            raise CheckpointError(
                f"corrupt checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0][:120]}; "
                "delete it to resume from the previous one, or start over with --overwrite"
            ) from err


def _capture_rng() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _grads_finite(params: Sequence[nn.Parameter]) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)


def fit(
    model: nn.Module,
    controller: RankController,
    train_data: Sequence[Any],
    collate: Callable[[list[Any]], dict[str, Any]],
    args: TrainArgs,
    *,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    resume: bool = False,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    loss_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``model`` (a PEFT model) with ``controller`` for ``args.total_steps(len(train_data))`` steps.

    ``on_step`` receives a dict per optimizer step (step, total, loss, lr, budget, ...) for progress
    bars; ``loss_hook(step, loss)`` may replace the loss (tests inject NaNs with it).
    """
    run_dir = Path(args.output_dir)
    total = args.total_steps(len(train_data))
    controller.set_total_step(total)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * total), total)
    ckpt = Checkpointer(run_dir, args.keep_checkpoints)
    save_every = args.save_every or max(1, total // 10)
    state = ckpt.load() if resume else None
    step, nonfinite, elapsed = 0, 0, 0.0
    if state is not None:
        step, nonfinite, elapsed = _restore(state, model, optimizer, scheduler, controller, total)
        _truncate_log(run_dir / "train_log.jsonl", step)
        logger.info("resumed from %s at step %d/%d", ckpt.latest(), step, total)
    else:
        seed_everything(args.seed)

    def snapshot(at: int) -> dict[str, Any]:
        return {
            "step": at, "total": total, "model": trainable_state(model), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "controller": controller.state_dict(), "rng": _capture_rng(),
            "nonfinite": nonfinite, "elapsed": elapsed + time.perf_counter() - t0,
        }

    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.bf16 else nullcontext
    stream = micro_batches(len(train_data), args.batch_size, args.seed, start=step * args.grad_accum)
    t0 = time.perf_counter()
    loss_value = None
    model.train()
    with _interrupt_flag() as interrupted:
        while step < total:
            step += 1
            loss_sum = 0.0
            for _ in range(args.grad_accum):
                batch = _to_device(collate([train_data[i] for i in next(stream)]), device)
                with autocast():
                    loss = model(**batch).loss
                if loss_hook is not None:
                    loss = loss_hook(step, loss)
                (loss / args.grad_accum).backward()  # mean gradient over the effective batch
                loss_sum += loss.item() / args.grad_accum
            finite = math.isfinite(loss_sum) and _grads_finite(params)
            if finite:
                if args.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
            else:
                nonfinite += 1
                logger.warning("step %d: non-finite loss or gradient; update skipped (%d so far)", step, nonfinite)
            scheduler.step()
            record = controller.step(batch)  # once per optimizer step, .grad still holds the gradient
            optimizer.zero_grad(set_to_none=True)
            loss_value = loss_sum if finite else loss_value
            info = _step_info(step, total, loss_sum, scheduler, record, nonfinite)
            if step % args.log_every == 0 or step == total:
                append_jsonl(run_dir / "train_log.jsonl", info)
            if evaluate is not None and args.eval_every and step % args.eval_every == 0 and step < total:
                append_jsonl(run_dir / "train_log.jsonl", {"step": step, "eval": evaluate(model)})
                model.train()
            if on_step is not None:
                on_step(info)
            if not finite and args.on_nonfinite == "stop":
                ckpt.save(step, snapshot(step))
                raise TrainingStopped(f"non-finite loss or gradient at step {step} (on_nonfinite=stop)")
            if interrupted["set"]:
                ckpt.save(step, snapshot(step))
                raise TrainingStopped(f"interrupted at step {step}/{total}; checkpoint saved")
            if step % save_every == 0 or step == total:
                ckpt.save(step, snapshot(step))
    train_time = elapsed + time.perf_counter() - t0
    metrics = evaluate(model) if evaluate is not None else {}
    return TrainResult(step, train_time, peak_memory_mb(device), nonfinite, loss_value, metrics)


def _step_info(step: int, total: int, loss: float, scheduler: Any, record: Any, nonfinite: int) -> dict[str, Any]:
    info: dict[str, Any] = {"step": step, "total": total, "loss": loss, "lr": scheduler.get_last_lr()[0]}
    if record is not None:
        rec = record.to_dict() if hasattr(record, "to_dict") else dict(record)
        info.update({k: rec[k] for k in ("budget", "active_budget", "masked") if k in rec})
    info["nonfinite_steps"] = nonfinite
    return info


def _restore(state: dict[str, Any], model: nn.Module, optimizer: Any, scheduler: Any,
             controller: RankController, total: int) -> tuple[int, int, float]:
    if state.get("total") != total:
        raise CheckpointError(
            f"the checkpoint was made for {state.get('total')} steps but this run has {total}: "
            "resume with the same settings, or start over with --overwrite"
        )
    named = dict(model.named_parameters())
    missing = [k for k in state["model"] if k not in named]
    if missing:
        raise CheckpointError(f"the checkpoint does not fit this model (unknown tensor {missing[0]})")
    with torch.no_grad():
        for k, v in state["model"].items():
            named[k].copy_(v)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    controller.load_state_dict(state["controller"])
    _restore_rng(state["rng"])
    return int(state["step"]), int(state["nonfinite"]), float(state["elapsed"])


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint (a killed run may have logged further)."""
    if not path.exists():
        return
    import json

    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError):  # a line cut short by a kill
            continue
    from .io import atomic_write_text

    atomic_write_text(path, "".join(line + "\n" for line in keep))
