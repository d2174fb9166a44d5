"""Reading CSV / TSV / JSONL files into normalized rows, and the generic `csv` task built on them.

Formats, chosen by the file suffix (a trailing `.gz` is decompressed first):

    .csv            comma-separated, header row, standard CSV quoting ("a, b" is one field)
    .tsv  .txt      tab-separated, header row, NO quote handling (the GLUE convention: a `"` is an ordinary
                    character, and GLUE/MRPC sentences contain unbalanced quotes)
    .jsonl          one JSON object a line
    .json           a JSON array of objects, or JSON Lines

A UTF-8 byte-order mark is skipped (the MRPC files start with one). CRLF line ends are accepted.

The generic `csv` task (`load_splits("csv", train_file=...)`) takes one or two text columns and a label
column from any such file. The label set is learned from the train file: string labels are sorted
alphabetically, integer labels numerically, and class id i is the i-th of them (so 0/1 labels keep their
values). Labels are a regression target when `regression=True`, or, with `regression=None`, when every label
is a number and at least one is not a whole number (like STS scores 3.8). An evaluation label outside the
train label set is a TaskError.
(`loading.load_splits` assembles the task; without an eval file it carves a seeded validation split.)
"""
from __future__ import annotations

import csv
import gzip
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from datasets import Dataset

from lorakit.tasks.base import TaskError, TaskSpec, label_to_id, make_dataset

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # IMDB-length fields exceed the 128 KiB default


@dataclass
class Table:
    """The rows of one file as dicts keyed by column name, with each row's line number for messages."""

    path: Path
    columns: list[str]
    rows: list[dict[str, Any]]
    lines: list[int]


def require_file(path: Path, layout: str) -> Path:
    """Return `path` if it is a file, else raise TaskError naming it and the expected layout."""
    if not path.is_file():
        raise TaskError(f"missing file {path}: expected {layout}")
    return path


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _format_of(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in (".csv", ".tsv", ".txt", ".jsonl", ".json"):
        return last[1:]
    raise TaskError(
        f"{path}: unknown file type {last or '(none)'!r}; use .csv, .tsv, .txt, .jsonl or .json (optionally .gz)")


def read_table(path: str | Path, header: tuple[str, ...] | None = None, skip_malformed: bool = False) -> Table:
    """Read a CSV/TSV/JSONL file (format from its suffix).

    header: column names for a delimited file WITHOUT a header row (e.g. CoLA); None reads the first row as header.
    skip_malformed: drop delimited rows whose field count differs from the header's (GLUE QQP has a few);
    otherwise such a row is a TaskError naming its line.
    """
    path = Path(path)
    require_file(path, "a .csv, .tsv or .jsonl file")
    kind = _format_of(path)
    try:
        if kind in ("jsonl", "json"):
            return _read_json(path)
        return _read_delimited(path, kind, header, skip_malformed)
    except UnicodeDecodeError as err:
        raise TaskError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8") from None


def _read_delimited(path: Path, kind: str, header: tuple[str, ...] | None, skip_malformed: bool) -> Table:
    delimiter = "," if kind == "csv" else "\t"
    quoting = csv.QUOTE_MINIMAL if kind == "csv" else csv.QUOTE_NONE
    rows, lines = [], []
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        columns = list(header) if header is not None else next(reader, None)
        if columns is None:
            raise TaskError(f"{path} is empty; expected a header row and at least one example")
        columns = [c.strip() for c in columns]
        for fields in reader:
            if not fields:
                continue  # blank line
            if len(fields) != len(columns):
                if skip_malformed:
                    continue
                raise TaskError(
                    f"{path} line {reader.line_num}: {len(fields)} fields but {len(columns)} columns {columns}; "
                    f"fix the row or check the delimiter ({'comma' if delimiter == ',' else 'tab'} for .{kind})"
                )
            rows.append(dict(zip(columns, fields)))
            lines.append(reader.line_num)
    return Table(path, columns, rows, lines)


def _read_json(path: Path) -> Table:
    with _open_text(path) as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise TaskError(f"{path} line {e.lineno}: invalid JSON ({e.msg}, column {e.colno}); expected a JSON "
                            "array of objects, or one JSON object a line") from None
        lines = list(range(1, len(records) + 1))  # array index, 1-based
    else:
        records, lines = [], []
        for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 is text
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise TaskError(f"{path} line {number}: invalid JSON ({e.msg}, column {e.colno}); expected "
                                    "one JSON object a line") from None
                lines.append(number)
    if not all(isinstance(r, dict) for r in records):
        raise TaskError(f"{path}: every record must be a JSON object with named fields")
    columns = list(records[0]) if records else []
    return Table(path, columns, records, lines)


def check_columns(table: Table, wanted: tuple[str, ...] | list[str],
                  option: str = "--text-columns/--label-column") -> None:
    """Raise TaskError if a wanted column is missing, listing the file's columns, or (text columns, then the
    label column) a text column is the label column: the model would read its own labels."""
    if len(wanted) > 1 and wanted[-1] in wanted[:-1]:
        raise TaskError(f"{table.path}: column {wanted[-1]!r} is both a text column and the label column, so the "
                        "model would train on its labels; give the text with --text-column and the labels with "
                        "--label-column, two different columns")
    for name in wanted:
        if name not in table.columns:
            raise TaskError(
                f"column {name!r} not found in {table.path}; its columns are: {', '.join(table.columns) or '(none)'}; "
                f"choose among them with {option}"
            )


def table_to_dataset(
    table: Table,
    text_columns: tuple[str, ...],
    label_column: str,
    to_label: Callable[[Any, str], int | float],
    skip_unlabelled: bool = False,
) -> Dataset:
    """Normalized rows (text, text_pair?, label) from a table.

    to_label(raw_value, where) maps one raw label or raises TaskError. skip_unlabelled drops rows whose label is
    empty (e.g. the unlabelled rows some test files have); otherwise they reach to_label and fail there.
    """
    if len(text_columns) not in (1, 2):
        raise TaskError(f"give one or two text columns, got {list(text_columns)}")
    check_columns(table, (*text_columns, label_column))
    texts, pairs, labels = [], ([] if len(text_columns) == 2 else None), []
    for row, line in zip(table.rows, table.lines):
        raw = row.get(label_column)
        if skip_unlabelled and (raw is None or (isinstance(raw, str) and not raw.strip())):
            continue
        where = f"{table.path} line {line}"
        values = [row.get(c) for c in text_columns]
        if any(not isinstance(v, str) for v in values):
            raise TaskError(f"{where}: text column(s) {list(text_columns)} must hold strings, got {values!r}"[:300])
        labels.append(to_label(raw, where))
        texts.append(values[0])
        if pairs is not None:
            pairs.append(values[1])
    return make_dataset(texts, pairs, labels, str(table.path))


def spec_label_mapper(spec: TaskSpec) -> Callable[[Any, str], int | float]:
    """to_label for a known task: its own label names or ids (see base.label_to_id)."""
    return lambda value, where: label_to_id(value, spec, where)


# ----------------------------------------------------------------------------------------------- the csv task

FILE_TASK = TaskSpec(
    name="csv",
    text_columns=("text",),
    label_column="label",
    num_labels=2,  # placeholder: the real label set is read from the train file
    label_names=None,
    metric_names=("accuracy", "f1"),
    main_metric="accuracy",
    hub_path=None,
    hub_splits=(),
    local_layout="train_file (and optionally eval_file): .csv/.tsv/.jsonl with the text column(s) and a label column",
)


def _is_int(value: Any) -> bool:
    """An integer class id: 1, "1", and the same number written as a whole float (1.0, "1.0": one class with 1)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        return True
    return _is_number(value) and math.isfinite(float(value)) and float(value).is_integer()


def _class_id(value: Any) -> int:
    """The integer of an _is_int value ("1.0" -> 1; digits exactly, however long)."""
    text = str(value).strip()
    return int(text) if text.lstrip("-").isdigit() else int(float(value))


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def infer_label_spec(table: Table, label_column: str, text_columns: tuple[str, ...],
                     regression: bool | None) -> TaskSpec:
    """The csv task's spec with the label set (or regression) read from the train table."""
    check_columns(table, (*text_columns, label_column))
    values = [row.get(label_column) for row in table.rows]
    if not values:
        raise TaskError(f"{table.path} has no rows; the train file needs at least one labelled example")
    check_label_values(table, label_column, regression)
    if regression is None:
        regression = all(_is_number(v) for v in values) and not all(float(v).is_integer() for v in values)
    spec = replace(FILE_TASK, text_columns=tuple(text_columns), label_column=label_column)
    if regression:
        return replace(spec, num_labels=1, label_names=None, metric_names=("pearson", "spearman"),
                       main_metric="pearson")
    if all(_is_int(v) for v in values):
        classes = [str(v) for v in sorted({_class_id(v) for v in values})]
    else:
        classes = sorted({str(v).strip() for v in values})
    if len(classes) < 2:
        raise TaskError(f"{table.path}: column {label_column!r} has a single label {classes}; "
                        "classification needs two or more (or pass regression=True)")
    metrics = ("accuracy", "f1") if len(classes) == 2 else ("accuracy", "macro_f1")
    return replace(spec, num_labels=len(classes), label_names=tuple(classes), metric_names=metrics,
                   main_metric="accuracy")


def _lines_of(table: Table, bad: list[int]) -> str:
    shown = ", ".join(str(table.lines[i]) for i in bad[:5])
    return f"line{'s' if len(bad) > 1 else ''} {shown}{', ...' if len(bad) > 5 else ''}"


def check_label_values(table: Table, label_column: str, regression: bool | None) -> None:
    """A label column that cannot be what the user meant is an error listing the unexpected values and their lines:
    empty cells, numbers that are not finite, or names among integer class ids (0/1 and 'yes')."""
    values = [row.get(label_column) for row in table.rows]
    where = f"{table.path}: column {label_column!r}"
    empty = [i for i, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip())]
    if empty:
        raise TaskError(f"{where} has {len(empty)} empty label(s) ({_lines_of(table, empty)}); give every row a "
                        "label, or remove the unlabelled rows")
    numbers = [i for i, v in enumerate(values) if _is_number(v)]
    infinite = [i for i in numbers if not math.isfinite(float(values[i]))]
    if infinite:
        raise TaskError(f"{where} holds {sorted({str(values[i]) for i in infinite})} ({_lines_of(table, infinite)}); "
                        "labels must be finite: fix or remove those rows")
    integers = [i for i, v in enumerate(values) if _is_int(v)]
    odd = [i for i in range(len(values)) if not _is_number(values[i])]
    if integers and odd:  # (integers mixed with fractions are scores: regression)
        unexpected = sorted({str(values[i]) for i in odd})[:10]
        raise TaskError(f"{where} mixes integer class ids {sorted({_class_id(values[i]) for i in integers})[:10]} with "
                        f"other values {unexpected} ({_lines_of(table, odd)}); make every label one kind (class "
                        "ids or names): fix or remove those rows")


def file_task_mapper(spec: TaskSpec) -> Callable[[Any, str], int | float]:
    """to_label for the csv task: float for regression, else the index of the label's text in the train label set."""
    if spec.is_regression:
        return lambda value, where: label_to_id(value, spec, where)
    index = {name: i for i, name in enumerate(spec.label_names)}

    def to_label(value: Any, where: str) -> int:
        key = str(_class_id(value)) if _is_int(value) else str(value).strip()
        if key not in index:
            raise TaskError(
                f"{where}: label {value!r} is not in the label set learned from the train file {list(index)}")
        return index[key]

    return to_label
