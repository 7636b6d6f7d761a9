"""PEFT glue: build the AdaLoRA model, write the rank pattern, export plain LoRA or a merged model.

Saved adapters are ordinary PEFT AdaLoRA adapters (``rank_pattern`` written, so the saved
tensors are compact) that stock ``peft.PeftModel.from_pretrained`` loads.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from peft.utils import get_peft_model_state_dict
from torch import nn

from .allocator import IguAllocator
from .config import IguLoraConfig
from .schedule import BudgetSchedule
from .units import RankGroup, default_target_modules, find_rank_groups


@contextlib.contextmanager
def pruned_modules_saved() -> Iterator[None]:
    """Silence PEFT's "LoRA tensor(s) have invalid shape" warning while an adapter is written.

    A module whose every rank unit was pruned is saved with ``(0, d)`` tensors, which is what
    ``rank_pattern`` asks for and what stock ``peft`` loads; PEFT's check takes zero-sized tensors for
    unsharded ZeRO-3/FSDP shards and warns. Only that message is silenced, only inside the block.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*LoRA tensor\(s\) have invalid shape")
        yield


def _matches(name: str, targets: list[str] | str) -> bool:
    """PEFT's target matching: a regex matches the full name; a list entry matches it or its suffix."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith(f".{t}") for t in targets)


def resolve_target_modules(model: nn.Module, target_modules: list[str] | str | None) -> list[str] | str:
    """The target modules to adapt; raises ``ValueError`` when they match no module."""
    if target_modules is None:  # the attention/MLP linears inside numbered blocks, not heads or poolers
        leaves = "|".join(re.escape(n) for n in default_target_modules(model))
        targets: list[str] | str = rf".*\.\d+\.(?:.*\.)?(?:{leaves})"
    else:
        targets = target_modules
    if not any(_matches(n, targets) for n, _ in model.named_modules()):
        linears = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"target_modules={targets!r} matches no module of the model; its linear layers are named: "
            f"{', '.join(linears[:20])}"
        )
    return targets


def adalora_config(config: IguLoraConfig, target_modules: list[str] | str) -> AdaLoraConfig:
    """The PEFT ``AdaLoraConfig`` that carries our adapter (PEFT's own allocator is not used)."""
    if config.total_step is not None:
        total, tinit, tfinal, delta = config.schedule_steps()
    else:  # placeholder until the training glue sets total_step; rewritten by sync_peft_schedule
        total, tinit, tfinal, delta = 1, 0, 0, 1
    return AdaLoraConfig(
        init_r=config.init_r,
        target_r=max(0, int(round(config.target_r))),
        tinit=tinit,
        tfinal=tfinal,
        deltaT=delta,
        beta1=config.beta1,
        beta2=config.beta2,
        total_step=total,
        orth_reg_weight=config.orth_reg_weight,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        init_lora_weights=config.init_lora_weights,
        target_modules=target_modules,
        modules_to_save=config.peft_modules_to_save,
        task_type=config.task_type,
    )


def get_igu_model(
    model: nn.Module, config: IguLoraConfig, adapter_name: str = "default", **allocator_kwargs: Any
) -> tuple[nn.Module, IguAllocator]:
    """Wrap ``model`` with PEFT AdaLoRA layers and return ``(peft_model, allocator)``.

    ``peft_model`` is a ``peft.PeftModel``; ``allocator`` is the :class:`IguAllocator` that
    replaces PEFT's ``RankAllocator`` (call ``allocator.step(batch)`` once per optimizer step).
    """
    targets = resolve_target_modules(model, config.target_modules)
    resolved = IguLoraConfig.from_dict({**config.to_dict(), "target_modules": targets})
    peft_model = get_peft_model(model, adalora_config(resolved, targets), adapter_name=adapter_name)
    allocator = IguAllocator(peft_model, resolved, adapter=adapter_name, **allocator_kwargs)
    return peft_model, allocator


def sync_peft_schedule(peft_model: nn.Module, schedule: BudgetSchedule, adapter: str) -> None:
    """Write the resolved schedule into the PEFT config (saved as ``adapter_config.json``)."""
    cfg = getattr(peft_model, "peft_config", {}).get(adapter)
    if cfg is None:
        return
    cfg.total_step, cfg.tinit, cfg.tfinal, cfg.deltaT = (
        schedule.total_step, schedule.tinit, schedule.tfinal, schedule.deltaT,
    )


def write_rank_pattern(
    peft_model: nn.Module, groups: list[RankGroup], keep: dict[str, torch.Tensor], adapter: str
) -> None:
    """Set PEFT's ``rank_pattern`` (``lora_E`` name -> list of kept units), as PEFT's AdaLoRA does;
    ``save_pretrained`` then stores only the kept units."""
    cfg = getattr(peft_model, "peft_config", {}).get(adapter)
    if cfg is not None:
        cfg.rank_pattern = {g.rank_pattern_key: keep[g.name].tolist() for g in groups}


# --------------------------------------------------------------------------- export
def lora_state_from_adalora(
    peft_model: nn.Module, adapter: str = "default"
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Fold each AdaLoRA matrix into plain LoRA factors.

    ``delta_W = P[:, k] diag(lambda_k) Q[k, :] * s`` with ``s = scaling / (ranknum + 1e-5)`` over
    the kept units ``k`` becomes ``lora_B = P[:, k] * sqrt(|lambda_k| s)``,
    ``lora_A = sign(lambda_k) sqrt(|lambda_k| s) Q[k, :]``, with LoRA scaling 1 (``lora_alpha == r``).
    Returns the LoRA tensors (PEFT's saved key format) and ``{module name: rank}``.
    """
    state: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for g in find_rank_groups(peft_model, adapter):
        with torch.no_grad():
            lam = g.E.detach().view(-1)
            kept = torch.nonzero(lam != 0).view(-1)
            if kept.numel() == 0:
                continue
            s = g.module.scaling[adapter] / (g.module.ranknum[adapter] + 1e-5)
            mag = (lam[kept].abs() * s).sqrt()
            lora_b = g.B.detach()[:, kept] * mag
            lora_a = (torch.sign(lam[kept]) * mag).view(-1, 1) * g.A.detach()[kept]
        name = g.short_name
        ranks[name] = int(kept.numel())
        state[f"base_model.model.{name}.lora_A.weight"] = lora_a.contiguous()
        state[f"base_model.model.{name}.lora_B.weight"] = lora_b.contiguous()
    return state, ranks


def export_lora(peft_model: nn.Module, output_dir: str | Path, adapter: str = "default") -> dict[str, int]:
    """Write a plain PEFT LoRA adapter (per-module ranks in ``rank_pattern``, ``alpha_pattern`` equal
    to it, so every module's scaling is 1). Stock ``peft`` loads it with ``LoraConfig``."""
    from safetensors.torch import save_file

    lora_state, ranks = lora_state_from_adalora(peft_model, adapter)
    if not ranks:
        raise ValueError("every rank unit is pruned: there is no adapter to export")
    ada_cfg = peft_model.peft_config[adapter]
    with pruned_modules_saved():
        full = get_peft_model_state_dict(peft_model, adapter_name=adapter)
    extra = {k: v for k, v in full.items() if not re.search(r"\.lora_[ABE]$|\.lora_[ABE]\.|ranknum", k)}
    max_r = max(ranks.values())
    lora_cfg = LoraConfig(
        r=max_r,
        lora_alpha=max_r,
        target_modules=sorted(ranks),
        rank_pattern=dict(ranks),
        alpha_pattern=dict(ranks),
        lora_dropout=0.0,
        modules_to_save=list(ada_cfg.modules_to_save) if ada_cfg.modules_to_save else None,
        task_type=ada_cfg.task_type,
        base_model_name_or_path=ada_cfg.base_model_name_or_path,
    )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    lora_cfg.save_pretrained(str(out))
    tensors = {k: v.detach().cpu().contiguous() for k, v in {**extra, **lora_state}.items()}
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return ranks


def export_merged(peft_model: nn.Module, output_dir: str | Path, tokenizer: Any = None) -> None:
    """Merge the adapter into a copy of the base weights and ``save_pretrained`` the full model."""
    merged = copy.deepcopy(peft_model).merge_and_unload()
    merged.save_pretrained(str(output_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(output_dir))


def read_adapter_ranks(adapter_dir: str | Path) -> dict[str, int]:
    """Ranks per module of a saved AdaLoRA or LoRA adapter folder (from its config and tensors)."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    if cfg.get("peft_type") == "ADALORA" and cfg.get("rank_pattern"):
        return {k.removesuffix(".lora_E"): int(sum(v)) for k, v in cfg["rank_pattern"].items()}
    if cfg.get("rank_pattern"):
        return {k: int(v) for k, v in cfg["rank_pattern"].items()}
    from safetensors import safe_open

    ranks = {}
    with safe_open(str(Path(adapter_dir) / "adapter_model.safetensors"), "pt") as fh:
        for key in fh.keys():  # noqa: SIM118 - safetensors handle, not a dict
            m = re.match(r"base_model\.model\.(.+)\.lora_A(?:\.weight)?$", key)
            if m:
                ranks[m.group(1)] = fh.get_slice(key).get_shape()[0]
    return ranks
