"""File readers shared by the task loaders, and the loader of user ("custom") classification files.

Every reader raises :class:`DataError` with one line naming the file and, where it applies, the line.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Example = dict[str, Any]
Record = tuple[str, dict[str, Any]]  # (location "file:line" or "file record N", JSON/CSV record)
_TEXT_GUESSES = (("text",), ("sentence",), ("sentence1", "sentence2"))


class DataError(ValueError):
    """A data file is missing or malformed; the message is one line naming the file (and line)."""


def _read_text(path: Path) -> str:
    """The UTF-8 text of ``path``; DataError when missing, unreadable or not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def delimited_rows(path: Path, *, quoted: bool, delimiter: str = "\t") -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank row; DataError for an empty file."""
    text = _read_text(path)
    rows: list[tuple[int, list[str]]] = []
    if quoted:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        start = 1
        try:
            for fields in reader:
                rows.append((start, fields))
                start = reader.line_num + 1
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: malformed row ({exc})") from None
    else:
        rows = [(i, line.rstrip("\r").split(delimiter)) for i, line in enumerate(text.split("\n"), 1)]
    rows = [(line, fields) for line, fields in rows if any(f.strip() for f in fields)]
    if not rows:
        raise DataError(f"{path}: empty data file (no rows)")
    return rows


def header_index(path: Path, rows: list[tuple[int, list[str]]], names: Sequence[str]) -> list[int]:
    """Column positions of ``names`` in the header row ``rows[0]``; DataError naming a missing column."""
    line, header = rows[0]
    header = [h.strip() for h in header]
    for name in names:
        if name not in header:
            raise DataError(f"{path}:{line}: missing column {name!r} (header has: {', '.join(header)})")
    if len(rows) < 2:
        raise DataError(f"{path}: empty data file (header only, no rows)")
    return [header.index(name) for name in names]


def json_records(path: Path) -> list[Record]:
    """Records of a JSON list file or a JSONL file (one object a line)."""
    text = _read_text(path)
    records: list[Record] = []
    if path.suffix.lower() == ".jsonl" or not text.lstrip().startswith("["):
        for i, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    records.append((f"{path}:{i}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{i}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"{path}:{exc.lineno}"
            raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        records = [(f"{path} record {k}", rec) for k, rec in enumerate(data)]
    for where, rec in records:
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if not records:
        raise DataError(f"{path}: empty data file (no rows)")
    return records


def _table_records(path: Path) -> list[Record]:
    """Records of a CSV (.csv) or TSV (any other suffix) file with a header row."""
    rows = delimited_rows(path, quoted=True, delimiter="," if path.suffix.lower() == ".csv" else "\t")
    header = [h.strip() for h in rows[0][1]]
    if len(rows) < 2:
        raise DataError(f"{path}: empty data file (header only, no rows)")
    records: list[Record] = []
    for line, fields in rows[1:]:
        values: list[str | None] = [*fields, *[None] * len(header)][: len(header)]  # short rows: None
        records.append((f"{path}:{line}", dict(zip(header, values, strict=True))))
    return records


def field(rec: dict[str, Any], name: str, where: str) -> Any:
    """``rec[name]``; DataError listing the fields present when it is missing (or None: a short row)."""
    if name not in rec:
        raise DataError(f"{where}: missing field {name!r} (fields present: {', '.join(map(str, rec))})")
    if rec[name] is None:
        raise DataError(f"{where}: too few fields: no value for {name!r}")
    return rec[name]


# ----------------------------------------------------------------------------------------------- custom
def _custom_records(path: str | None, option: str) -> list[Record]:
    """Records of a user file: JSON/JSONL by suffix, else CSV (.csv) or TSV."""
    if not path:
        raise DataError(f"task 'custom' needs {option} (a CSV, TSV, JSON or JSONL file)")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p}: file not found (given as {option})")
    return json_records(p) if p.suffix.lower() in (".json", ".jsonl") else _table_records(p)


def _as_int(value: Any) -> int | None:
    """``value`` as an int when it is one (1, 1.0, "1"), else None."""
    if isinstance(value, (bool, int)):
        return int(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    text = str(value).strip()
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else None


def _label_map(raw: Sequence[Any]) -> dict[str, int] | None:
    """None when labels are non-negative ints (kept as they are); else sorted unique values -> ids."""
    ints = [_as_int(v) for v in raw]
    if all(i is not None and i >= 0 for i in ints):
        return None
    return {name: k for k, name in enumerate(sorted({str(v).strip() for v in raw}))}


def _custom_fields(records: list[Record], text_fields: list[str] | str | None, label_field: str | None
                   ) -> tuple[list[str], str]:
    """The text field names (given, or guessed from the first record) and the label field name."""
    if isinstance(text_fields, str):
        text_fields = [name.strip() for name in text_fields.split(",") if name.strip()]
    if text_fields is not None and not 1 <= len(text_fields) <= 2:
        raise DataError(f"custom task takes 1 or 2 text fields, got {len(text_fields)}: {text_fields}")
    if text_fields is None:
        where, first = records[0]
        guess = next((g for g in _TEXT_GUESSES if all(f in first for f in g)), None)
        if guess is None:
            raise DataError(f"{where}: no text field given and none of text/sentence/sentence1+sentence2 "
                            f"present (fields present: {', '.join(map(str, first))}); pass --text-fields")
        text_fields = list(guess)
    return list(text_fields), label_field or "label"


def _custom_labels(records: list[Record], label_field: str) -> tuple[dict[str, int] | None, int]:
    """(string label -> id map or None when labels are kept ints, number of classes)."""
    raw = [field(rec, label_field, where) for where, rec in records]
    mapping = _label_map(raw)
    if mapping is None:
        return None, max(_as_int(v) or 0 for v in raw) + 1
    return mapping, len(mapping)


def load_custom(split: str, train_file: str | None, eval_file: str | None,
                text_fields: list[str] | str | None, label_field: str | None) -> list[Example]:
    """Classification examples of user files; string labels are mapped by the train file's sorted values."""
    option = "--train-file" if split == "train" else "--eval-file"
    records = _custom_records(train_file if split == "train" else eval_file, option)
    texts, label_field = _custom_fields(records, text_fields, label_field)
    reference = _custom_records(train_file, "--train-file") if split == "eval" and train_file else records
    mapping, num_labels = _custom_labels(reference, label_field)
    allowed = sorted(mapping) if mapping is not None else f"integers 0..{num_labels - 1}"
    out: list[Example] = []
    for where, rec in records:
        values = [str(field(rec, name, where)).strip() for name in texts]
        raw = field(rec, label_field, where)
        label = _as_int(raw) if mapping is None else mapping.get(str(raw).strip())
        if label is None or not 0 <= label < num_labels:
            raise DataError(f"{where}: label {raw!r} outside the train file's label set ({allowed})")
        out.append({"text": values[0], "text_pair": values[1] if len(values) > 1 else None, "label": label})
    return out


def custom_label_names(train_file: str | None, eval_file: str | None, text_fields: list[str] | str | None,
                       label_field: str | None) -> list[str]:
    """Class names of a custom task, ordered by id: ints 0..max, or the train file's sorted label values."""
    records = _custom_records(train_file or eval_file, "--train-file" if train_file else "--eval-file")
    _, label_field = _custom_fields(records, text_fields, label_field)
    mapping, num_labels = _custom_labels(records, label_field)
    if mapping is None:
        return [str(i) for i in range(num_labels)]
    return sorted(mapping, key=mapping.__getitem__)
