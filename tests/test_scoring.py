"""Pure math of igulora.scoring and the estimators' formulas on hand-checkable cases."""

import math

import pytest
import torch
from torch import nn

from igulora import IguLoraConfig, get_igu_model, integrated_gradients, scoring
from igulora.allocator import default_loss, path_gradients
from igulora.units import adapter_parameters


class OneLinear(nn.Module):
    """loss = sum(lin(x)): every gradient is a closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, labels=None):
        return {"loss": self.lin(x).sum()}


def one_linear_model(seed=0):
    torch.manual_seed(seed)
    model, alloc = get_igu_model(
        OneLinear().double(),
        IguLoraConfig(target_modules=["lin"], init_r=2, target_r=1, total_step=20, lora_alpha=2,
                      estimator="gradient", orth_reg_weight=0.0),
    )
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in adapter_parameters(alloc.groups):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model, alloc


def closed_form_h(alloc, x):
    """h(u) for loss = sum(W0 x + s P diag(l) Q x): independent of u (linear loss)."""
    grp = alloc.groups[0]
    s = grp.module.scaling["default"] / (grp.module.ranknum["default"].item() + 1e-5)
    P, lam, Q = grp.B.detach(), grp.E.detach().view(-1), grp.A.detach()
    ones = torch.ones(P.shape[0], dtype=P.dtype)
    xs = x.sum(0)
    return {
        "A": s * (lam.view(-1, 1) * (P.T @ ones).view(-1, 1)) * xs.view(1, -1),
        "E": (s * (P.T @ ones) * (Q @ xs)).view(-1, 1),
        "B": s * ones.view(-1, 1) * (lam * (Q @ xs)).view(1, -1),
    }


def test_trapezoid_rules_integrate_polynomials():
    # u form: trapezoid in u with weight 1/3 -> integral of h(u) du / 3; exact for linear h
    rule = scoring.trapezoid_rule(8, "u")
    approx = sum(w * (2 * u + 1) for u, w in zip(rule.nodes, rule.weights)) + rule.end_weight * 3
    assert approx == pytest.approx((1 + 1) / 3)
    # alpha form: int_0^1 alpha^2 h(alpha^3) d alpha with h = 1 -> 1/3, error O(N^-2)
    errors = []
    for n in (8, 16):
        r = scoring.trapezoid_rule(n, "alpha")
        errors.append(abs(sum(r.weights) + r.end_weight - 1 / 3))
    assert errors[1] < errors[0] / 3.5


def test_path_gradient_matches_closed_form():
    model, alloc = one_linear_model()
    x = torch.randn(4, 3, dtype=torch.float64)
    want = closed_form_h(alloc, x)
    for u in (0.0, 0.3, 1.0):
        got = path_gradients(model, alloc.groups, [{"x": x}], u, default_loss)
        for key, g in zip("AEB", got):
            torch.testing.assert_close(g, want[key])


def test_gradient_and_paper_eq6_formulas():
    model, alloc = one_linear_model()
    x = torch.randn(4, 3, dtype=torch.float64)
    h = closed_form_h(alloc, x)
    grp = alloc.groups[0]
    theta = {"A": grp.A.detach(), "E": grp.E.detach(), "B": grp.B.detach()}
    names = {"A": "base_model.model.lin.lora_A.default", "E": "base_model.model.lin.lora_E.default",
             "B": "base_model.model.lin.lora_B.default"}
    ig = integrated_gradients(model, {"x": x}, estimator="gradient")
    for k in "AEB":
        torch.testing.assert_close(ig[names[k]], theta[k] * h[k])  # theta * dL/dtheta at alpha = 1
    n = 10
    k_draw = int(torch.randint(1, n, (1,), generator=torch.Generator().manual_seed(7)).item())
    alpha = k_draw / n
    ig = integrated_gradients(model, {"x": x}, n, estimator="paper-eq6", generator=torch.Generator().manual_seed(7))
    for k in "AEB":
        g_alpha, g_one = alpha**2 * h[k], h[k]  # g(alpha) = alpha^2 h(alpha^3); g(0) = 0
        want = theta[k].abs() / (2 * n) * (0 + 2 * g_alpha + g_one)
        torch.testing.assert_close(ig[names[k]].abs(), want.abs())


def test_trapezoid_closed_form():
    # linear loss: h constant, so IG = theta * h / 3 exactly in both forms' limit; u-form exact at any N
    model, alloc = one_linear_model()
    x = torch.randn(4, 3, dtype=torch.float64)
    h = closed_form_h(alloc, x)
    grp = alloc.groups[0]
    ig = integrated_gradients(model, {"x": x}, 3, estimator="trapezoid", ig_form="u")
    torch.testing.assert_close(ig["base_model.model.lin.lora_E.default"], grp.E.detach() * h["E"] / 3)


@pytest.mark.parametrize("form", ["u", "alpha"])
def test_stochastic_is_unbiased_for_trapezoid(form):
    """Mean of many one-node draws equals the trapezoid; tolerance 5 standard errors per entry."""
    torch.manual_seed(0)
    n = 6
    trap = scoring.trapezoid_rule(n, form)
    h = {u: torch.randn(50, dtype=torch.float64) for u in trap.nodes}
    h_end = torch.randn(50, dtype=torch.float64)
    theta = torch.randn(50, dtype=torch.float64)
    exact = scoring.integrated_gradient(theta, [h[u] for u in trap.nodes], trap, h_end)
    gen = torch.Generator().manual_seed(1)
    draws = []
    for _ in range(4000):
        rule = scoring.stochastic_rule(n, form, gen)
        draws.append(scoring.integrated_gradient(theta, [h[u] for u in rule.nodes], rule, h_end))
    draws = torch.stack(draws)
    stderr = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - exact).abs() <= 5 * stderr + 1e-12).all()


def test_ema_and_scores():
    avg, unc = torch.zeros(3), torch.zeros(3)
    s = torch.tensor([1.0, 2.0, 0.0])
    avg, unc = scoring.ema_update(avg, unc, s, 0.85, 0.85)
    torch.testing.assert_close(avg, 0.15 * s)
    torch.testing.assert_close(unc, 0.15 * (s - 0.15 * s).abs())
    torch.testing.assert_close(scoring.element_score(avg, unc, "snr", 1e-6), avg / (unc + 1e-6))
    torch.testing.assert_close(scoring.element_score(avg, unc, "product", 1e-6), avg * unc)


def test_unit_scores_shape_and_value():
    e = torch.tensor([[1.0], [2.0]])
    a = torch.tensor([[1.0, 3.0, 5.0], [0.0, 0.0, 3.0]])  # (r, d_in)
    b = torch.tensor([[2.0, 4.0], [4.0, 0.0]])  # (d_out, r)
    torch.testing.assert_close(scoring.unit_scores(e, a, b), torch.tensor([1 + 3 + 3, 2 + 1 + 2.0]))


def test_keep_mask_budget():
    scores = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7])
    assert scoring.keep_mask(scores, torch.ones(5), 3).tolist() == [True, False, True, False, True]
    costs = torch.tensor([10.0, 10.0, 4.0, 4.0, 4.0])
    keep = scoring.keep_mask(scores, costs, 15)
    kept = costs[keep].sum()
    assert kept <= 15 and kept > 15 - costs.max()
    assert scoring.keep_mask(scores, torch.ones(5), 10).all()
