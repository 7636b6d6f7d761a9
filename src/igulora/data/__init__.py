"""Task data for igulora: task registry, loaders of the offline data files (and the hub), metrics.

Usage::

    from igulora.data import get_task, load_examples, compute_metrics
    spec = get_task("cola")
    train = load_examples("cola", "train", max_samples=1000, seed=0)
    scores = compute_metrics(spec, predictions, [ex["label"] for ex in load_examples("cola", "eval")])
"""

from __future__ import annotations

from .metrics import compute_metrics, extract_final_number, perplexity_metrics
from .readers import DataError
from .tasks import TaskSpec, get_task, label_names, list_tasks, load_examples, resolve_data_dir

__all__ = [
    "DataError",
    "TaskSpec",
    "compute_metrics",
    "extract_final_number",
    "get_task",
    "label_names",
    "list_tasks",
    "load_examples",
    "perplexity_metrics",
    "resolve_data_dir",
]
