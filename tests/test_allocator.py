"""The allocator: parity with PEFT AdaLoRA, budget schedule invariants, dtypes, state."""

import copy

import pytest
import torch
from peft import AdaLoraConfig, get_peft_model
from tiny import cls_batch, lm_batch, tiny_bert, tiny_llama

from igulora import IguLoraConfig, get_igu_model
from igulora.schedule import BudgetSchedule


def train_steps(peft_model, alloc, steps, batches, lr=1e-2, on_step=None):
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    records = []
    for t in range(steps):
        batch = batches[t % len(batches)]
        peft_model(**batch).loss.backward()
        opt.step()
        records.append(alloc.step(batch))
        if on_step:
            on_step(t + 1)
        opt.zero_grad()
    return records


def test_parity_with_peft_adalora():
    """estimator=gradient, score=product, budget_unit=ranks reproduces PEFT's RankAllocator masks."""
    total, tinit, tfinal, delta = 24, 3, 5, 2
    torch.manual_seed(0)
    base = tiny_bert()
    base_copy = copy.deepcopy(base)
    peft_cfg = AdaLoraConfig(init_r=4, target_r=2, tinit=tinit, tfinal=tfinal, deltaT=delta, total_step=total,
                             target_modules=["query", "value", "dense"], lora_alpha=8, orth_reg_weight=0.5,
                             beta1=0.85, beta2=0.85)
    ref = get_peft_model(base, peft_cfg)
    ours, alloc = get_igu_model(base_copy, IguLoraConfig(
        init_r=4, target_r=2, tinit=tinit, tfinal=tfinal, deltaT=delta, total_step=total,
        target_modules=["query", "value", "dense"], lora_alpha=8, orth_reg_weight=0.5,
        estimator="gradient", score="product", budget_unit="ranks", reapply_mask=False))
    ours.load_state_dict(ref.state_dict())
    batches = [cls_batch(seed=s) for s in range(5)]
    opt_ref = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=2e-2)
    opt_ours = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=2e-2)
    masked_steps = 0
    for t in range(1, total + 1):
        b = batches[t % 5]
        ref(**b).loss.backward()
        opt_ref.step()
        ref.base_model.update_and_allocate(t)
        opt_ref.zero_grad()
        ours(**b).loss.backward()
        opt_ours.step()
        rec = alloc.step(b)
        opt_ours.zero_grad()
        masked_steps += rec.masked
        ref_e = {n: p for n, p in ref.named_parameters() if "lora_E" in n}
        for n, p in ours.named_parameters():
            if "lora_E" in n:
                assert torch.equal(p == 0, ref_e[n] == 0), f"mask differs at step {t} in {n}"
        if rec.masked:
            ref_pattern = ref.peft_config["default"].rank_pattern
            ours_pattern = ours.peft_config["default"].rank_pattern
            assert {k.replace(".default", ""): v for k, v in ref_pattern.items()} == \
                   {k.replace(".default", ""): v for k, v in ours_pattern.items()}, f"step {t}"
    assert masked_steps >= 5
    assert alloc.rank_pattern() != {k: 4 for k in alloc.rank_pattern()}  # something was pruned


@pytest.mark.parametrize("unit", ["ranks", "params"])
def test_budget_follows_schedule(unit):
    total = 30
    cfg = IguLoraConfig(init_r=6, target_r=2, tinit=4, tfinal=6, deltaT=3, total_step=total, budget_unit=unit,
                        estimator="stochastic", ig_steps=4)
    peft_model, alloc = get_igu_model(tiny_llama(), cfg)
    max_cost = max(alloc.unit_costs)
    snapshots = {}

    def snap(t):
        snapshots[t] = {n: (p == 0).clone() for n, p in peft_model.named_parameters() if "lora_E" in n}

    records = train_steps(peft_model, alloc, total, [lm_batch(seed=s) for s in range(3)], on_step=snap)
    sched = alloc.schedule
    last_budget = alloc.init_budget
    for rec in records:
        assert rec.budget <= last_budget
        last_budget = rec.budget
        assert rec.budget == sched.budget(rec.step)
        if rec.step <= 4:
            assert not rec.masked and rec.active_budget == alloc.init_budget
        if rec.masked:
            if unit == "ranks":
                assert rec.active_budget == rec.budget
            else:
                assert rec.budget - max_cost < rec.active_budget <= rec.budget
    final = total - 6
    assert [r.step for r in records if r.masked][-1] == final
    assert records[-1].active_budget <= alloc.target_budget
    for t in range(final, total + 1):  # masks frozen in the last tfinal steps
        assert all(torch.equal(snapshots[t][n], snapshots[final][n]) for n in snapshots[final])
    assert all(not r.scored for r in records if r.step >= final)


def test_score_every_scores_every_kth_step_and_never_masks_from_empty_scores():
    """score_every=k probes only every k-th step; if the first masking event comes before step k,
    the allocator scores then rather than pruning from all-zero scores."""
    total, k = 30, 8
    cfg = IguLoraConfig(init_r=6, target_r=2, tinit=4, tfinal=6, deltaT=3, total_step=total, score_every=k,
                        estimator="stochastic", ig_steps=4)
    peft_model, alloc = get_igu_model(tiny_llama(), cfg)
    records = train_steps(peft_model, alloc, total, [lm_batch(seed=s) for s in range(3)])
    first_mask = next(r.step for r in records if r.masked)
    assert first_mask < k
    assert [r.step for r in records if r.scored] == [first_mask, 8, 16]  # steps >= 24 are frozen
    assert alloc.avg and all(float(v.abs().sum()) > 0 for v in alloc.avg.values())


def test_schedule_matches_peft_formula():
    s = BudgetSchedule(init_budget=48, target_budget=24, total_step=100, tinit=10, tfinal=20, deltaT=5)
    assert s.budget(10) == 48 and not s.is_mask_step(10)
    assert s.budget(50) == int(24 * (1 - 40 / 70) ** 3 + 24)
    assert s.is_mask_step(15) and not s.is_mask_step(16)
    assert s.budget(80) == 24 and s.is_mask_step(80)
    assert s.budget(95) == 24 and not s.is_mask_step(95)


def test_scoring_leaves_params_and_grads_untouched():
    cfg = IguLoraConfig(init_r=4, target_r=2, total_step=20, estimator="trapezoid", ig_steps=4, tinit=0, tfinal=2)
    peft_model, alloc = get_igu_model(tiny_bert(), cfg)
    b = cls_batch()
    peft_model(**b).loss.backward()
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.grad is not None}
    sens = alloc.sensitivities(b)
    assert all(s.dtype == torch.float32 for s in sens)
    for n, p in peft_model.named_parameters():
        assert torch.equal(p, before[n]), n
        if n in grads:
            assert torch.equal(p.grad, grads[n]), n


def test_bf16_model_keeps_float32_scores():
    cfg = IguLoraConfig(init_r=4, target_r=2, total_step=10, tinit=1, tfinal=2, deltaT=1, ig_steps=4)
    peft_model, alloc = get_igu_model(tiny_bert(dtype=torch.bfloat16), cfg)
    peft_model.to(torch.bfloat16)
    records = train_steps(peft_model, alloc, 5, [cls_batch()])
    assert records[-1].masked
    assert all(v.dtype == torch.float32 for v in alloc.avg.values())
    assert all(v.dtype == torch.float32 for v in alloc.unc.values())


def test_module_without_gradient_does_not_crash():
    cfg = IguLoraConfig(init_r=4, target_r=2, total_step=10, tinit=1, tfinal=2, deltaT=1, ig_steps=3)
    peft_model, alloc = get_igu_model(tiny_bert(), cfg)
    frozen = alloc.groups[0]
    for p in frozen.factors().values():
        p.requires_grad_(False)
    records = train_steps(peft_model, alloc, 6, [cls_batch()])
    assert records[-1].masked


def test_state_dict_resume_is_exact():
    cfg = IguLoraConfig(init_r=4, target_r=2, total_step=16, tinit=2, tfinal=3, deltaT=2, ig_steps=4)
    batches = [cls_batch(seed=s) for s in range(3)]

    def run(stop_at=None):
        torch.manual_seed(0)
        peft_model, alloc = get_igu_model(tiny_bert(), cfg)
        opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
        for t in range(1, 17):
            if stop_at is not None and t == stop_at + 1:
                state = copy.deepcopy((peft_model.state_dict(), opt.state_dict(), alloc.state_dict(),
                                       torch.get_rng_state()))
                torch.manual_seed(123)
                peft_model, alloc = get_igu_model(tiny_bert(seed=5), cfg)
                opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
                peft_model.load_state_dict(state[0])
                opt.load_state_dict(state[1])
                alloc.load_state_dict(state[2])
                torch.set_rng_state(state[3])
            b = batches[t % 3]
            peft_model(**b).loss.backward()
            opt.step()
            alloc.step(b)
            opt.zero_grad()
        return alloc.rank_pattern(), {k: v.clone() for k, v in alloc.avg.items()}

    pattern_a, avg_a = run()
    pattern_b, avg_b = run(stop_at=7)
    assert pattern_a == pattern_b
    assert all(torch.equal(avg_a[k], avg_b[k]) for k in avg_a)


def test_nonfinite_sensitivity_is_skipped():
    cfg = IguLoraConfig(init_r=4, target_r=2, total_step=10, tinit=1, tfinal=2, deltaT=1, estimator="gradient")
    peft_model, alloc = get_igu_model(tiny_bert(), cfg)
    train_steps(peft_model, alloc, 2, [cls_batch()])
    avg_before = {k: v.clone() for k, v in alloc.avg.items()}
    peft_model(**cls_batch()).loss.backward()
    next(p for p in alloc.params).grad.fill_(float("nan"))
    rec = alloc.step()
    assert rec.skipped_nonfinite and alloc.nonfinite_skips == 1
    assert all(torch.equal(avg_before[k], alloc.avg[k]) for k in avg_before)


def test_target_modules_matching_nothing():
    with pytest.raises(ValueError, match=r"target_modules=.*matches no module"):
        get_igu_model(tiny_bert(), IguLoraConfig(target_modules=["nonexistent_proj"]))


def test_target_budget_above_initial():
    with pytest.raises(ValueError, match=r"target_budget=.*above the initial budget"):
        get_igu_model(tiny_bert(), IguLoraConfig(init_r=2, target_r=1, target_budget=10**9))


def test_coupled_scales_training_forward_only():
    cfg = IguLoraConfig(init_r=4, target_r=2, total_step=10, tinit=1, tfinal=2, deltaT=1, estimator="coupled",
                        ig_steps=4)
    peft_model, alloc = get_igu_model(tiny_bert(), cfg)
    train_steps(peft_model, alloc, 3, [cls_batch()])
    c = alloc.coupled_c
    assert c in {(k / 4) ** 3 for k in range(1, 5)}
    module = alloc.groups[0].module
    x = torch.randn(2, module.in_features)
    base = module.base_layer(x)
    full = module.get_delta_weight("default") @ x.T
    module.train()
    torch.testing.assert_close(module(x), base + c * full.T, rtol=1e-5, atol=1e-6)
    module.eval()
    torch.testing.assert_close(module(x), base + full.T, rtol=1e-5, atol=1e-6)
