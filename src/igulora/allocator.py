"""The IGU-LoRA rank allocator: owns the score state and turns scores + budget into masks.

Call :meth:`IguAllocator.step` once per optimizer step, after ``optimizer.step()`` and
before ``optimizer.zero_grad()`` (the training gradient in ``.grad`` is the ``u = 1`` node)::

    for batch in loader:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        record = allocator.step(batch)   # scores, masks, records; never touches .grad
        optimizer.zero_grad()

With gradient accumulation, call it once per optimizer step (not per micro-batch) and pass
the last micro-batch (or a list of micro-batches, whose probe gradients are averaged).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from . import scoring
from .config import IguLoraConfig
from .schedule import BudgetSchedule, Phase
from .units import RankGroup, adapter_parameters, find_rank_groups, path_point, set_coupled_scale

logger = logging.getLogger(__name__)

Batch = Mapping[str, Any]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


def default_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """``model(**batch).loss``: the task loss of a Hugging Face model whose batch holds labels."""
    out = model(**batch)
    loss = out["loss"] if isinstance(out, Mapping) else getattr(out, "loss", out)
    if not isinstance(loss, torch.Tensor):
        raise ValueError("the model returned no loss: put labels in the batch or pass loss_fn")
    return loss


def task_model(peft_model: nn.Module) -> nn.Module:
    """The injected transformers model under a ``PeftModel``: its forward gives the task loss
    without AdaLoRA's orthogonality term (which PEFT adds in ``AdaLoraModel.forward``)."""
    get = getattr(peft_model, "get_base_model", None)
    return get() if callable(get) else peft_model


def all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    """Average ``tensors`` in place across data-parallel ranks (no-op in one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


@dataclass
class StepRecord:
    """What one allocator step did."""

    step: int
    phase: str
    budget: int
    """Budget in force after this step (units of ``budget_unit``)."""
    masked: bool
    """Whether the mask was recomputed at this step."""
    scored: bool
    """Whether scores were updated at this step."""
    active_budget: int
    """Cost of the kept units (units of ``budget_unit``)."""
    active_params: int
    """Trainable adapter parameters of the kept units."""
    ranks: dict[str, int] = field(default_factory=dict)
    skipped_nonfinite: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class IguAllocator:
    """Integrated-Gradients, uncertainty-aware rank allocator over PEFT AdaLoRA layers.

    State (all float32, two tensors per adapter factor): the smoothed sensitivity ``I`` and
    the uncertainty ``U`` (:func:`igulora.scoring.ema_update`), plus one bool per rank unit
    (the mask). Memory: ``2 * 4 * sum_m r_m (d_in_m + d_out_m + 1)`` bytes, plus one
    transient float32 copy of the adapter during an update.
    """

    def __init__(
        self,
        peft_model: nn.Module,
        config: IguLoraConfig,
        adapter: str = "default",
        loss_fn: LossFn | None = None,
        reduce_fn: Callable[[list[torch.Tensor]], None] = all_reduce_mean,
    ) -> None:
        self.model = peft_model
        self.config = config
        self.adapter = adapter
        self.loss_fn = loss_fn or default_loss
        self.reduce_fn = reduce_fn
        self.groups: list[RankGroup] = find_rank_groups(peft_model, adapter)
        if not self.groups:
            raise ValueError("the model has no AdaLoRA layers: build it with igulora.get_igu_model")
        unit = config.budget_unit
        self.unit_costs = [g.unit_cost(unit) for g in self.groups]
        self.init_budget = sum(g.r * c for g, c in zip(self.groups, self.unit_costs))
        self.target_budget = self._target_budget()
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step_count = 0
        self.nonfinite_skips = 0
        self.history: list[dict[str, Any]] = []
        self.keep = {g.name: torch.ones(g.r, dtype=torch.bool) for g in self.groups}
        self.avg: dict[str, torch.Tensor] = {}
        self.unc: dict[str, torch.Tensor] = {}
        self.coupled_c: float | None = None
        self.schedule: BudgetSchedule | None = None
        if config.total_step is not None:
            self.set_total_step(config.total_step)

    # ------------------------------------------------------------------ set-up
    def _target_budget(self) -> int:
        cfg = self.config
        if cfg.target_budget is not None:
            target = cfg.target_budget
            if target > self.init_budget:
                raise ValueError(
                    f"target_budget={target} is above the initial budget {self.init_budget} "
                    f"({cfg.budget_unit}); lower target_budget or raise init_r"
                )
            return target
        if cfg.budget_unit == "ranks":
            return int(cfg.target_r * len(self.groups))
        return int(sum(cfg.target_r * c for c in self.unit_costs))

    def set_total_step(self, total_step: int) -> None:
        """Fix ``T`` (the training glue calls this from the trainer's step count)."""
        total, tinit, tfinal, delta = self.config.schedule_steps(total_step)
        self.config = self.config.with_total_step(total)
        self.schedule = BudgetSchedule(self.init_budget, self.target_budget, total, tinit, tfinal, delta)
        from .peft_backend import sync_peft_schedule

        sync_peft_schedule(self.model, self.schedule, self.adapter)
        if self.config.estimator == "coupled" and self.step_count == 0 and self.coupled_c is None:
            self.coupled_c = scoring.coupled_alpha(self.config.ig_steps, self.generator) ** 3
            set_coupled_scale(self.groups, self.coupled_c)

    @property
    def params(self) -> list[nn.Parameter]:
        return adapter_parameters(self.groups)

    def _names(self) -> list[str]:
        return [f"{g.name}.{k}" for g in self.groups for k in ("A", "E", "B")]

    # ------------------------------------------------------------------ the step
    def step(self, batch: Batch | list[Batch] | None = None) -> StepRecord:
        """One allocator update; call once per optimizer step, after ``optimizer.step()`` and
        before ``zero_grad()``.

        Args:
            batch: the (last) micro-batch of this step, or a list of micro-batches. Needed by the
                ``stochastic``, ``trapezoid`` and ``paper-eq6`` estimators (probe passes at
                interior path points); ignored by ``gradient`` and ``coupled``.
        Returns:
            A :class:`StepRecord` (budget, whether it masked, ranks per module).
        """
        if self.schedule is None:
            raise ValueError(
                "total_step is not set: call allocator.set_total_step(T) (the training glue does this)"
            )
        sched, cfg = self.schedule, self.config
        self.step_count += 1
        t = self.step_count
        scored = skipped = False
        masked = sched.is_mask_step(t)
        # score every k-th step; and never mask from empty scores (score_every larger than tinit)
        if sched.updates_scores(t) and (t % cfg.score_interval == 0 or (masked and not self.avg)):
            scored = True
            skipped = not self._update_scores(batch)
        phase = sched.phase(t)
        if masked:
            self._compute_mask(sched.budget(t))
        if masked or phase is Phase.FROZEN or cfg.reapply_mask:
            self._apply_mask()
        if cfg.estimator == "coupled":
            self.coupled_c = (
                scoring.coupled_alpha(cfg.ig_steps, self.generator) ** 3 if sched.updates_scores(t + 1) else None
            )
            set_coupled_scale(self.groups, self.coupled_c)
        record = self._record(t, phase, sched.budget(t), masked, scored, skipped)
        if masked:
            self.history.append(record.to_dict())
        return record

    def _record(self, t: int, phase: Phase, budget: int, masked: bool, scored: bool, skipped: bool) -> StepRecord:
        ranks = self.rank_pattern()
        active_budget = sum(ranks[g.short_name] * c for g, c in zip(self.groups, self.unit_costs))
        active_params = sum(ranks[g.short_name] * (g.d_in + g.d_out + 1) for g in self.groups)
        return StepRecord(t, phase.value, budget, masked, scored, active_budget, active_params, ranks, skipped)

    # ------------------------------------------------------------------ scores
    def sensitivities(self, batch: Batch | list[Batch] | None) -> list[torch.Tensor]:
        """Per-entry sensitivity ``s = |IG estimate|`` (float32) for every factor, in the order
        of :attr:`params`, by the configured estimator. Never changes parameters or ``.grad``."""
        cfg = self.config
        params = self.params
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        if cfg.estimator in ("gradient", "coupled"):
            return [scoring.gradient_sensitivity(p.detach(), g) for p, g in zip(params, grads)]
        if batch is None:
            raise ValueError(f"estimator={cfg.estimator!r} probes the IG path: pass the batch to allocator.step")
        if cfg.estimator == "trapezoid":
            rule = scoring.trapezoid_rule(cfg.ig_steps, cfg.ig_form)
        elif cfg.estimator == "stochastic":
            rule = scoring.stochastic_rule(cfg.ig_steps, cfg.ig_form, self.generator)
        else:
            rule = scoring.paper_eq6_rule(cfg.ig_steps, self.generator)
        batches = batch if isinstance(batch, list) else [batch]
        path = [path_gradients(self.model, self.groups, batches, u, self.loss_fn) for u in rule.nodes]
        per_node = [[node[i] for node in path] for i in range(len(params))]
        ig = [
            scoring.integrated_gradient(p.detach(), node_grads, rule, g)
            for p, node_grads, g in zip(params, per_node, grads)
        ]
        self.reduce_fn(ig)
        return [x.abs().float() for x in ig]

    def _update_scores(self, batch: Batch | list[Batch] | None) -> bool:
        sens = self.sensitivities(batch)
        if not all(bool(torch.isfinite(s).all()) for s in sens):
            self.nonfinite_skips += 1
            logger.warning(
                "step %d: non-finite sensitivity (NaN/inf loss or gradient); score update skipped (%d so far)",
                self.step_count, self.nonfinite_skips,
            )
            return False
        b1, b2 = self.config.beta1, self.config.beta2
        for name, s in zip(self._names(), sens):
            avg = self.avg.get(name, torch.zeros_like(s))
            unc = self.unc.get(name, torch.zeros_like(s))
            self.avg[name], self.unc[name] = scoring.ema_update(avg, unc, s, b1, b2)
        return True

    def unit_scores(self) -> dict[str, torch.Tensor]:
        """``{module name: (r,) unit scores}`` from the current score state."""
        cfg = self.config
        out = {}
        for g in self.groups:
            scores = {}
            for k, p in g.factors().items():
                name = f"{g.name}.{k}"
                if name in self.avg:
                    scores[k] = scoring.element_score(self.avg[name], self.unc[name], cfg.score, cfg.eps)
                else:
                    scores[k] = torch.zeros(p.shape, dtype=torch.float32)
            if cfg.lambda_term == "abs":
                scores["E"] = g.E.detach().abs().float()
            out[g.name] = scoring.unit_scores(scores["E"], scores["A"], scores["B"]).cpu()
        return out

    # ------------------------------------------------------------------ masks
    def _compute_mask(self, budget: int) -> None:
        per_group = self.unit_scores()
        scores = torch.cat([per_group[g.name] for g in self.groups])
        costs = torch.cat([torch.full((g.r,), c, dtype=torch.float64) for g, c in zip(self.groups, self.unit_costs)])
        keep = scoring.keep_mask(scores, costs, budget)
        offset = 0
        for g in self.groups:
            self.keep[g.name] = keep[offset : offset + g.r].clone()
            offset += g.r
        from .peft_backend import write_rank_pattern

        write_rank_pattern(self.model, self.groups, self.keep, self.adapter)

    @torch.no_grad()
    def _apply_mask(self) -> None:
        for g in self.groups:
            mask = self.keep[g.name].to(g.E.device).view(-1, 1)
            g.E.masked_fill_(~mask, 0.0)

    def rank_pattern(self) -> dict[str, int]:
        """``{module name: active rank}`` (names relative to the base model)."""
        return {g.short_name: int(self.keep[g.name].sum()) for g in self.groups}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: step, score EMAs, masks, RNG, counters."""
        return {
            "step": self.step_count,
            "avg": {k: v.clone() for k, v in self.avg.items()},
            "unc": {k: v.clone() for k, v in self.unc.items()},
            "keep": {k: v.clone() for k, v in self.keep.items()},
            "generator": self.generator.get_state(),
            "coupled_c": self.coupled_c,
            "nonfinite_skips": self.nonfinite_skips,
            "history": list(self.history),
            "total_step": self.schedule.total_step if self.schedule else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {g.name for g in self.groups} - set(state["keep"])
        if missing:
            raise ValueError(f"allocator state does not match the model: no mask for {sorted(missing)[:3]}")
        if state.get("total_step") is not None:
            self.set_total_step(int(state["total_step"]))
        self.step_count = int(state["step"])
        self.avg = {k: v.clone().float() for k, v in state["avg"].items()}
        self.unc = {k: v.clone().float() for k, v in state["unc"].items()}
        self.keep = {k: v.clone().bool() for k, v in state["keep"].items()}
        self.generator.set_state(state["generator"])
        self.coupled_c = state.get("coupled_c")
        self.nonfinite_skips = int(state.get("nonfinite_skips", 0))
        self.history = list(state.get("history", []))
        if self.config.estimator == "coupled":
            set_coupled_scale(self.groups, self.coupled_c)
        if any(not bool(k.all()) for k in self.keep.values()):
            from .peft_backend import write_rank_pattern

            write_rank_pattern(self.model, self.groups, self.keep, self.adapter)

    def score_memory_bytes(self) -> int:
        """Bytes held by the score state (``I`` and ``U``)."""
        return sum(t.numel() * t.element_size() for d in (self.avg, self.unc) for t in d.values())


def path_gradients(
    model: nn.Module,
    groups: list[RankGroup],
    batches: list[Batch],
    u: float,
    loss_fn: LossFn,
) -> list[torch.Tensor]:
    """``h(u)`` for every factor (order of :func:`adapter_parameters`), averaged over ``batches``.

    Uses ``torch.autograd.grad`` on the un-wrapped model, so ``.grad`` is never touched and no
    DDP gradient hook fires.
    """
    params = adapter_parameters(groups)
    live = [p for p in params if p.requires_grad]
    inner = task_model(model)
    total = [torch.zeros_like(p) for p in params]
    with torch.enable_grad(), path_point(groups, u):
        for b in batches:
            loss = loss_fn(inner, b)
            grads = iter(torch.autograd.grad(loss, live, allow_unused=True) if live else ())
            for i, p in enumerate(params):
                g = next(grads) if p.requires_grad else None
                if g is not None:
                    total[i] += g.detach()
    if len(batches) > 1:
        total = [g / len(batches) for g in total]
    return total
