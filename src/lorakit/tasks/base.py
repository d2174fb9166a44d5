"""The shared vocabulary of every task: the error class, the static task description and the loaded data.

Every task, whatever its source (Hugging Face hub, a benchmark's original files, a user's CSV), is loaded into
rows with the same normalized columns, so the training loop never sees a dataset-specific column name:

    text        the first (or only) input text
    text_pair   the second text of sentence-pair tasks (absent for single-text tasks)
    label       int class id in [0, num_labels), or float for regression (num_labels == 1)

(That is the sequence-classification row; extractive QA and instruction tasks, other `kind`s, have their own
normalized columns, documented in squad.py and instruct.py.)

A `TaskSpec` holds the static facts about a task (labels, metrics, hub location); `TaskData` is what
`load_splits` returns: the spec (resolved from the data for the generic `csv` task), the train split and the
evaluation splits by name.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

TEXT = "text"
TEXT_PAIR = "text_pair"
LABEL = "label"

# The Hugging Face model head a task trains; the loop picks the AutoModel class from it.
SEQUENCE_CLASSIFICATION = "sequence_classification"
QUESTION_ANSWERING = "question_answering"  # extractive QA (SQuAD), rows as in squad.py
CAUSAL_LM = "causal_lm"  # instruction tuning of a causal LM, rows as in instruct.py


class TaskError(ValueError):
    """Bad task input (unknown task, missing file, wrong column, bad label, empty split).

    The message is one line naming the problem and the fix; the CLI prints it and exits with status 2.
    """


@dataclass(frozen=True)
class TaskSpec:
    """Static facts about one task. num_labels == 1 means regression (Hugging Face's convention)."""

    name: str  # registry key, e.g. "sst2"
    text_columns: tuple[str, ...]  # source column names of the text(s): one, or two for sentence pairs
    label_column: str  # source column name of the label
    num_labels: int  # number of classes; 1 => regression on a float label
    label_names: tuple[str, ...] | None  # class names by id (string labels in files map to their index)
    metric_names: tuple[str, ...]  # keys of compute_metrics' result
    main_metric: str  # the metric used to pick the best checkpoint (greater is better)
    hub_path: tuple[str, str | None] | None  # datasets.load_dataset(path, name); None: no hub source
    hub_splits: tuple[str, ...] = ("train", "validation")  # labelled hub splits; all but "train" are eval splits
    local_layout: str = ""  # the files expected under data_dir, quoted in error messages
    kind: str = SEQUENCE_CLASSIFICATION  # model head: SEQUENCE_CLASSIFICATION, QUESTION_ANSWERING or CAUSAL_LM
    # read_local(spec, data_dir) -> normalized splits by name ("train", "validation", ..., "test"); None: hub only
    read_local: Callable[[TaskSpec, Path], dict[str, Dataset]] | None = field(default=None, compare=False, repr=False)
    # Tasks whose rows are not (text, text_pair, label) supply their own readers:
    # read_file(spec, path, text_columns, label_column) -> normalized rows of one user file (train_file/eval_file)
    read_file: Callable[[TaskSpec, Path, tuple[str, ...] | None, str | None], Dataset] | None = field(
        default=None, compare=False, repr=False)
    # read_hub(spec, dataset_dict) -> normalized splits of what datasets.load_dataset(*hub_path) returned
    read_hub: Callable[[TaskSpec, Any], dict[str, Dataset]] | None = field(default=None, compare=False, repr=False)
    # rows sharing a value of this column stay on one side of every seeded carve (SQuAD: "title", the article)
    group_column: str | None = None

    def __post_init__(self):
        if self.main_metric not in self.metric_names:
            raise ValueError(f"TaskSpec {self.name}: main_metric {self.main_metric!r} not in {self.metric_names}")
        if self.label_names is not None and len(self.label_names) != self.num_labels:
            raise ValueError(f"TaskSpec {self.name}: {len(self.label_names)} label_names for {self.num_labels} labels")

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def problem_type(self) -> str:
        """The value for transformers' `config.problem_type`."""
        return "regression" if self.is_regression else "single_label_classification"

    @property
    def id2label(self) -> dict[int, str] | None:
        """For the model config; None for regression."""
        if self.is_regression:
            return None
        names = self.label_names or tuple(str(i) for i in range(self.num_labels))
        return dict(enumerate(names))


@dataclass
class TaskData:
    """What `load_splits` returns. `eval` is ordered: its first split is the one the main metric is read on."""

    spec: TaskSpec
    train: Dataset
    eval: dict[str, Dataset]


def label_to_id(value: Any, spec: TaskSpec, where: str) -> int | float:
    """Map one raw label (int, numeric string or class name) to the normalized label, or raise TaskError.

    `where` names the file and row for the message, e.g. "dev.tsv row 12".
    """
    if spec.is_regression:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TaskError(
                f"{where}: label {value!r} is not a number; task {spec.name} is a regression task") from None
        if not np.isfinite(number):
            raise TaskError(f"{where}: label {value!r} is not a finite number; fix or remove the row")
        return number
    number = value
    if isinstance(value, str):
        stripped = value.strip()
        if spec.label_names is not None and stripped in spec.label_names:
            return spec.label_names.index(stripped)
        if stripped.lstrip("-").isdigit():
            number = int(stripped)
    if isinstance(number, (int, np.integer)) and not isinstance(number, bool) and 0 <= number < spec.num_labels:
        return int(number)
    accepted = list(range(spec.num_labels)) + list(spec.label_names or ())
    raise TaskError(
        f"{where}: label {value!r} is outside the label set of task {spec.name}; accepted labels: {accepted}")


def make_dataset(texts: list[str], pairs: list[str] | None, labels: list, where: str) -> Dataset:
    """Build a normalized Dataset from parallel lists; an empty split is a TaskError naming `where`."""
    if not texts:
        raise TaskError(f"{where} has no labelled rows; give a file with at least one example")
    columns: dict[str, list] = {TEXT: texts}
    if pairs is not None:
        columns[TEXT_PAIR] = pairs
    columns[LABEL] = labels
    return Dataset.from_dict(columns)


def split_off(dataset: Dataset, fraction: float, seed: int, what: str,
              group_column: str | None = None) -> tuple[Dataset, Dataset]:
    """Seeded disjoint split: returns (rest, carved) with `carved` holding round(fraction * n) rows (at least 1).

    group_column: carve whole groups instead of rows (round(fraction * number of groups) of them, at least 1),
    so that no value of the column is in both parts (SQuAD articles). Without it every row is its own group.
    Rows keep their original relative order inside each part.
    """
    if not 0.0 < fraction < 1.0:
        raise TaskError(f"{what}: split fraction must be in (0, 1), got {fraction!r}")
    n = len(dataset)
    if group_column is None:
        if n < 2:
            raise TaskError(f"{what}: cannot split {n} row(s) into two non-empty parts; give more data")
        group_of_row = np.arange(n)  # group id of each row
    else:
        if group_column not in dataset.column_names:
            raise TaskError(f"{what}: no column {group_column!r} to split by; columns are {dataset.column_names}")
        values = dataset.select_columns([group_column]).to_dict()[group_column]  # one read, not row by row
        _, group_of_row = np.unique(np.asarray(values, dtype=object), return_inverse=True)
        if group_of_row.size == 0 or group_of_row.max() < 1:
            raise TaskError(f"{what}: cannot split the rows of a single {group_column!r} into two parts "
                            "with no shared value; give more data")
    n_groups = int(group_of_row.max()) + 1
    n_carved = min(max(1, round(fraction * n_groups)), n_groups - 1)
    order = np.random.default_rng(seed).permutation(n_groups)
    in_carved = np.isin(group_of_row, order[:n_carved])  # (n,) bool; for rows-as-groups: the first n_carved drawn
    return dataset.select(np.flatnonzero(~in_carved)), dataset.select(np.flatnonzero(in_carved))


def subsample(dataset: Dataset, max_rows: int | None, seed: int) -> Dataset:
    """A seeded random subset of at most max_rows rows (original order kept); the dataset itself if smaller."""
    if max_rows is None or len(dataset) <= max_rows:
        return dataset
    if max_rows <= 0:
        raise TaskError(f"max samples must be a positive integer, got {max_rows!r}")
    keep = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:max_rows])
    return dataset.select(keep)
