"""Task registry and example loaders for the GLUE, commonsense, GSM8K, Alpaca and custom tasks.

Every loader reads the original file formats described in ``shared/data/SOURCES.md`` and returns plain
example dicts (see :func:`load_examples`). Bad input raises :class:`DataError` with one line naming the
file and, where it applies, the line number.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .readers import (
    DataError,
    Example,
    custom_label_names,
    delimited_rows,
    field,
    header_index,
    json_records,
    load_custom,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DataError", "TaskSpec", "get_task", "label_names", "list_tasks", "load_examples", "resolve_data_dir",
]


@dataclass(frozen=True)
class TaskSpec:
    """What a task is and how it is scored.

    ``kind`` is "classification" | "regression" (encoder tasks), "choice" (decoder multiple choice,
    answered by choice likelihood), "generation" (greedy generation, exact match of the final number) or
    "sft" (instruction tuning, scored by eval loss / perplexity). ``num_labels`` is 1 for regression,
    0 for decoder tasks and 0 for "custom", whose labels come from the data (see :func:`label_names`).
    ``higher_is_better`` is False only for "sft" (primary: perplexity); ``labels`` names the class ids.
    ``cloze`` marks the answer-text form of a multiple-choice task (see the field).
    """

    name: str
    kind: str
    num_labels: int
    metrics: tuple[str, ...]
    primary: str
    decoder: bool
    higher_is_better: bool = True
    labels: tuple[str, ...] = ()
    cloze: bool = False
    """"choice" tasks only: the prompt is the bare question, the target and the choices are the answer
    texts (not "answer1".."answerN"), and a choice is scored by its mean log-likelihood per token."""


def _enc(name: str, metrics: tuple[str, ...], labels: tuple[str, ...]) -> TaskSpec:
    """An encoder classification task whose primary metric is the first of ``metrics``."""
    return TaskSpec(name, "classification", len(labels), metrics, metrics[0], False, True, labels)


def _dec(name: str, kind: str, metrics: tuple[str, ...], higher_is_better: bool = True) -> TaskSpec:
    """A decoder task; the primary metric is the first (the last, perplexity, for sft)."""
    primary = metrics[-1] if kind == "sft" else metrics[0]
    return TaskSpec(name, kind, 0, metrics, primary, True, higher_is_better)


_CLOZE_OF = ("arc-e", "arc-c", "obqa")
"""Multiple-choice tasks that also have an answer-text form ``<task>-cloze`` (same files and hub data)."""

_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _enc("sst2", ("accuracy",), ("negative", "positive")),
        _enc("cola", ("matthews", "accuracy"), ("unacceptable", "acceptable")),
        _enc("mrpc", ("f1_acc_mean", "accuracy", "f1"), ("not_equivalent", "equivalent")),
        _enc("rte", ("accuracy",), ("entailment", "not_entailment")),
        TaskSpec("stsb", "regression", 1, ("pearson", "spearman"), "pearson", False),
        _enc("boolq", ("accuracy",), ("false", "true")),
        _dec("arc-e", "choice", ("accuracy",)),
        _dec("arc-c", "choice", ("accuracy",)),
        _dec("obqa", "choice", ("accuracy",)),
        _dec("boolq-qa", "choice", ("accuracy",)),
        *(dataclasses.replace(_dec(f"{t}-cloze", "choice", ("accuracy",)), cloze=True) for t in _CLOZE_OF),
        _dec("gsm8k", "generation", ("exact_match",)),
        _dec("alpaca", "sft", ("eval_loss", "perplexity"), higher_is_better=False),
        TaskSpec("custom", "classification", 0, ("accuracy",), "accuracy", False),
    )
}

# Local files per task, relative to the data dir: (train files, eval files).
_FILES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sst2": (("glue/sst2/train.tsv",), ("glue/sst2/dev.tsv",)),
    "cola": (("glue/cola/train.tsv",), ("glue/cola/dev_in_domain.tsv", "glue/cola/dev_out_of_domain.tsv")),
    "mrpc": (("glue/mrpc/train.tsv",), ("glue/mrpc/validation.tsv",)),
    "rte": (("glue/rte/train.tsv",), ("glue/rte/validation.tsv",)),
    "stsb": (("glue/stsb/sts-train.csv",), ("glue/stsb/sts-dev.csv",)),
    "boolq": (("boolq/validation_with_passages.tsv",),) * 2,
    "arc-e": (("commonsense/ARC-Easy/train.json",), ("commonsense/ARC-Easy/test.json",)),
    "arc-c": (("commonsense/ARC-Challenge/train.json",), ("commonsense/ARC-Challenge/test.json",)),
    "obqa": (("commonsense/openbookqa/train.json",), ("commonsense/openbookqa/test.json",)),
    "boolq-qa": (("commonsense/boolq/train.json",), ("commonsense/boolq/test.json",)),
    "gsm8k": (("gsm8k/train.jsonl",), ("gsm8k/test.jsonl",)),
    "alpaca": (("alpaca/alpaca_en_demo.json",),) * 2,
}


@dataclass(frozen=True)
class _TsvFormat:
    """Columns of an encoder task file: names (header files) or 0-based positions (headerless)."""

    text_cols: tuple[str, ...] | tuple[int, ...]
    label_col: str | int
    quoted: bool


_FORMATS: dict[str, _TsvFormat] = {
    "sst2": _TsvFormat(("sentence",), "label", quoted=False),
    "cola": _TsvFormat((3,), 1, quoted=False),
    "mrpc": _TsvFormat(("sentence1", "sentence2"), "label", quoted=True),
    "rte": _TsvFormat(("sentence1", "sentence2"), "label", quoted=True),
    "stsb": _TsvFormat((5, 6), 4, quoted=False),
    "boolq": _TsvFormat(("question", "passage"), "label", quoted=True),
}
_HOLDOUT = {"boolq": 0.2, "alpaca": 0.1}  # single-file tasks: fraction held out for eval
# Hub fallback: task -> (dataset, config, eval split). Used only when local files are absent and online.
_HUB: dict[str, tuple[str, str | None, str]] = {
    **{t: ("nyu-mll/glue", t, "validation") for t in ("sst2", "cola", "mrpc", "rte", "stsb")},
    "boolq": ("google/boolq", None, "validation"), "boolq-qa": ("google/boolq", None, "validation"),
    "arc-e": ("allenai/ai2_arc", "ARC-Easy", "test"), "arc-c": ("allenai/ai2_arc", "ARC-Challenge", "test"),
    "obqa": ("allenai/openbookqa", "main", "test"), "gsm8k": ("openai/gsm8k", "main", "test"),
    "alpaca": ("tatsu-lab/alpaca", None, "train"),
}
for _t in _CLOZE_OF:  # the cloze form reads the same files and hub data as its task
    _FILES[f"{_t}-cloze"], _HUB[f"{_t}-cloze"] = _FILES[_t], _HUB[_t]


def list_tasks() -> list[str]:
    """Names of all tasks, in registry order."""
    return list(_TASKS)


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The :class:`TaskSpec` of ``name``; DataError listing the choices for an unknown name."""
    if isinstance(name, TaskSpec):
        return name
    spec = _TASKS.get(str(name).strip().lower())
    if spec is None:
        raise DataError(f"unknown task {name!r}; choose one of: {', '.join(_TASKS)}")
    return spec


def _repo_candidate() -> Path:
    """<repo root>/../shared/data, the repo root being two levels above the package folder."""
    import igulora

    return Path(igulora.__file__).resolve().parents[2].parent / "shared" / "data"


def resolve_data_dir(data_dir: str | None) -> Path | None:
    """The data folder: explicit arg, $IGULORA_DATA_DIR, <repo>/../shared/data, ./../shared/data, or None."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("IGULORA_DATA_DIR"):
        return Path(os.environ["IGULORA_DATA_DIR"]).expanduser()
    for candidate in (_repo_candidate(), Path.cwd() / ".." / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    return None


# ----------------------------------------------------------------------------------------------- encoder
def _class_label(spec: TaskSpec, value: str, where: str) -> int:
    """A class id in 0..num_labels-1; DataError at ``where`` otherwise."""
    try:
        label = int(value.strip())
    except ValueError:
        raise DataError(f"{where}: label {value.strip()!r} is not an integer") from None
    if not 0 <= label < spec.num_labels:
        raise DataError(f"{where}: label {label} outside the label set {list(range(spec.num_labels))} "
                        f"of task {spec.name!r}")
    return label


def _score(value: str, where: str) -> float:
    """An STS-B similarity score in [0, 5]; DataError at ``where`` otherwise."""
    try:
        score = float(value.strip())
    except ValueError:
        raise DataError(f"{where}: non-numeric STS-B score {value.strip()!r}") from None
    if not 0.0 <= score <= 5.0:
        raise DataError(f"{where}: STS-B score {score} outside [0, 5]")
    return score


def _load_tsv_task(spec: TaskSpec, path: Path) -> list[Example]:
    """Examples of one GLUE-style file of an encoder task."""
    fmt = _FORMATS[spec.name]
    rows = delimited_rows(path, quoted=fmt.quoted)
    columns: list[Any] = [*fmt.text_cols, fmt.label_col]
    if isinstance(fmt.label_col, str):
        columns, rows = header_index(path, rows, columns), rows[1:]
    out: list[Example] = []
    for line, fields in rows:
        where = f"{path}:{line}"
        if len(fields) <= max(columns):
            need = max(columns) + 1
            raise DataError(f"{where}: too few fields: expected at least {need}, got {len(fields)}")
        *texts, raw = (fields[c] for c in columns)
        label = _score(raw, where) if spec.kind == "regression" else _class_label(spec, raw, where)
        pair = texts[1].strip() if len(texts) > 1 else None
        out.append({"text": texts[0].strip(), "text_pair": pair, "label": label})
    return out


# ----------------------------------------------------------------------------------------------- decoder
_FORMAT_RE = re.compile(r"Answer format:\s*([^\s]+)\s*$", re.IGNORECASE)


def _prompt(instruction: Any, extra: Any) -> str:
    """The instruction, followed by the input after a blank line when there is one."""
    text = str(instruction).strip()
    return f"{text}\n\n{str(extra).strip()}" if extra is not None and str(extra).strip() else text


def _choice_example(rec: dict[str, Any], where: str) -> Example:
    """A multiple-choice example from an {instruction, input, output, answer} record."""
    instruction = str(field(rec, "instruction", where))
    answer = str(field(rec, "answer", where)).strip().lower()
    match = _FORMAT_RE.search(instruction)
    if match is None:
        raise DataError(f"{where}: instruction has no 'Answer format: a/b/...' line to read the choices from")
    choices = [c.strip().lower() for c in match.group(1).split("/") if c.strip()]
    if answer not in choices:
        raise DataError(f"{where}: answer {answer!r} outside the choices {choices}")
    return {"prompt": _prompt(instruction, rec.get("input")), "target": answer, "choices": choices,
            "label": choices.index(answer), "answer": answer}


def _gsm8k_example(rec: dict[str, Any], where: str) -> Example:
    """A GSM8K example: the full worked solution is the target, the number after '####' the answer."""
    from .metrics import extract_final_number

    solution = str(field(rec, "answer", where)).strip()
    if "####" not in solution:
        raise DataError(f"{where}: answer has no '#### <number>' final answer")
    final = extract_final_number(solution)
    if final is None:
        raise DataError(f"{where}: no number after '####' in the answer")
    return {"prompt": str(field(rec, "question", where)).strip(), "target": solution, "choices": None,
            "label": None, "answer": final}


def _sft_example(rec: dict[str, Any], where: str) -> Example:
    """An instruction-tuning example from an {instruction, input, output} record."""
    output = str(field(rec, "output", where)).strip()
    return {"prompt": _prompt(field(rec, "instruction", where), rec.get("input")), "target": output,
            "choices": None, "label": None, "answer": output}


_QUESTION_RE = re.compile(r"^(?:.*?question:\s*)?(.*?)\s*\n\s*\n\s*(Answer1:.*?)\s*\n\s*\n\s*Answer format:[^\n]*(.*)$",
                          re.IGNORECASE | re.DOTALL)
_OPTION_RE = re.compile(r"\s*Answer(\d+):\s*", re.IGNORECASE)


def _cloze_example(ex: Example, where: str) -> Example:
    """The answer-text form of a multiple-choice example: prompt = the question (and the record's
    input), choices = the answer texts listed as "Answer1: ... Answer2: ..." in the instruction,
    target = the correct text."""
    match = _QUESTION_RE.search(ex["prompt"])
    if match is None:
        raise DataError(f"{where}: cannot read the question and its 'Answer1: ...' options for the cloze form")
    parts = _OPTION_RE.split(match.group(2))[1:]  # ["1", text1, "2", text2, ...]
    texts = [t.strip() for t in parts[1::2]]
    if len(texts) != len(ex["choices"]) or not all(texts):
        raise DataError(f"{where}: found {len(texts)} answer texts for {len(ex['choices'])} choices")
    context = match.group(3).strip()  # the record's "input", when it has one
    prompt = f"{match.group(1)}\n\n{context}" if context else match.group(1)
    return {"prompt": prompt, "target": texts[ex["label"]], "choices": texts, "label": ex["label"],
            "answer": texts[ex["label"]]}


def _decode(spec: TaskSpec, rec: dict[str, Any], where: str) -> Example:
    ex = _DECODERS[spec.kind](rec, where)
    return _cloze_example(ex, where) if spec.cloze else ex


_DECODERS: dict[str, Callable[[dict[str, Any], str], Example]] = {
    "choice": _choice_example, "generation": _gsm8k_example, "sft": _sft_example,
}


def _load_file(spec: TaskSpec, path: Path) -> list[Example]:
    """Examples of one file of ``spec`` (JSON/JSONL records for decoder tasks, TSV/CSV else)."""
    if spec.decoder:
        return [_decode(spec, rec, where) for where, rec in json_records(path)]
    return _load_tsv_task(spec, path)


def label_names(task: str, data_dir: str | None = None, *, train_file: str | None = None,
                eval_file: str | None = None, text_fields: list[str] | None = None,
                label_field: str | None = None) -> list[str]:
    """Names of the class ids 0..n-1 (``len()`` is num_labels); for 'custom', read from the train file.

    Regression and decoder tasks have no class names (empty list). ``data_dir`` is accepted for symmetry
    with :func:`load_examples`; the built-in names do not depend on it.
    """
    spec = get_task(task)
    if spec.name != "custom":
        return list(spec.labels)
    return custom_label_names(train_file, eval_file, text_fields, label_field)


# ----------------------------------------------------------------------------------------------- entry
def _holdout(examples: list[Example], split: str, task: str) -> list[Example]:
    """Deterministic split of a single-file task: boolq a seed-0 permutation, alpaca the last rows."""
    n_eval = round(len(examples) * _HOLDOUT[task])
    if task == "alpaca":
        held = set(range(len(examples) - n_eval, len(examples)))
    else:
        order = list(range(len(examples)))
        random.Random(0).shuffle(order)
        held = set(order[:n_eval])
    return [ex for i, ex in enumerate(examples) if (i in held) == (split == "eval")]


def _hub_record(spec: TaskSpec, row: dict[str, Any]) -> Example:
    """One hub row in the local example format (decoder rows go through the same converters)."""
    if spec.name == "boolq":
        return {"text": row["question"], "text_pair": row["passage"], "label": int(row["answer"])}
    if not spec.decoder:
        texts = [row[k] for k in ("sentence", "sentence1", "sentence2") if k in row]
        return {"text": texts[0], "text_pair": texts[1] if len(texts) > 1 else None,
                "label": float(row["label"]) if spec.kind == "regression" else int(row["label"])}
    if spec.name == "boolq-qa":
        answer = "true" if row["answer"] else "false"
        row = {"instruction": "Please answer the following question with true or false, question: "
               f"{row['question']}?\n\nAnswer format: true/false", "answer": answer}
    elif spec.kind == "choice":
        texts, keys = row["choices"]["text"], row["choices"]["label"]
        options = " ".join(f"Answer{i + 1}: {text}" for i, text in enumerate(texts))
        names = "/".join(f"answer{i + 1}" for i in range(len(texts)))
        row = {"instruction": "Please choose the correct answer to the question: "
               f"{row.get('question_stem') or row['question']}\n\n{options}\n\nAnswer format: {names}",
               "answer": f"answer{keys.index(row['answerKey']) + 1}"}
    return _decode(spec, row, f"hub:{_HUB[spec.name][0]}")


def _load_from_hub(spec: TaskSpec, split: str, looked: str) -> list[Example]:
    """Examples of ``spec`` from the Hugging Face hub (needs network; not exercised by the tests)."""
    name, config, eval_split = _HUB[spec.name]
    try:
        from datasets import load_dataset

        rows = load_dataset(name, config, split="train" if split == "train" else eval_split)
    except Exception as exc:  # any hub/network failure becomes one DataError line
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
        raise DataError(f"task {spec.name!r}: {split} data not found (looked at: {looked}) and the hub "
                        f"load of {name} failed ({reason}); pass --data-dir or set "
                        "IGULORA_DATA_DIR") from None
    return [_hub_record(spec, dict(row)) for row in rows]


def _first_line(exc: BaseException) -> str:
    """The first line of an exception message (errors here are one line)."""
    return (str(exc).strip().splitlines() or [""])[0]


def _offline() -> bool:
    """True when HF_HUB_OFFLINE forbids the hub fallback."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _load_builtin(spec: TaskSpec, split: str, data_dir: str | None) -> list[Example]:
    """Examples of a built-in task from the data dir, else the hub (online), else a DataError."""
    rels = _FILES[spec.name][0 if split == "train" else 1]
    base = resolve_data_dir(data_dir)
    bases = [base] if base is not None else [_repo_candidate(), Path.cwd() / ".." / "shared" / "data"]
    if base is not None and all((base / rel).is_file() for rel in rels):
        examples = [ex for rel in rels for ex in _load_file(spec, base / rel)]
        return _holdout(examples, split, spec.name) if spec.name in _HOLDOUT else examples
    looked = ", ".join(str(b / rel) for b in bases for rel in rels)
    if _offline():
        raise DataError(f"task {spec.name!r}: {split} data not found (looked at: {looked}); "
                        "pass --data-dir or set IGULORA_DATA_DIR")
    logger.info("%s: no local files (%s); loading the %s split from the hub", spec.name, looked, split)
    examples = _load_from_hub(spec, split, looked)
    return _holdout(examples, split, spec.name) if spec.name == "alpaca" else examples


def _subsample(examples: list[Example], max_samples: int | None, seed: int) -> list[Example]:
    """A random subset of ``max_samples`` examples (fixed by ``seed``) in their original order."""
    if max_samples is None or max_samples >= len(examples):
        return examples
    if max_samples < 1:
        raise DataError(f"max_samples must be >= 1 or None, got {max_samples}")
    keep = sorted(random.Random(seed).sample(range(len(examples)), max_samples))
    return [examples[i] for i in keep]


def load_examples(task: str, split: str, data_dir: str | None = None, *, max_samples: int | None = None,
                  seed: int = 0, train_file: str | None = None, eval_file: str | None = None,
                  text_fields: list[str] | None = None, label_field: str | None = None) -> list[Example]:
    """Examples of ``task``'s ``split`` ("train" or "eval").

    Encoder tasks give ``{"text", "text_pair", "label"}``; decoder tasks give ``{"prompt", "target",
    "choices", "label", "answer"}``. ``max_samples`` keeps a random subset (fixed for a given ``seed``,
    in file order). ``train_file``/``eval_file`` are the data of "custom" and override the files of the
    decoder tasks (same record format as the built-in files).
    """
    spec = get_task(task)
    if split not in ("train", "eval"):
        raise DataError(f"split must be 'train' or 'eval', got {split!r}")
    override = train_file if split == "train" else eval_file
    if spec.name == "custom":
        examples = load_custom(split, train_file, eval_file, text_fields, label_field)
    elif override:
        if not spec.decoder:
            raise DataError(f"task {spec.name!r} takes no --train-file/--eval-file (use task 'custom')")
        path = Path(override).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: file not found (given as --{split}-file)")
        examples = _load_file(spec, path)
    else:
        examples = _load_builtin(spec, split, data_dir)
    examples = _subsample(examples, max_samples, seed)
    logger.info("%s/%s: %d examples", spec.name, split, len(examples))
    return examples
