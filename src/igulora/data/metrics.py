"""Evaluation metrics of the tasks: accuracy, Matthews correlation, F1, Pearson/Spearman, exact match.

All metrics are plain numpy (no scikit-learn / scipy needed). :func:`compute_metrics` returns every
metric of a task plus ``"primary"``, the value of the task's primary metric.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .readers import DataError
from .tasks import TaskSpec, get_task

__all__ = [
    "accuracy", "compute_metrics", "exact_match", "extract_final_number", "f1_binary", "matthews",
    "pearson", "perplexity_metrics", "spearman",
]

_NUMBER_RE = re.compile(r"(?<![\d.])-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")


def accuracy(predictions: np.ndarray, references: np.ndarray) -> float:
    """Fraction of predictions equal to the reference."""
    return float(np.mean(predictions == references))


def matthews(predictions: np.ndarray, references: np.ndarray) -> float:
    """Matthews correlation coefficient (multiclass form; equals the binary MCC for 2 classes).

    0.0 when it is undefined (all predictions or all references one class), as scikit-learn does.
    """
    classes = np.union1d(predictions, references)
    true_idx, pred_idx = np.searchsorted(classes, references), np.searchsorted(classes, predictions)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(confusion, (true_idx, pred_idx), 1.0)
    t_k, p_k = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, total = np.trace(confusion), confusion.sum()
    denom = math.sqrt((total**2 - float(p_k @ p_k)) * (total**2 - float(t_k @ t_k)))
    return 0.0 if denom == 0.0 else float((correct * total - float(t_k @ p_k)) / denom)


def f1_binary(predictions: np.ndarray, references: np.ndarray) -> float:
    """F1 of the positive class 1; 0.0 when there are no positive predictions nor references."""
    tp = float(np.sum((predictions == 1) & (references == 1)))
    fp = float(np.sum((predictions == 1) & (references != 1)))
    fn = float(np.sum((predictions != 1) & (references == 1)))
    return 0.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0.0 when either input is constant (undefined)."""
    xc, yc = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(xc @ xc) * float(yc @ yc))
    return 0.0 if denom == 0.0 else float(xc @ yc / denom)


def _rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy.stats.rankdata 'average')."""
    order = np.argsort(x, kind="mergesort")
    ordered = x[order]
    starts = np.concatenate([[0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1])
    ends = np.concatenate([starts[1:], [len(x)]])
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (Pearson of the tie-averaged ranks)."""
    return pearson(_rankdata(x), _rankdata(y))


def extract_final_number(text: Any) -> str | None:
    """The final numeric answer of a GSM8K-style text, normalised ("1,234.50" -> "1234.5", "3.0" -> "3").

    Takes the first number after the last "####" when there is one, else the last number of the text;
    None when there is no number.
    """
    text = "" if text is None else str(text)
    head, mark, tail = text.rpartition("####")
    found = _NUMBER_RE.findall(tail)[:1] if mark else _NUMBER_RE.findall(head + tail)[-1:]
    if not found:
        return None
    number = found[0].replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".") or "0"
    negative = number.startswith("-")
    digits = number.lstrip("-")
    whole, dot, frac = digits.partition(".")
    digits = (whole.lstrip("0") or "0") + dot + frac
    return "0" if digits == "0" else ("-" if negative else "") + digits


def exact_match(predictions: Sequence[Any], references: Sequence[Any]) -> float:
    """Fraction of predictions whose final number equals the reference's (GSM8K exact match)."""
    hits = 0
    for pred, ref in zip(predictions, references, strict=True):
        gold = extract_final_number(ref)
        gold = gold if gold is not None else str(ref).strip()
        hits += int(extract_final_number(pred) == gold)
    return hits / len(references)


def perplexity_metrics(mean_loss: float) -> dict[str, float]:
    """Eval loss and perplexity of an SFT task; ``primary`` is the perplexity (lower is better)."""
    loss = float(mean_loss)
    ppl = math.exp(loss) if loss < 700 else math.inf
    return {"eval_loss": loss, "perplexity": ppl, "primary": ppl}


def _as_labels(values: Any) -> np.ndarray:
    """Class ids from ids or from per-class scores/logits (argmax over the last axis)."""
    array = np.asarray(values)
    if array.ndim == 2:
        array = array.argmax(axis=-1)
    if array.ndim != 1:
        raise DataError(f"class predictions must be 1-D ids or 2-D scores, got shape {array.shape}")
    return array.astype(np.int64)


def _as_scores(values: Any) -> np.ndarray:
    """Regression predictions as a 1-D float array (a trailing axis of size 1 is dropped)."""
    array = np.asarray(values, dtype=np.float64)
    return array.reshape(len(array)) if array.ndim == 2 and array.shape[1] == 1 else array


_CLASS_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "matthews": matthews,
    "f1": f1_binary,
    "f1_acc_mean": lambda p, r: (f1_binary(p, r) + accuracy(p, r)) / 2.0,
}


def compute_metrics(task: str | TaskSpec, predictions: Any, references: Any) -> dict[str, float]:
    """Every metric of ``task`` plus ``"primary"``.

    Classification and "choice" tasks take class/choice ids (or 2-D scores, argmaxed); regression takes
    floats; "generation" takes generated texts and gold answers (compared by final number). "sft" tasks
    are scored from the loss: use :func:`perplexity_metrics`.
    """
    spec = get_task(task)
    if spec.kind == "sft":
        raise DataError(f"task {spec.name!r} is scored from the eval loss: use perplexity_metrics(mean_loss)")
    if len(predictions) != len(references):
        raise DataError(f"{len(predictions)} predictions but {len(references)} references")
    if len(references) == 0:
        raise DataError("no predictions to score")
    if spec.kind == "generation":
        values = {"exact_match": exact_match(list(predictions), list(references))}
    elif spec.kind == "regression":
        preds, refs = _as_scores(predictions), _as_scores(references)
        values = {"pearson": pearson(preds, refs), "spearman": spearman(preds, refs)}
    else:
        preds, refs = _as_labels(predictions), _as_labels(references)
        values = {name: _CLASS_METRICS[name](preds, refs) for name in spec.metrics}
    values = {name: values[name] for name in spec.metrics}
    values["primary"] = values[spec.primary]
    return values
