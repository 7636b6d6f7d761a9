"""Evaluation of multiple-choice tasks: summed vs per-token log-likelihood (label vs cloze form)."""

import torch
from tiny import tiny_llama

from igulora.data import get_task
from igulora.pipeline import make_evaluator


class CharTokenizer:
    """One token per character (ids 3..99), eos 2, pad 0, no chat template."""

    eos_token_id, pad_token_id, chat_template = 2, 0, None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + ord(c) % 97 for c in text]}


def choice_logliks(model, tok, prompt, choice):
    """Summed and mean log-likelihood of ``choice + eos`` after ``prompt + newline``, by hand."""
    p = tok(prompt + "\n")["input_ids"]
    t = [*tok(choice)["input_ids"], tok.eos_token_id]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + t])).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    vals = [float(logp[len(p) - 1 + i, tid]) for i, tid in enumerate(t)]
    return sum(vals), sum(vals) / len(vals)


def test_choice_scoring_sum_or_per_token():
    """arc-e picks the choice with the highest summed log-likelihood, arc-e-cloze the highest mean per
    token; labels set to each rule's picks give accuracy 1 under that rule and < 1 under the other."""
    model = tiny_llama().eval()
    tok = CharTokenizer()
    choices = ["a", "bcdefghijkl", "mn", "opqrstu"]
    prompts = [f"question {i}?" for i in range(8)]
    picks = {}
    for rule in (0, 1):  # 0: sum, 1: mean per token
        picks[rule] = [max(range(4), key=lambda k, p=p: choice_logliks(model, tok, p, choices[k])[rule])
                       for p in prompts]
    assert picks[0] != picks[1]  # the rules really differ here
    for task, rule in (("arc-e", 0), ("arc-e-cloze", 1)):
        rows = [{"prompt": p, "choices": choices, "label": y, "target": "", "answer": ""}
                for p, y in zip(prompts, picks[rule])]
        evaluate = make_evaluator(get_task(task), tok, rows, max_length=64, batch_size=3)
        assert evaluate(model)["accuracy"] == 1.0
        other = "arc-e-cloze" if task == "arc-e" else "arc-e"
        assert make_evaluator(get_task(other), tok, rows, max_length=64, batch_size=3)(model)["accuracy"] < 1.0
