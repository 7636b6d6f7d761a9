"""The three methods behind one small interface: ``lora``, ``adalora`` (PEFT's own allocator)
and ``igulora`` (ours). The training loop only sees a :class:`RankController`."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from torch import nn

from .config import IguLoraConfig
from .peft_backend import _matches, get_igu_model, resolve_target_modules
from .units import find_rank_groups, model_relative

METHODS = ("lora", "adalora", "igulora")


class RankController(Protocol):
    """What the training loop calls once per optimizer step (after ``optimizer.step()``)."""

    history: list[dict[str, Any]]

    def set_total_step(self, total_step: int) -> None: ...
    def step(self, batch: Any = None) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def rank_pattern(self) -> dict[str, int]: ...


class LoraController:
    """Plain LoRA: nothing to allocate; fixed rank ``r`` everywhere."""

    def __init__(self, peft_model: nn.Module, r: int) -> None:
        self.model, self.r, self.history = peft_model, r, []
        self.modules = [model_relative(n) for n, m in peft_model.named_modules()
                        if "default" in getattr(m, "lora_A", {})]

    def set_total_step(self, total_step: int) -> None:
        pass

    def step(self, batch: Any = None) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def rank_pattern(self) -> dict[str, int]:
        return {m: self.r for m in self.modules}


class AdaLoraController:
    """PEFT's AdaLoRA, unchanged: ``update_and_allocate(global_step)`` after each optimizer step."""

    def __init__(self, peft_model: nn.Module) -> None:
        self.model = peft_model
        self.cfg: AdaLoraConfig = peft_model.peft_config["default"]
        self.alloc = peft_model.base_model.rankallocator
        self.groups = find_rank_groups(peft_model)
        self.step_count = 0
        self.history: list[dict[str, Any]] = []

    def set_total_step(self, total_step: int) -> None:
        self.alloc.set_total_step(total_step)

    def step(self, batch: Any = None) -> dict[str, Any] | None:
        self.step_count += 1
        t = self.step_count
        budget, mask_ind = self.alloc.budget_schedule(t)
        self.model.base_model.update_and_allocate(t)
        final = self.cfg.total_step - self.cfg.tfinal
        if (mask_ind and t < final) or t == final:
            record = {"step": t, "budget": budget, "ranks": self.rank_pattern()}
            record["active_budget"] = sum(record["ranks"].values())
            self.history.append(record)
            return record
        return None

    def rank_pattern(self) -> dict[str, int]:
        pattern = self.cfg.rank_pattern or {}
        out = {}
        for g in self.groups:
            key = f"{g.short_name}.lora_E"
            bits = pattern.get(g.rank_pattern_key, pattern.get(key))
            out[g.short_name] = int(sum(bits)) if bits is not None else g.r
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step_count,
            "ipt": self.alloc.ipt, "exp_avg_ipt": self.alloc.exp_avg_ipt, "exp_avg_unc": self.alloc.exp_avg_unc,
            "rank_pattern": self.cfg.rank_pattern, "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = state["step"]
        self.alloc.ipt, self.alloc.exp_avg_ipt = state["ipt"], state["exp_avg_ipt"]
        self.alloc.exp_avg_unc = state["exp_avg_unc"]
        self.cfg.rank_pattern = state["rank_pattern"]
        self.history = list(state["history"])


def build_method(
    model: nn.Module, method: str, config: IguLoraConfig, total_step: int
) -> tuple[nn.Module, RankController]:
    """Wrap ``model`` for ``method`` at a matched budget and return ``(peft_model, controller)``.

    ``lora`` uses the rank whose parameter count matches IGU-LoRA's final budget
    (:func:`matched_lora_rank`) on the same modules, with ``lora_alpha`` set so that its update scale
    ``lora_alpha / r`` equals the SVD form's ``lora_alpha / init_r``; ``adalora`` is PEFT's AdaLoRA
    with the same ``init_r -> target_r`` schedule; ``igulora`` is :func:`igulora.get_igu_model`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    config = dataclasses.replace(config, total_step=total_step)
    if method == "igulora":
        return get_igu_model(model, config)
    targets = resolve_target_modules(model, config.target_modules)
    common = {
        "target_modules": targets, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
        "modules_to_save": config.peft_modules_to_save, "task_type": config.task_type,
    }
    if method == "lora":
        r = matched_lora_rank(model, targets, config)
        # same update scale as the SVD form (lora_alpha / init_r), so one learning rate suits all methods
        common["lora_alpha"] = config.lora_alpha * r / config.init_r
        peft_model = get_peft_model(model, LoraConfig(r=r, **common))
        return peft_model, LoraController(peft_model, r)
    _, tinit, tfinal, delta = config.schedule_steps()
    ada = AdaLoraConfig(
        init_r=config.init_r, target_r=max(0, int(round(config.target_r))), tinit=tinit, tfinal=tfinal, deltaT=delta,
        beta1=config.beta1, beta2=config.beta2, orth_reg_weight=config.orth_reg_weight, total_step=total_step,
        **common,
    )
    peft_model = get_peft_model(model, ada)
    return peft_model, AdaLoraController(peft_model)


def build_fixed_lora(model: nn.Module, ranks: dict[str, int], config: IguLoraConfig) -> tuple[nn.Module, Any]:
    """A freshly initialised LoRA adapter with a fixed per-module rank pattern (the two-stage option's
    second stage). Modules pruned to rank 0 get no adapter; every module keeps IGU-LoRA's scaling
    ``lora_alpha / init_r`` (``alpha_pattern = lora_alpha * r_m / init_r``)."""
    kept = {name: r for name, r in ranks.items() if r > 0}
    if not kept:
        raise ValueError("the first stage pruned every rank unit: nothing to retrain")
    scale = config.lora_alpha / config.init_r
    lora = LoraConfig(
        r=max(kept.values()), lora_alpha=scale * max(kept.values()), target_modules=sorted(kept),
        rank_pattern=dict(kept), alpha_pattern={n: scale * r for n, r in kept.items()},
        lora_dropout=config.lora_dropout, modules_to_save=config.peft_modules_to_save, task_type=config.task_type,
    )
    peft_model = get_peft_model(model, lora)
    controller = LoraController(peft_model, 0)
    controller.rank_pattern = lambda: dict(ranks)  # type: ignore[method-assign]
    return peft_model, controller


def matched_lora_rank(model: nn.Module, targets: list[str] | str, config: IguLoraConfig) -> int:
    """LoRA rank whose parameter count matches IGU-LoRA's final budget on the same modules.

    ``params`` budget ``B`` (``target_budget``, or ``target_r * sum(d_in + d_out + 1)``) gives
    ``r = round(B / sum(d_in + d_out))``; ``ranks`` budget gives ``r = round(B / n_modules)``.
    """
    shapes = [(m.in_features, m.out_features) for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and _matches(n, targets)]
    if config.budget_unit == "ranks":
        budget = config.target_budget if config.target_budget is not None else config.target_r * len(shapes)
        return max(1, round(budget / max(1, len(shapes))))
    per_unit = sum(i + o + 1 for i, o in shapes)
    budget = config.target_budget if config.target_budget is not None else config.target_r * per_unit
    return max(1, round(budget / max(1, sum(i + o for i, o in shapes))))


def adapter_param_count(peft_model: nn.Module, controller: RankController) -> int:
    """Adapter parameters of the active ranks: ``r (d_in + d_out)`` for LoRA, ``r (d_in + d_out + 1)``
    for the SVD form."""
    groups = {g.short_name: g for g in find_rank_groups(peft_model)}
    total = 0
    for name, r in controller.rank_pattern().items():
        if name in groups:
            total += r * (groups[name].d_in + groups[name].d_out + 1)
        else:
            module = peft_model.get_submodule(f"base_model.model.{name}")
            total += r * (module.in_features + module.out_features)
    return total


def head_param_count(peft_model: nn.Module) -> int:
    """Trainable parameters outside the adapters (e.g. a classification head in ``modules_to_save``)."""
    return sum(p.numel() for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n)


def trainable_state(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor (adapter factors and heads), full size, for checkpoints."""
    return {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
