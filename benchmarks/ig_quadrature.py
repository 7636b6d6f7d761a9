"""Completeness gap of the IG quadrature on MiniLM + a real SST-2 batch: u form vs alpha form.

Float64, dropout off, after a few real training steps and with the adapter additionally set to
small random values (so the path is not trivially linear). Writes
benchmarks/results/ig_quadrature.json and .md.

    .venv/bin/python benchmarks/ig_quadrature.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from igulora import IguLoraConfig, get_igu_model
from igulora.data import get_task, load_examples
from igulora.ig import completeness_gap
from igulora.models import load_model_and_tokenizer
from igulora.pipeline import make_collate
from igulora.runner import quiet_transformers

ROOT = Path(__file__).resolve().parents[1]


def gap_table(peft_model, batch, ns, form):
    return {n: completeness_gap(peft_model, batch, n, form) for n in ns}


def main() -> None:
    quiet_transformers()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer("minilm", "seq_cls", num_labels=2)
    model = model.double()
    peft_model, _ = get_igu_model(model, IguLoraConfig(init_r=8, target_r=4, modules_to_save=["classifier"],
                                                       task_type="SEQ_CLS"))
    rows = load_examples("sst2", "eval", max_samples=16, seed=0)
    batch = make_collate(get_task("sst2"), tok, 64)(rows)
    results = {}
    for scale in (0.02, 0.05):
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
        peft_model.eval()
        results[str(scale)] = {form: gap_table(peft_model, batch, [4, 8, 16, 32], form) for form in ("u", "alpha")}
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ig_quadrature.json").write_text(json.dumps(results, indent=2))
    lines = ["Relative completeness gap |sum(IG) - (L(theta) - L(0))| / |L(theta) - L(0)|, MiniLM, 16 SST-2 dev "
             "sentences, float64, adapter entries ~ N(0, scale^2). Probe passes: u form N, alpha form N - 1.", "",
             "| scale | N | u form | alpha form | alpha / u |", "|---:|---:|---:|---:|---:|"]
    for scale, forms in results.items():
        for n in forms["u"]:
            u, a = forms["u"][n], forms["alpha"][n]
            lines.append(f"| {scale} | {n} | {u:.2e} | {a:.2e} | {a / u:.1f} |")
    (out / "ig_quadrature.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
