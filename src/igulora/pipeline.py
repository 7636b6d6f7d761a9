"""From task examples to model batches, and evaluation with the task's metric.

Encoders train a sequence-classification (or regression) head on ``text`` (+ ``text_pair``).
Decoders train on ``prompt + target`` with the loss on the target tokens only; the prompt is
wrapped in the tokenizer's chat template when it has one. Evaluation:

* ``classification`` / ``regression``: argmax of the logits / the single logit;
* ``choice``: the choice with the highest summed log-likelihood after the prompt (cloze tasks: the
  mean log-likelihood per token, so that long answer texts are not penalised);
* ``generation``: greedy decoding, then the task's exact-match rule;
* ``sft``: mean token loss on the eval set and its perplexity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .data import TaskSpec, compute_metrics, perplexity_metrics

IGNORE = -100


def format_prompt(tokenizer: Any, prompt: str) -> str:
    """The prompt as the model sees it: the chat template with a generation prompt when the tokenizer
    has one, else the prompt and a newline."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt + "\n"


def _prompt_target_ids(tokenizer: Any, prompt: str, target: str, max_length: int) -> tuple[list[int], list[int]]:
    p_ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    t_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        t_ids = [*t_ids, tokenizer.eos_token_id]
    t_ids = t_ids[:max_length]
    keep = max(0, max_length - len(t_ids))
    p_ids = p_ids[len(p_ids) - keep :] if keep else []  # drop the start of a long prompt, keep the answer
    return p_ids, t_ids


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)


def decoder_batch(tokenizer: Any, pairs: list[tuple[str, str]], max_length: int) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and padding) for (prompt, target)."""
    ids, labels = [], []
    for prompt, target in pairs:
        p, t = _prompt_target_ids(tokenizer, prompt, target, max_length)
        ids.append(p + t)
        labels.append([IGNORE] * len(p) + t)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = _pad(ids, pad)
    mask = _pad([[1] * len(s) for s in ids], 0)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": _pad(labels, IGNORE)}


def make_collate(task: TaskSpec, tokenizer: Any, max_length: int) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """The training collate function for ``task``."""
    if task.decoder:
        return lambda rows: decoder_batch(tokenizer, [(r["prompt"], r["target"]) for r in rows], max_length)

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        pairs = [r.get("text_pair") for r in rows]
        enc = tokenizer(
            [r["text"] for r in rows], pairs if any(p is not None for p in pairs) else None,
            truncation=True, max_length=max_length, padding=True, return_tensors="pt",
        )
        dtype = torch.float32 if task.kind == "regression" else torch.long
        enc["labels"] = torch.tensor([r["label"] for r in rows], dtype=dtype)
        return dict(enc)

    return collate


def _chunks(rows: list[Any], size: int) -> list[list[Any]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


@torch.no_grad()
def _encoder_predictions(model: nn.Module, task: TaskSpec, rows: list[dict], collate: Callable, bs: int) -> list:
    device = next(model.parameters()).device
    preds: list = []
    for chunk in _chunks(rows, bs):
        batch = {k: v.to(device) for k, v in collate(chunk).items() if k != "labels"}
        logits = model(**batch).logits.float()
        preds += logits.view(-1).tolist() if task.kind == "regression" else logits.argmax(-1).tolist()
    return preds


@torch.no_grad()
def _choice_predictions(model: nn.Module, tokenizer: Any, rows: list[dict], max_length: int, bs: int,
                        per_token: bool = False) -> list[int]:
    device = next(model.parameters()).device
    pairs = [(r["prompt"], c) for r in rows for c in r["choices"]]
    scores: list[float] = []
    for chunk in _chunks(pairs, bs):
        batch = {k: v.to(device) for k, v in decoder_batch(tokenizer, chunk, max_length).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        labels = batch["labels"][:, 1:]
        picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        mask = labels != IGNORE
        total = (picked * mask).sum(-1)
        scores += (total / mask.sum(-1).clamp(min=1) if per_token else total).tolist()
    preds, i = [], 0
    for r in rows:
        n = len(r["choices"])
        preds.append(max(range(n), key=lambda k: scores[i + k]))
        i += n
    return preds


@torch.no_grad()
def _generations(model: nn.Module, tokenizer: Any, rows: list[dict], max_new_tokens: int, bs: int) -> list[str]:
    device = next(model.parameters()).device
    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    outs: list[str] = []
    try:
        for chunk in _chunks(rows, bs):
            enc = tokenizer([format_prompt(tokenizer, r["prompt"]) for r in chunk], return_tensors="pt",
                            padding=True, add_special_tokens=False).to(device)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            outs += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
    return outs


@torch.no_grad()
def _mean_loss(model: nn.Module, rows: list[dict], collate: Callable, bs: int) -> float:
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for chunk in _chunks(rows, bs):
        batch = {k: v.to(device) for k, v in collate(chunk).items()}
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        total += model(**batch).loss.item() * n
        tokens += n
    return total / max(tokens, 1)


def make_evaluator(
    task: TaskSpec, tokenizer: Any, rows: list[dict], max_length: int, batch_size: int = 32,
    max_new_tokens: int = 256,
) -> Callable[[nn.Module], dict[str, float]]:
    """``evaluate(model) -> metrics`` (with ``primary``) on ``rows``, in eval mode."""
    collate = make_collate(task, tokenizer, max_length)

    def evaluate(model: nn.Module) -> dict[str, float]:
        model.eval()
        if task.kind == "sft":
            return perplexity_metrics(_mean_loss(model, rows, collate, batch_size))
        if task.kind == "choice":
            preds = _choice_predictions(model, tokenizer, rows, max_length, batch_size, per_token=task.cloze)
            refs: list = [r["label"] for r in rows]
        elif task.kind == "generation":
            preds = _generations(model, tokenizer, rows, max_new_tokens, batch_size)
            refs = [r["answer"] for r in rows]
        else:
            preds = _encoder_predictions(model, task, rows, collate, batch_size)
            refs = [r["label"] for r in rows]
        return compute_metrics(task, preds, refs)

    return evaluate
