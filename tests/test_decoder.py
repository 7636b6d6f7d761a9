"""The offline decoder (SmolLM2-135M): a short CLI run and the allocator's memory formula."""

import json

import pytest
import torch

from igulora import IguLoraConfig, get_igu_model
from igulora.cli import main


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf")
    from igulora.models import ModelError, load_model_and_tokenizer

    try:
        return load_model_and_tokenizer("smollm2-135m", "causal_lm")
    except ModelError as err:
        pytest.skip(str(err))


def test_decoder_cli_run(tmp_path, smollm2, shared_data, capsys):
    out = tmp_path / "arc"
    argv = ["train", "--model", "smollm2-135m", "--task", "arc-e", "--method", "igulora", "--max-train-samples", "4",
            "--max-eval-samples", "3", "--max-steps", "3", "--batch-size", "2", "--max-length", "64", "--init-r", "2",
            "--target-r", "1", "--tinit", "0", "--tfinal", "1", "--deltaT", "1", "--ig-steps", "2",
            "--eval-batch-size", "4", "--output-dir", str(out), "--quiet"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["metrics"]["accuracy"] <= 1.0 and metrics["steps"] == 3
    ranks = json.loads((out / "rank_pattern.json").read_text())
    assert any("q_proj" in k for k in ranks) and any("down_proj" in k for k in ranks)
    assert "lm_head" not in " ".join(ranks)


def test_allocator_memory_is_two_float32_per_adapter_entry(smollm2):
    model, tok = smollm2
    cfg = IguLoraConfig(init_r=8, target_r=4, total_step=10, tinit=1, tfinal=2, estimator="gradient")
    peft_model, alloc = get_igu_model(model, cfg)
    batch = tok(["The capital of France is Paris."], return_tensors="pt")
    batch["labels"] = batch["input_ids"].clone()
    peft_model(**batch).loss.backward()
    alloc.step(batch)
    n_adapter = sum(p.numel() for p in alloc.params)
    assert n_adapter == sum(8 * (g.d_in + g.d_out + 1) for g in alloc.groups)
    assert alloc.score_memory_bytes() == 2 * 4 * n_adapter  # I and U, float32
    assert all(v.dtype == torch.float32 for v in alloc.avg.values())
    assert len(alloc.groups) == 30 * 7  # q, k, v, o, gate, up, down in every layer
