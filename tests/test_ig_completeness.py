"""Completeness of the IG quadrature: sum(IG) = L(theta) - L(adapter off), gap shrinking like 1/N^2."""

import csv
import json

import pytest
import torch
from tiny import cls_batch, randomize_adapter, tiny_bert

from igulora import IguLoraConfig, get_igu_model
from igulora.ig import completeness_gap


def completeness_gaps(peft_model, batch, ns, form):
    return {n: completeness_gap(peft_model, batch, n, form) for n in ns}


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("form", ["u", "alpha"])
def test_tiny_model_completeness(float64, form):
    model = tiny_bert(dtype=torch.float64)
    peft_model, _ = get_igu_model(model, IguLoraConfig(init_r=4, target_r=2, lora_dropout=0.0))
    peft_model.eval()
    randomize_adapter(peft_model, 0.1)
    gaps = completeness_gaps(peft_model, cls_batch(), [8, 16, 32], form)
    assert gaps[32] < 1e-3, gaps
    assert gaps[16] <= gaps[8] / 3, gaps


def test_u_form_beats_alpha_form_on_tiny(float64):
    model = tiny_bert(dtype=torch.float64)
    peft_model, _ = get_igu_model(model, IguLoraConfig(init_r=4, target_r=2))
    peft_model.eval()
    randomize_adapter(peft_model, 0.1)
    u = completeness_gaps(peft_model, cls_batch(), [8], "u")[8]
    a = completeness_gaps(peft_model, cls_batch(), [9], "alpha")[9]  # same number of probe passes (8)
    assert u < a


def sst2_batch(shared_data, tokenizer, n=8):
    with open(shared_data / "glue" / "sst2" / "dev.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[:n]
    enc = tokenizer([r["sentence"] for r in rows], padding=True, truncation=True, max_length=48,
                    return_tensors="pt")
    enc["labels"] = torch.tensor([int(r["label"]) for r in rows])
    return dict(enc)


def test_minilm_sst2_completeness(float64, shared_data, minilm_path, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2, dtype=torch.float64)
    cfg = IguLoraConfig(init_r=4, target_r=2, total_step=100, modules_to_save=["classifier"], task_type="SEQ_CLS")
    peft_model, _ = get_igu_model(model, cfg)
    batch = sst2_batch(shared_data, tok)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=5e-3)
    peft_model.train()
    for _ in range(4):  # a few real training steps
        peft_model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    peft_model.eval()
    ns = [2, 4, 8, 16, 32]
    gaps = completeness_gaps(peft_model, batch, ns, "u")
    for n in (4, 8):  # at least the trapezoid's 1/N^2 rate while above rounding level
        assert gaps[2 * n] <= gaps[n] / 3 or gaps[2 * n] < 1e-7, gaps
    smallest = min((n for n in ns if gaps[n] < 1e-3), default=None)
    assert smallest is not None, gaps
    (tmp_path / "gaps.json").write_text(json.dumps({"gaps": gaps, "smallest_n_below_1e-3": smallest}))
    print(f"MiniLM/SST-2 relative completeness gap (u form): {gaps}; smallest N below 1e-3: {smallest}")
