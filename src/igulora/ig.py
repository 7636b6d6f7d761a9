"""Stand-alone parameter-space Integrated Gradients of an adapter (for analysis and tests)."""

from __future__ import annotations

import torch
from torch import nn

from . import scoring
from .allocator import Batch, LossFn, default_loss, path_gradients
from .units import adapter_parameters, find_rank_groups


def integrated_gradients(
    peft_model: nn.Module,
    batch: Batch | list[Batch],
    ig_steps: int = 20,
    estimator: str = "trapezoid",
    *,
    ig_form: str = "u",
    loss_fn: LossFn | None = None,
    adapter: str = "default",
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Signed per-entry IG of every adapter factor, keyed by parameter name.

    ``IG_j = theta_j * int_0^1 g_j(alpha) d alpha`` along ``alpha * theta`` from the switched-off
    adapter; ``sum_j IG_j ~= L(theta) - L(0)`` (completeness). ``estimator`` is ``trapezoid``
    (N intervals, ``ig_form`` ``u`` or ``alpha``), ``stochastic`` (one random interior node),
    ``paper-eq6`` or ``gradient`` (``theta * dL/dtheta``). The ``u = 1`` node is measured here
    with its own pass. The model runs in its current mode (call ``.eval()`` for a deterministic
    result). Parameters and every ``.grad`` are left bit-identical.
    """
    if estimator == "coupled":
        raise ValueError("estimator='coupled' couples scoring to the training pass; it has no stand-alone IG")
    groups = find_rank_groups(peft_model, adapter)
    if not groups:
        raise ValueError("the model has no AdaLoRA layers")
    loss_fn = loss_fn or default_loss
    gen = generator or torch.Generator().manual_seed(0)
    batches = batch if isinstance(batch, list) else [batch]
    end = path_gradients(peft_model, groups, batches, 1.0, loss_fn)
    if estimator == "gradient":
        rule = scoring.Rule((), (), 1.0)
    elif estimator == "trapezoid":
        rule = scoring.trapezoid_rule(ig_steps, ig_form)
    elif estimator == "stochastic":
        rule = scoring.stochastic_rule(ig_steps, ig_form, gen)
    elif estimator == "paper-eq6":
        rule = scoring.paper_eq6_rule(ig_steps, gen)
    else:
        raise ValueError(f"unknown estimator {estimator!r}")
    nodes = [path_gradients(peft_model, groups, batches, u, loss_fn) for u in rule.nodes]
    params = adapter_parameters(groups)
    names = {id(p): n for n, p in peft_model.named_parameters()}
    return {
        names[id(p)]: scoring.integrated_gradient(p.detach(), [node[i] for node in nodes], rule, end[i])
        for i, p in enumerate(params)
    }


def completeness_gap(
    peft_model: nn.Module, batch: Batch, ig_steps: int, ig_form: str = "u", *, adapter: str = "default"
) -> float:
    """Relative completeness gap of the trapezoid, ``|sum(IG) - (L(theta) - L(0))| / |L(theta) - L(0)|``.

    ``L(0)`` switches the adapter factors off (a trained head in ``modules_to_save`` stays). Run
    the model in eval mode, ideally in float64, so that rounding does not hide the quadrature error.
    """
    from .allocator import task_model
    from .units import path_point

    inner = task_model(peft_model)
    with torch.no_grad():
        l_on = inner(**batch).loss.item()
        with path_point(find_rank_groups(peft_model, adapter), 0.0):
            l_off = inner(**batch).loss.item()
    ig = integrated_gradients(peft_model, batch, ig_steps, "trapezoid", ig_form=ig_form, adapter=adapter)
    delta = l_on - l_off
    return abs(sum(v.sum().item() for v in ig.values()) - delta) / abs(delta)
