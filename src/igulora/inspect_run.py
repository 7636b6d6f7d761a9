"""``igulora inspect``: where the budget went, for a run directory or a saved adapter folder."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from .runner import UsageError


def _adapter_params(adapter_dir: Path) -> tuple[dict[str, int], dict[str, int], int]:
    """``(ranks, adapter params per module, other trainable params)`` from a saved adapter."""
    from safetensors import safe_open

    from .peft_backend import read_adapter_ranks

    ranks = read_adapter_ranks(adapter_dir)
    params: dict[str, int] = defaultdict(int)
    other = 0
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as fh:
        for key in fh.keys():  # noqa: SIM118 - safetensors handle
            numel = 1
            for d in fh.get_slice(key).get_shape():
                numel *= d
            m = re.match(r"base_model\.model\.(.+)\.lora_[ABE](?:\.weight)?$", key)
            if m:
                params[m.group(1)] += numel
            else:
                other += numel
    return ranks, dict(params), other


def _share_table(title: str, totals: dict, grand: int) -> list[str]:
    lines = [f"| {title} | adapter parameters | share |", "|---|---:|---:|"]
    for key, n in totals.items():
        lines.append(f"| {key} | {n:,} | {100 * n / max(grand, 1):.1f}% |")
    return lines


def inspect_path(path: str | Path) -> str:
    """A markdown report: ranks per module (layers x module types), trainable parameters, and the
    adapter budget by layer and by module type."""
    from .plots import _split_module
    from .report import rank_table_markdown

    p = Path(path)
    adapter = p / "adapter" if (p / "adapter" / "adapter_config.json").is_file() else p
    if not (adapter / "adapter_config.json").is_file():
        raise UsageError(f"{p} is neither a run directory nor an adapter folder (no adapter_config.json)")
    ranks, params, other = _adapter_params(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    init_r = cfg.get("init_r") or cfg.get("r")
    by_layer: dict[str, int] = defaultdict(int)
    by_type: dict[str, int] = defaultdict(int)
    for name, n in params.items():
        layer, kind = _split_module(name)
        by_layer[str(layer)] += n
        by_type[kind] += n
    total = sum(params.values())
    out = [f"# {p}", "", f"adapter type: {cfg.get('peft_type')}, modules: {len(ranks)}, "
           f"ranks: {sum(ranks.values())} of {init_r * len(ranks) if init_r else '?'} initial", "",
           rank_table_markdown(ranks, init_r=init_r), "",
           f"trainable parameters: {total + other:,} (adapter {total:,}, other saved modules {other:,})", ""]
    out += [*_share_table("layer", dict(by_layer), total), "", *_share_table("module type", dict(by_type), total)]
    return "\n".join(out)
