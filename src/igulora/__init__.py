"""igulora: adaptive-rank LoRA fine-tuning by IGU-LoRA (Integrated Gradients + uncertainty-aware scores).

Public API::

    from igulora import IguLoraConfig, get_igu_model
    peft_model, allocator = get_igu_model(model, IguLoraConfig(init_r=12, target_r=8, total_step=1000))
    ...  # loss.backward(); optimizer.step(); allocator.step(batch); optimizer.zero_grad()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "IguLoraConfig": ".config",
    "IguAllocator": ".allocator",
    "StepRecord": ".allocator",
    "get_igu_model": ".peft_backend",
    "export_lora": ".peft_backend",
    "export_merged": ".peft_backend",
    "pruned_modules_saved": ".peft_backend",
    "integrated_gradients": ".ig",
}

if TYPE_CHECKING:
    from .allocator import IguAllocator, StepRecord
    from .config import IguLoraConfig
    from .ig import integrated_gradients
    from .peft_backend import export_lora, export_merged, get_igu_model, pruned_modules_saved


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'igulora' has no attribute {name!r}")


__all__ = [
    "IguAllocator",
    "IguLoraConfig",
    "StepRecord",
    "export_lora",
    "export_merged",
    "get_igu_model",
    "integrated_gradients",
    "pruned_modules_saved",
]
