"""``igulora export``: a run's adapter as plain LoRA or as a merged full model."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from .runner import UsageError


def load_trained(run_dir: str | Path, base_model: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """``(peft_model, tokenizer, config)`` of a finished run: the base model with the run's adapter."""
    from peft import PeftModel

    from .models import load_model_and_tokenizer

    run = Path(run_dir)
    cfg_path, adapter = run / "config.json", run / "adapter"
    if not cfg_path.is_file() or not (adapter / "adapter_config.json").is_file():
        raise UsageError(f"{run} is not a finished run directory (needs config.json and adapter/)")
    cfg = json.loads(cfg_path.read_text())
    name = base_model or cfg["model"]
    model, tokenizer = load_model_and_tokenizer(name, cfg.get("model_kind", "seq_cls"),
                                                num_labels=max(1, cfg.get("num_labels", 2)))
    try:
        with warnings.catch_warnings():  # PEFT reads AdaLoRA's rank_pattern keys with LoRA's rules and warns
            warnings.simplefilter("ignore")
            peft_model = PeftModel.from_pretrained(model, str(adapter))
    except (RuntimeError, ValueError, KeyError, AttributeError) as err:
        first = str(err).strip().splitlines()[0][:160]
        raise UsageError(f"the adapter in {adapter} does not fit base model {name!r}: {first}") from err
    return peft_model.eval(), tokenizer, cfg


def export_run(run_dir: str | Path, to: str, output: str | Path, base_model: str | None = None) -> Path:
    """Write ``to`` = ``lora`` (plain LoRA adapter, per-module ranks, scaling folded) or ``merged``
    (full model with the adapter merged, ``save_pretrained`` format, tokenizer included)."""
    from .peft_backend import export_lora, export_merged

    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--output {out} already exists and is not empty")
    peft_model, tokenizer, _ = load_trained(run_dir, base_model)
    if to == "merged":
        export_merged(peft_model, out, tokenizer)
    elif json.loads((Path(run_dir) / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA":
        shutil.copytree(Path(run_dir) / "adapter", out, dirs_exist_ok=True)
    else:
        export_lora(peft_model, out)
    return out
