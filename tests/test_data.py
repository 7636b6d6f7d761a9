"""igulora.data: task registry, loaders on the real offline files, bad-input errors, metrics."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from igulora.data import (
    DataError,
    TaskSpec,
    compute_metrics,
    extract_final_number,
    get_task,
    label_names,
    list_tasks,
    load_examples,
    metrics,
    perplexity_metrics,
    resolve_data_dir,
    tasks,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ALL_TASKS = ["sst2", "cola", "mrpc", "rte", "stsb", "boolq", "arc-e", "arc-c", "obqa", "boolq-qa",
             "arc-e-cloze", "arc-c-cloze", "obqa-cloze", "gsm8k", "alpaca", "custom"]
# (task, train rows, eval rows) as documented in shared/data/SOURCES.md (boolq: 80/20 of 3,270; alpaca 90/10).
COUNTS = [("sst2", 67349, 872), ("cola", 8551, 1043), ("mrpc", 3668, 408), ("rte", 2490, 277),
          ("stsb", 5749, 1500), ("boolq", 2616, 654), ("arc-e", 2251, 2376), ("arc-c", 1119, 1172),
          ("obqa", 4957, 500), ("boolq-qa", 9427, 3270), ("gsm8k", 7473, 1319), ("alpaca", 899, 100)]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("IGULORA_DATA_DIR", raising=False)


@pytest.fixture(scope="module")
def data() -> str:
    if not DATA.is_dir():
        pytest.skip(f"offline data not found at {DATA}")
    return str(DATA)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def raises(match: str, fn, *args, **kwargs) -> str:
    """Call ``fn``; assert it raises a one-line DataError matching ``match``; return the message."""
    with pytest.raises(DataError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------------------------- registry
def test_registry() -> None:
    assert list_tasks() == ALL_TASKS
    assert issubclass(DataError, ValueError)
    for name in ALL_TASKS:
        spec = get_task(name)
        assert isinstance(spec, TaskSpec) and spec.name == name and spec.primary in spec.metrics
        assert spec.decoder == (spec.kind in ("choice", "generation", "sft"))
        assert spec.num_labels == (1 if spec.kind == "regression" else 0 if spec.decoder else spec.num_labels)
    assert get_task("cola").primary == "matthews" and get_task("mrpc").primary == "f1_acc_mean"
    assert get_task("stsb").num_labels == 1 and get_task("sst2").num_labels == 2
    assert get_task("alpaca").primary == "perplexity" and not get_task("alpaca").higher_is_better
    assert get_task("gsm8k").kind == "generation" and get_task("arc-c").kind == "choice"
    assert label_names("rte") == ["entailment", "not_entailment"] and label_names("stsb") == []
    message = raises("unknown task 'mnli'", get_task, "mnli")
    assert all(name in message for name in ALL_TASKS)


def test_resolve_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_data_dir(str(tmp_path / "x")) == tmp_path / "x"
    monkeypatch.setenv("IGULORA_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(str(tmp_path / "x")) == tmp_path / "x"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("IGULORA_DATA_DIR")
    monkeypatch.setattr(tasks, "_repo_candidate", lambda: tmp_path / "repo" / "shared" / "data")
    monkeypatch.chdir(write(tmp_path / "work" / "main" / "f", "").parent)
    assert resolve_data_dir(None) is None
    (tmp_path / "work" / "shared" / "data").mkdir(parents=True)
    assert resolve_data_dir(None) == (tmp_path / "work" / "shared" / "data").resolve()
    (tmp_path / "repo" / "shared" / "data").mkdir(parents=True)
    assert resolve_data_dir(None) == (tmp_path / "repo" / "shared" / "data").resolve()


# ----------------------------------------------------------------------------------------------- real files
@pytest.mark.parametrize(("task", "n_train", "n_eval"), COUNTS)
def test_real_files_load(data: str, task: str, n_train: int, n_eval: int) -> None:
    spec = get_task(task)
    for split, expected in (("train", n_train), ("eval", n_eval)):
        examples = load_examples(task, split, data)
        assert len(examples) == expected, (task, split)
        for ex in examples:
            if not spec.decoder:
                assert set(ex) == {"text", "text_pair", "label"} and ex["text"]
                assert (ex["text_pair"] is None) == (task in ("sst2", "cola"))
                if spec.kind == "regression":
                    assert isinstance(ex["label"], float) and 0.0 <= ex["label"] <= 5.0
                else:
                    assert isinstance(ex["label"], int) and 0 <= ex["label"] < spec.num_labels
            else:
                assert set(ex) == {"prompt", "target", "choices", "label", "answer"} and ex["prompt"]
                if spec.kind == "choice":
                    assert ex["choices"][ex["label"]] == ex["answer"] == ex["target"]
                else:
                    assert ex["choices"] is None and ex["label"] is None


def test_decoder_example_contents(data: str) -> None:
    arc = load_examples("arc-e", "train", data)
    assert arc[0]["choices"] == ["answer1", "answer2", "answer3", "answer4"] and arc[0]["label"] == 1
    assert arc[0]["prompt"].startswith("Please choose the correct answer") and arc[0]["answer"] == "answer2"
    assert any(len(ex["choices"]) == 5 for ex in arc)  # a few ARC questions have five options
    assert load_examples("boolq-qa", "eval", data)[0]["choices"] == ["true", "false"]
    gsm = load_examples("gsm8k", "train", data)[0]
    assert gsm["answer"] == "72" and gsm["target"].endswith("#### 72") and "Natalia" in gsm["prompt"]
    cola = load_examples("cola", "eval", data)
    assert sum(ex["label"] for ex in cola) == 719  # acceptable rows of the two dev files (counted with awk)


def test_single_file_splits_are_fixed(data: str) -> None:
    train, dev = load_examples("boolq", "train", data, seed=5), load_examples("boolq", "eval", data, seed=9)
    assert dev == load_examples("boolq", "eval", data)  # the holdout does not depend on `seed`
    assert not {ex["text"] + ex["text_pair"] for ex in train} & {ex["text"] + ex["text_pair"] for ex in dev}
    alpaca = json.loads((DATA / "alpaca" / "alpaca_en_demo.json").read_text())
    assert load_examples("alpaca", "eval", data)[-1]["target"] == alpaca[-1]["output"].strip()


def test_max_samples_is_seeded(data: str) -> None:
    full = load_examples("rte", "train", data)
    a = load_examples("rte", "train", data, max_samples=50, seed=1)
    assert len(a) == 50 and a == load_examples("rte", "train", data, max_samples=50, seed=1)
    assert a != load_examples("rte", "train", data, max_samples=50, seed=2)
    assert all(ex in full for ex in a)
    assert len(load_examples("rte", "eval", data, max_samples=10**6)) == 277
    raises("max_samples must be >= 1", load_examples, "rte", "eval", data, max_samples=0)


@pytest.mark.parametrize("task", ["arc-e", "arc-c", "obqa"])
def test_cloze_form_of_choice_tasks(data: str, task: str) -> None:
    """``<task>-cloze``: the same questions, answered by text: the bare question as prompt, the listed
    answer texts as choices, scored per token (``TaskSpec.cloze``)."""
    assert get_task(f"{task}-cloze").cloze and not get_task(task).cloze
    for split in ("train", "eval"):
        labels = load_examples(task, split, data)
        cloze = load_examples(f"{task}-cloze", split, data)
        assert len(cloze) == len(labels)
        for lab, ex in zip(labels, cloze):
            assert ex["label"] == lab["label"] and len(ex["choices"]) == len(lab["choices"])
            assert ex["target"] == ex["answer"] == ex["choices"][ex["label"]]
            assert ex["prompt"] and "Answer1:" not in ex["prompt"] and not ex["prompt"].startswith("Please choose")
            assert all(c and "Answer" not in c for c in ex["choices"])
    first = load_examples("arc-e-cloze", "eval", data)[0]
    assert first["target"] == "Sunlight is the source of energy for nearly all ecosystems."


def test_cloze_file_override_and_errors(data: str, tmp_path: Path) -> None:
    record = {"instruction": "Q?\n\nAnswer1: x y Answer2: z.\n\nAnswer format: answer1/answer2", "input": "ctx",
              "output": "the correct answer is answer2", "answer": "answer2"}
    path = write(tmp_path / "mine.json", json.dumps([record]))
    ex = load_examples("obqa-cloze", "eval", data, eval_file=str(path))[0]
    assert ex == {"prompt": "Q?\n\nctx", "target": "z.", "choices": ["x y", "z."], "label": 1, "answer": "z."}
    bad = write(tmp_path / "bad.json", json.dumps([{**record, "instruction": "Q?\n\nAnswer format: answer1/answer2"}]))
    raises(r"bad.json record 0: cannot read the question and its 'Answer1: ...' options", load_examples,
           "obqa-cloze", "eval", eval_file=str(bad))


def test_choice_task_file_override(data: str, tmp_path: Path) -> None:
    record = {"instruction": "Q?\n\nAnswer1: x Answer2: y\n\nAnswer format: answer1/answer2", "input": "ctx",
              "output": "the correct answer is answer2", "answer": "answer2"}
    path = write(tmp_path / "mine.json", json.dumps([record, {**record, "answer": "answer1"}]))
    examples = load_examples("obqa", "eval", data, eval_file=str(path))
    assert [ex["label"] for ex in examples] == [1, 0] and examples[0]["prompt"].endswith("\n\nctx")
    assert len(load_examples("obqa", "train", data)) == 4957  # only the eval file was overridden
    bad = write(tmp_path / "bad.json", json.dumps([{**record, "answer": "answer3"}]))
    raises(r"bad.json record 0: answer 'answer3' outside the choices", load_examples, "obqa", "eval",
           eval_file=str(bad))
    raises("takes no --train-file", load_examples, "sst2", "train", data, train_file=str(path))


# ----------------------------------------------------------------------------------------------- custom
def test_custom_files(tmp_path: Path) -> None:
    train = write(tmp_path / "train.csv", 'text,label\n"hello, world",pos\nbad movie,neg\nok,neutral\n')
    dev = write(tmp_path / "dev.jsonl", '{"text": "fine", "label": "pos"}\n{"text": "meh", "label": "neg"}\n')
    kwargs = {"train_file": str(train), "eval_file": str(dev)}
    assert [ex["label"] for ex in load_examples("custom", "train", **kwargs)] == [2, 0, 1]
    first = load_examples("custom", "train", **kwargs)[0]
    assert first == {"text": "hello, world", "text_pair": None, "label": 2}
    assert [ex["label"] for ex in load_examples("custom", "eval", **kwargs)] == [2, 0]
    assert label_names("custom", **kwargs) == ["neg", "neutral", "pos"]
    pairs = write(tmp_path / "pairs.tsv", "a\tb\ty\nfirst\tsecond\t1\nthird\tfourth\t0\n")
    got = load_examples("custom", "train", train_file=str(pairs), text_fields=["a", "b"], label_field="y")
    assert got[0] == {"text": "first", "text_pair": "second", "label": 1}
    assert label_names("custom", train_file=str(pairs), text_fields=["a", "b"], label_field="y") == ["0", "1"]
    unseen = write(tmp_path / "unseen.jsonl", '{"text": "x", "label": "angry"}\n')
    raises(r"unseen.jsonl:1: label 'angry' outside the train file's label set", load_examples, "custom",
           "eval", train_file=str(train), eval_file=str(unseen))
    raises("task 'custom' needs --train-file", load_examples, "custom", "train")


# ----------------------------------------------------------------------------------------------- bad input
def test_missing_column(tmp_path: Path) -> None:
    write(tmp_path / "glue/sst2/dev.tsv", "sentence\tindex\ngood .\t0\n")
    raises(r"dev.tsv:1: missing column 'label' \(header has: sentence, index\)", load_examples, "sst2",
           "eval", str(tmp_path))


def test_too_few_fields(tmp_path: Path) -> None:
    write(tmp_path / "glue/cola/train.tsv", "gj04\t1\t\tA fine sentence.\ngj04\t0\n")
    raises(r"train.tsv:2: too few fields: expected at least 4, got 2", load_examples, "cola", "train",
           str(tmp_path))


def test_label_outside_set(tmp_path: Path) -> None:
    write(tmp_path / "glue/sst2/dev.tsv", "sentence\tlabel\tindex\ngood .\t1\t0\nodd .\t3\t1\n")
    raises(r"dev.tsv:3: label 3 outside the label set \[0, 1\] of task 'sst2'", load_examples, "sst2", "eval",
           str(tmp_path))
    write(tmp_path / "glue/rte/validation.tsv", "index\tlabel\tsentence1\tsentence2\n0\tyes\ta\tb\n")
    raises(r"validation.tsv:2: label 'yes' is not an integer", load_examples, "rte", "eval", str(tmp_path))


@pytest.mark.parametrize("content", ["", "\n\n", "label\tsentence\n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    write(tmp_path / "glue/sst2/train.tsv", content)
    raises(r"train.tsv: empty data file", load_examples, "sst2", "train", str(tmp_path))


def test_non_numeric_stsb_score(tmp_path: Path) -> None:
    rows = "g\tf\t2012\t0001\t4.2\tA b.\tA c.\ng\tf\t2012\t0002\tabc\tA b.\tA c.\n"
    write(tmp_path / "glue/stsb/sts-dev.csv", rows)
    raises(r"sts-dev.csv:2: non-numeric STS-B score 'abc'", load_examples, "stsb", "eval", str(tmp_path))
    write(tmp_path / "glue/stsb/sts-dev.csv", rows.replace("abc", "7.5"))
    raises(r"sts-dev.csv:2: STS-B score 7.5 outside \[0, 5\]", load_examples, "stsb", "eval", str(tmp_path))


def test_malformed_json(tmp_path: Path) -> None:
    good = json.dumps({"question": "1+1?", "answer": "2\n#### 2"})
    write(tmp_path / "gsm8k/test.jsonl", f"{good}\n{good}\n{{\"question\": \"oops\"\n")
    raises(r"test.jsonl:3: malformed JSON", load_examples, "gsm8k", "eval", str(tmp_path))
    write(tmp_path / "gsm8k/test.jsonl", f"{good}\n{json.dumps({'question': 'q', 'answer': 'no mark'})}\n")
    raises(r"test.jsonl:2: answer has no '#### <number>'", load_examples, "gsm8k", "eval", str(tmp_path))
    write(tmp_path / "commonsense/ARC-Easy/test.json", '[\n  {"instruction": "x",\n  "answer" "a"}\n]\n')
    raises(r"test.json:3: malformed JSON", load_examples, "arc-e", "eval", str(tmp_path))
    write(tmp_path / "commonsense/ARC-Easy/test.json", '[{"instruction": "x", "output": "y"}]')
    raises(r"test.json record 0: missing field 'answer' \(fields present: instruction, output\)",
           load_examples, "arc-e", "eval", str(tmp_path))


def test_custom_missing_field(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "sentence,target\nhi,1\n")
    raises(r"t.csv:2: missing field 'review' \(fields present: sentence, target\)", load_examples, "custom",
           "train", train_file=str(path), text_fields=["review"], label_field="target")
    raises(r"t.csv:2: missing field 'label' \(fields present: sentence, target\)", load_examples, "custom",
           "train", train_file=str(path))
    raises(r"u.csv:2: no text field given", load_examples, "custom", "train",
           train_file=str(write(tmp_path / "u.csv", "body,label\nhi,1\n")))
    raises(r"t.csv:3: too few fields", load_examples, "custom", "train",
           train_file=str(write(tmp_path / "t.csv", "text,label\nhi,1\nshort\n")))


def test_data_not_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    message = raises(r"task 'mrpc': eval data not found", load_examples, "mrpc", "eval", str(tmp_path / "no"))
    assert str(tmp_path / "no" / "glue" / "mrpc" / "validation.tsv") in message
    assert "pass --data-dir or set IGULORA_DATA_DIR" in message
    monkeypatch.setattr(tasks, "_repo_candidate", lambda: tmp_path / "repo" / "shared" / "data")
    monkeypatch.chdir(tmp_path)
    message = raises(r"task 'gsm8k': train data not found", load_examples, "gsm8k", "train")
    assert str(tmp_path / "repo" / "shared" / "data" / "gsm8k" / "train.jsonl") in message
    assert str(tmp_path / ".." / "shared" / "data" / "gsm8k" / "train.jsonl") in message
    raises("split must be 'train' or 'eval'", load_examples, "sst2", "test", str(tmp_path))


def test_hub_fallback_converts_rows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The hub path (no network here): a stub ``datasets`` module feeds rows shaped like the hub's."""
    rows = {
        "allenai/ai2_arc": [{"question": "Q?", "choices": {"text": ["x", "y", "z"], "label": ["A", "B", "C"]},
                             "answerKey": "C"}],
        "allenai/openbookqa": [{"question_stem": "Sun", "choices": {"text": ["a", "b"], "label": ["1", "2"]},
                                "answerKey": "1"}],
        "google/boolq": [{"question": "is it", "passage": "P", "answer": True}],
        "nyu-mll/glue": [{"sentence1": "a", "sentence2": "b", "label": 3.5, "idx": 0}],
        "openai/gsm8k": [{"question": "1+1?", "answer": "1+1=2\n#### 2"}],
        "tatsu-lab/alpaca": [{"instruction": f"do {i}", "input": "", "output": str(i)} for i in range(20)],
    }
    calls: list[tuple[str, str | None, str]] = []

    def load_dataset(name: str, config: str | None = None, split: str = "train") -> list[dict]:
        calls.append((name, config, split))
        return rows[name]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    where = str(tmp_path / "none")
    arc = load_examples("arc-c", "eval", where)[0]
    assert arc["choices"] == ["answer1", "answer2", "answer3"] and arc["label"] == 2
    assert "Answer3: z" in arc["prompt"] and calls[-1] == ("allenai/ai2_arc", "ARC-Challenge", "test")
    assert load_examples("obqa", "train", where)[0]["answer"] == "answer1"
    cloze = load_examples("arc-c-cloze", "eval", where)[0]
    assert cloze["choices"] == ["x", "y", "z"] and cloze["answer"] == "z" and cloze["prompt"] == "Q?"
    assert load_examples("boolq-qa", "eval", where)[0]["answer"] == "true"
    assert load_examples("boolq", "train", where) == [{"text": "is it", "text_pair": "P", "label": 1}]
    assert load_examples("stsb", "eval", where) == [{"text": "a", "text_pair": "b", "label": 3.5}]
    assert load_examples("gsm8k", "eval", where)[0]["answer"] == "2"
    assert [ex["answer"] for ex in load_examples("alpaca", "eval", where)] == ["18", "19"]
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=None))
    raises(r"task 'rte': train data not found .* hub load of nyu-mll/glue failed \(TypeError", load_examples,
           "rte", "train", where)


# ----------------------------------------------------------------------------------------------- metrics
def test_classification_metrics_by_hand() -> None:
    preds, refs = [1, 1, 0, 0, 0, 0], [1, 0, 1, 0, 0, 0]  # tp=1 fp=1 fn=1 tn=3
    got = compute_metrics("mrpc", preds, refs)
    assert got["accuracy"] == pytest.approx(4 / 6) and got["f1"] == pytest.approx(0.5)
    assert got["f1_acc_mean"] == pytest.approx((0.5 + 4 / 6) / 2) == got["primary"]
    cola = compute_metrics("cola", preds, refs)
    assert cola["matthews"] == pytest.approx((1 * 3 - 1 * 1) / math.sqrt(2 * 2 * 4 * 4)) == cola["primary"]
    assert set(cola) == {"matthews", "accuracy", "primary"}
    assert compute_metrics("cola", [1, 1, 1], [1, 0, 1])["matthews"] == 0.0  # undefined -> 0
    assert compute_metrics("cola", [0, 1, 1, 0], [1, 0, 0, 1])["matthews"] == pytest.approx(-1.0)
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 1.0]])
    assert compute_metrics("sst2", logits, [1, 0, 0]) == {"accuracy": pytest.approx(2 / 3),
                                                          "primary": pytest.approx(2 / 3)}
    assert compute_metrics("arc-c", [0, 3, 2, 4], [0, 3, 1, 4])["primary"] == pytest.approx(0.75)
    # multiclass MCC against the closed form sum over the confusion matrix
    assert metrics.matthews(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1])) == pytest.approx(
        (3 * 4 - (1 * 1 + 2 * 1 + 1 * 2)) / math.sqrt((16 - 6) * (16 - 6)))


def test_regression_metrics_by_hand() -> None:
    got = compute_metrics("stsb", [[1.0], [2.0], [3.0], [4.0]], [1.0, 3.0, 2.0, 4.0])
    assert got["pearson"] == pytest.approx(0.8) == got["primary"] and got["spearman"] == pytest.approx(0.8)
    tied = metrics.spearman(np.array([1.0, 2, 2, 3]), np.array([1.0, 3, 2, 4]))
    assert tied == pytest.approx(math.sqrt(0.9))
    assert metrics._rankdata(np.array([3.0, 1, 3, 2, 3])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]
    assert metrics.pearson(np.ones(3), np.arange(3.0)) == 0.0


def test_correlations_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, 200).astype(float)  # many ties
    y = x + rng.normal(0, 2, 200)
    assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert metrics._rankdata(x).tolist() == stats.rankdata(x).tolist()


def test_gsm8k_and_sft_metrics() -> None:
    cases = {"#### 1,234": "1234", "so 3.0 apples.": "3", "It is 10.50 dollars": "10.5", "from 3-4": "4",
             "x\n#### -5": "-5", "007": "7", "-0.0": "0", "no number": None, "": None,
             "2 then #### 8 or 9": "8"}
    for text, want in cases.items():
        assert extract_final_number(text) == want, text
    got = compute_metrics("gsm8k", ["... #### 72", "The answer is 10.", "no idea"], ["72", "10", "4"])
    assert got == {"exact_match": pytest.approx(2 / 3), "primary": pytest.approx(2 / 3)}
    ppl = perplexity_metrics(math.log(4.0))
    assert ppl == {"eval_loss": pytest.approx(math.log(4.0)), "perplexity": pytest.approx(4.0),
                   "primary": pytest.approx(4.0)}
    assert perplexity_metrics(1e4)["perplexity"] == math.inf
    raises("use perplexity_metrics", compute_metrics, "alpaca", [1], [1])
    raises("2 predictions but 1 references", compute_metrics, "sst2", [1, 0], [1])
