r"""Pure tensor math of IGU-LoRA scoring. No ``nn.Module``, no parameter names, no I/O.

Notation (one adapted matrix): ``delta_W = P diag(lambda) Q`` with ``P`` (d_out x r),
``lambda`` (r x 1), ``Q`` (r x d_in); theta collects all factors. The loss along the
path ``theta(alpha) = alpha * theta`` is ``L(W0 + alpha**3 delta_W)``.

**Path gradient.** Everything here is expressed through one primitive that the caller
measures with a probe pass (:func:`igulora.units.path_point`)::

    h(u) = J(theta)^T  dL/dW |_{W0 + u * delta_W}          (same shape as theta)

where ``J = d delta_W / d theta`` at the current theta. ``h(1)`` is the ordinary training
gradient. The gradient along the alpha path is ``g(alpha) = alpha**2 * h(alpha**3)``.

**Integrated Gradients**::

    IG_j = theta_j * int_0^1 g_j(alpha) d alpha = theta_j / 3 * int_0^1 h_j(u) du      (u = alpha**3)

Completeness: ``sum_j IG_j = L(theta) - L(0)``.

**Quadrature rules** (N intervals), written as ``IG ~= theta * (sum_i w_i h(u_i) + w_end h(1))``:

* ``u`` form:     nodes ``u_k = k/N, k = 0..N-1``, ``w_0 = 1/(6N)``, ``w_k = 1/(3N)``, ``w_end = 1/(6N)``
  (the trapezoid in u; N probe passes, the u = 0 node is not zero);
* ``alpha`` form: nodes ``u_k = (k/N)**3, k = 1..N-1``, ``w_k = (k/N)**2 / N``, ``w_end = 1/(2N)``
  (the trapezoid in alpha; N - 1 probe passes, the alpha = 0 node is zero).

The ``u`` form integrates a much smoother function (``g`` is steep near alpha = 1) and is
the default; ``tests/test_ig_completeness.py`` and ``benchmarks/ig_quadrature.py`` measure both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Rule:
    """A quadrature rule: probe nodes ``u_i`` with weights ``w_i`` plus the weight of the free u = 1 node."""

    nodes: tuple[float, ...]
    weights: tuple[float, ...]
    end_weight: float


def trapezoid_rule(n: int, form: str = "u") -> Rule:
    """The composite trapezoid with ``n`` intervals, in ``u`` or ``alpha`` (see module docstring)."""
    if n < 1:
        raise ValueError(f"ig_steps must be >= 1, got {n}")
    if form == "u":
        nodes = tuple(k / n for k in range(n))
        weights = tuple((0.5 if k == 0 else 1.0) / (3 * n) for k in range(n))
        return Rule(nodes, weights, 0.5 / (3 * n))
    if form == "alpha":
        nodes = tuple((k / n) ** 3 for k in range(1, n))
        weights = tuple((k / n) ** 2 / n for k in range(1, n))
        return Rule(nodes, weights, 0.5 / n)
    raise ValueError(f"unknown ig_form {form!r}; choose u or alpha")


def stochastic_rule(n: int, form: str, generator: torch.Generator) -> Rule:
    """One random interior node, unbiased for :func:`trapezoid_rule` (one probe pass).

    ``alpha`` form (method.md): ``k ~ U{1..N-1}``, ``IG = theta / N * ((N-1) g(k/N) + g(1)/2)``.
    ``u`` form: node ``i`` drawn with probability ``w_i / W`` (``W = sum_i w_i``) and weight ``W``,
    so ``E[W h(u_i)] = sum_i w_i h(u_i)``.
    """
    rule = trapezoid_rule(n, form)
    weights = torch.tensor(rule.weights, dtype=torch.float64)
    if form == "alpha":
        i = int(torch.randint(len(rule.nodes), (1,), generator=generator).item())
        return Rule((rule.nodes[i],), (rule.weights[i] * len(rule.nodes),), rule.end_weight)
    i = int(torch.multinomial(weights / weights.sum(), 1, generator=generator).item())
    return Rule((rule.nodes[i],), (float(weights.sum()),), rule.end_weight)


def paper_eq6_rule(n: int, generator: torch.Generator) -> Rule:
    """The paper's literal Eq. 6: ``|theta|/(2N) * (g(0) + 2 g(alpha_k) + g(1))``, ``k ~ U{1..N-1}``.

    With ``g(0) = 0`` and ``g(alpha) = alpha**2 h(alpha**3)``: node ``alpha_k**3`` with weight
    ``alpha_k**2 / N`` and end weight ``1/(2N)``. (It lacks the ``N - 1`` factor of the unbiased rule.)
    """
    k = int(torch.randint(1, n, (1,), generator=generator).item())
    alpha = k / n
    return Rule((alpha**3,), (alpha**2 / n,), 0.5 / n)


def coupled_alpha(n: int, generator: torch.Generator) -> float:
    """The authors' code: the training pass runs at ``alpha ~ U{1/N, ..., 1}``; returns alpha."""
    return int(torch.randint(1, n + 1, (1,), generator=generator).item()) / n


def integrated_gradient(theta: Tensor, path_grads: list[Tensor], rule: Rule, end_grad: Tensor) -> Tensor:
    """``IG = theta * (sum_i w_i h(u_i) + w_end h(1))``, all of ``theta``'s shape, in float32 or wider.

    Args:
        theta: current factor values, any shape.
        path_grads: ``h(u_i)`` for each node of ``rule``, each of ``theta``'s shape.
        rule: the quadrature rule.
        end_grad: ``h(1)``, the training gradient, of ``theta``'s shape.
    """
    dtype = torch.promote_types(theta.dtype, torch.float32)
    acc = end_grad.to(dtype) * rule.end_weight
    for w, grad in zip(rule.weights, path_grads):
        acc = acc + grad.to(dtype) * w
    return theta.to(dtype) * acc


def gradient_sensitivity(theta: Tensor, grad: Tensor) -> Tensor:
    """AdaLoRA's instantaneous sensitivity ``|theta * dL/dtheta|`` in float32 (computed in the
    parameter's dtype first, as PEFT does, then cast)."""
    return (theta * grad).abs().float()


def ema_update(avg: Tensor, unc: Tensor, s: Tensor, beta1: float, beta2: float) -> tuple[Tensor, Tensor]:
    """One step of the smoothed sensitivity and its uncertainty (new tensors, all float32)::

        I_t = beta1 * I_{t-1} + (1 - beta1) * s_t
        U_t = beta2 * U_{t-1} + (1 - beta2) * |s_t - I_t|
    """
    avg = beta1 * avg + (1 - beta1) * s
    unc = beta2 * unc + (1 - beta2) * (s - avg).abs()
    return avg, unc


def element_score(avg: Tensor, unc: Tensor, kind: str, eps: float) -> Tensor:
    """Per-entry score: ``snr``: ``I / (U + eps)``; ``product``: ``I * U``."""
    if kind == "snr":
        return avg / (unc + eps)
    if kind == "product":
        return avg * unc
    raise ValueError(f"unknown score {kind!r}; choose snr or product")


def unit_scores(score_e: Tensor, score_a: Tensor, score_b: Tensor) -> Tensor:
    """Score of each rank unit (triplet) of one matrix, shape ``(r,)``::

        S_i = s(lambda_i) + (mean_k s(Q[i, k]) + mean_k s(P[k, i]))

    Args:
        score_e: ``(r, 1)`` scores of lambda (or ``|lambda|`` for ``lambda_term="abs"``).
        score_a: ``(r, d_in)`` scores of Q (PEFT's ``lora_A``).
        score_b: ``(d_out, r)`` scores of P (PEFT's ``lora_B``).
    The summation order matches PEFT's ``RankAllocator`` bit for bit.
    """
    mean_a = score_a.mean(dim=1, keepdim=True)
    mean_b = score_b.mean(dim=0).view(-1, 1)
    return score_e.view(-1) + torch.cat([mean_a, mean_b], dim=1).sum(dim=1)


def keep_mask(scores: Tensor, costs: Tensor, budget: float) -> Tensor:
    """Mask the lowest-scoring units until the kept cost is at most ``budget``.

    Args:
        scores: ``(n,)`` unit scores, ranked globally.
        costs: ``(n,)`` cost of each unit (1 for ``ranks``, ``d_in + d_out + 1`` for ``params``).
        budget: total cost allowed.
    Returns:
        ``(n,)`` bool, True for kept units. Ties are broken by position (stable sort), so the
        number of masked units is exact. The kept cost is ``<= budget`` and, when anything was
        masked, ``> budget - max(costs)``.
    """
    costs = costs.to(torch.float64)
    total = costs.sum()
    keep = torch.ones_like(scores, dtype=torch.bool)
    if total <= budget:
        return keep
    order = torch.argsort(scores, stable=True)
    remaining = total - torch.cumsum(costs[order], dim=0)
    n_drop = int(torch.nonzero(remaining <= budget)[0].item()) + 1
    keep[order[:n_drop]] = False
    return keep
