"""Saved adapters load with stock peft; LoRA export and merged model give the same logits."""

import json

import torch
from peft import PeftModel
from test_allocator import train_steps
from tiny import cls_batch, tiny_bert
from transformers import BertForSequenceClassification

from igulora import IguLoraConfig, export_lora, export_merged, get_igu_model, pruned_modules_saved
from igulora.peft_backend import read_adapter_ranks


def trained(tmp_path):
    torch.manual_seed(0)
    cfg = IguLoraConfig(init_r=6, target_r=3, total_step=12, tinit=2, tfinal=3, deltaT=2, ig_steps=3,
                        modules_to_save=["classifier"], task_type="SEQ_CLS")
    peft_model, alloc = get_igu_model(tiny_bert(), cfg)
    train_steps(peft_model, alloc, 12, [cls_batch(seed=s) for s in range(3)])
    peft_model.eval()
    tiny_bert().save_pretrained(tmp_path / "base")  # same seed -> same base weights
    return peft_model, alloc


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_adapter_is_compact_and_loads_with_stock_peft(tmp_path):
    peft_model, alloc = trained(tmp_path)
    peft_model.save_pretrained(tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "ADALORA" and cfg["rank_pattern"]
    ranks = read_adapter_ranks(tmp_path / "adapter")
    assert ranks == alloc.rank_pattern()
    assert sum(ranks.values()) < 6 * len(ranks)
    base = BertForSequenceClassification.from_pretrained(tmp_path / "base")
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    b = cls_batch(seed=9)
    torch.testing.assert_close(logits(loaded, b), logits(peft_model, b), rtol=0, atol=1e-6)
    n_loaded = sum(p.numel() for n, p in loaded.named_parameters() if "lora_" in n)
    assert n_loaded == sum(r * (g.d_in + g.d_out + 1) for g, r in zip(alloc.groups, ranks.values()))


def test_lora_export_and_merge(tmp_path):
    peft_model, _ = trained(tmp_path)
    b = cls_batch(seed=9)
    want = logits(peft_model, b)
    ranks = export_lora(peft_model, tmp_path / "lora")
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["rank_pattern"] == cfg["alpha_pattern"] == ranks
    base = BertForSequenceClassification.from_pretrained(tmp_path / "base")
    lora = PeftModel.from_pretrained(base, tmp_path / "lora").eval()
    torch.testing.assert_close(logits(lora, b), want, rtol=0, atol=1e-5)
    export_merged(peft_model, tmp_path / "merged")
    merged = BertForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(merged, b), want, rtol=0, atol=1e-5)
    # the trained model itself is unchanged by the export
    torch.testing.assert_close(logits(peft_model, b), want, rtol=0, atol=0)


def test_pruned_modules_save_without_peft_warning(tmp_path, recwarn):
    """Modules pruned to rank 0 are saved as (0, d) tensors on purpose: neither the run's adapter
    save nor ``export_lora`` passes on PEFT's ZeRO-3 "invalid shape" warning."""
    peft_model, alloc = trained(tmp_path)
    assert 0 in alloc.rank_pattern().values()  # the case in question
    with pruned_modules_saved():
        peft_model.save_pretrained(tmp_path / "adapter")
    export_lora(peft_model, tmp_path / "lora")
    assert not [w for w in recwarn if "invalid shape" in str(w.message)]
    peft_model.save_pretrained(tmp_path / "adapter2")  # outside the block PEFT's check still speaks
    assert [w for w in recwarn if "invalid shape" in str(w.message)]
