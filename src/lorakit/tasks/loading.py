"""The task registry and `load_splits`: one entry point from a task name to normalized train / eval datasets.

Sources, in order of precedence:
    train_file / eval_file   any .csv/.tsv/.jsonl file (the `csv` task always reads these)
    data_dir                 a benchmark's original files (each task's accepted layouts: TaskSpec.local_layout)
    (neither)                the Hugging Face hub, `datasets.load_dataset(*TaskSpec.hub_path)`

Missing splits are carved, seeded and disjoint, from what exists:
    no validation split (IMDB, MRPC's original files, a csv task without eval_file):
        `eval_split_fraction` (default 0.1) of train becomes "validation"; train keeps the rest.
    no train split (QNLI here ships dev.tsv only; so does shared/data/squad_v1.1):
        only on request: `split_from_eval=F` (CLI --split-from-eval F) moves a fraction F of the first
        evaluation split into train; the rest stays the evaluation split. Without it, a TaskError says so.
Tasks with a TaskSpec.group_column carve whole groups (SQuAD: a fraction F of the articles), so no article is
in both parts.
"""
from __future__ import annotations

from pathlib import Path

from datasets import Dataset

from lorakit.tasks.base import LABEL, SEQUENCE_CLASSIFICATION, TEXT, TEXT_PAIR, TaskData, TaskError, TaskSpec, split_off, subsample
from lorakit.tasks.files import FILE_TASK, infer_label_spec, file_task_mapper, read_table, spec_label_mapper, table_to_dataset
from lorakit.tasks.glue import GLUE_TASKS
from lorakit.tasks.imdb import IMDB
from lorakit.tasks.instruct import INSTRUCT_TASKS
from lorakit.tasks.squad import SQUAD_TASKS

TASKS: dict[str, TaskSpec] = {
    spec.name: spec for spec in (*GLUE_TASKS, IMDB, FILE_TASK, *SQUAD_TASKS, *INSTRUCT_TASKS)
}


def task_names() -> list[str]:
    return sorted(TASKS)


def _accepted_by_kind() -> str:
    """Task names grouped by kind: "cola, csv, ...; causal lm: alpaca, ...; question answering: squad, ..."."""
    groups: dict[str, list[str]] = {}
    for name in task_names():
        groups.setdefault(TASKS[name].kind, []).append(name)
    parts = [", ".join(groups.pop(SEQUENCE_CLASSIFICATION, []))]
    parts += [f"{kind.replace('_', ' ')}: {', '.join(names)}" for kind, names in groups.items()]
    return "; ".join(part for part in parts if part)


def get_task(name: str) -> TaskSpec:
    """The spec of a registered task, or TaskError listing the accepted names."""
    key = name.strip().lower().replace("-", "")  # "SST-2" -> "sst2", "STS-B" -> "stsb"
    if key not in TASKS:
        raise TaskError(f"unknown task {name!r}; accepted tasks: {_accepted_by_kind()}")
    return TASKS[key]


def load_splits(
    task_name: str,
    data_dir: str | Path | None = None,
    train_file: str | Path | None = None,
    eval_file: str | Path | None = None,
    text_columns: tuple[str, ...] | list[str] | None = None,
    label_column: str | None = None,
    regression: bool | None = None,
    eval_split_fraction: float = 0.1,
    split_from_eval: float | None = None,
    include_test: bool = False,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 42,
) -> TaskData:
    """Load a task's train split and evaluation splits as normalized rows (text, text_pair?, label).

    task_name: a registered task (`task_names()`); "csv" reads train_file / eval_file with the given columns.
    data_dir: folder of local files in one of the task's original layouts; None (and no files) = the hub.
    train_file, eval_file: .csv/.tsv/.jsonl files, read with text_columns / label_column (default: the task's
        hub column names; for "csv": ("text",) and "label"). Labels: class names or ids of the task.
        squad / squad_v2 read official SQuAD JSON; instruction tasks read JSON / JSONL records, with
        text_columns = (instruction column[, input column]) and label_column = the response column.
    regression: csv task only: True = float target, False = classes, None = infer (see files.py).
    eval_split_fraction: share of train carved into "validation" where no validation split exists.
    split_from_eval: share of the evaluation split carved into train where no train split exists.
    include_test: also evaluate on the labelled test split ("test") where one exists (IMDB, SST-2
        test-labeled.tsv, MRPC msr_paraphrase_test.txt); a TaskError where none does.
    max_train_samples, max_eval_samples: seeded random subsets (each eval split separately), for quick runs.
    seed: drives every carve and subset, so the same seed gives the same rows.

    Returns TaskData(spec, train, eval): `eval` maps split names to datasets, the main one first
    ("validation"; MNLI: "validation_matched", "validation_mismatched"; then "test" if requested).
    """
    spec = get_task(task_name)
    if text_columns is not None:
        text_columns = tuple(text_columns)
    if train_file is not None or eval_file is not None:
        if data_dir is not None:
            raise TaskError("give either data_dir or train_file/eval_file, not both")
        spec, splits = _read_files(spec, train_file, eval_file, text_columns, label_column, regression)
        source = "the given files"
    elif spec is FILE_TASK:
        raise TaskError("task csv reads train_file (and optionally eval_file); pass --train-file PATH")
    elif text_columns is not None or label_column is not None:
        raise TaskError("text_columns / label_column apply to train_file / eval_file only; "
                        f"data_dir and hub sources of task {spec.name} have fixed columns")
    elif data_dir is not None:
        splits = spec.read_local(spec, Path(data_dir))
        source = str(data_dir)
    elif spec.hub_path is None:
        raise TaskError(f"task {spec.name} has no hub source; pass data_dir or train_file: {spec.local_layout}")
    else:
        splits = _read_hub(spec)
        source = "the hub"

    eval_names = [name for name in splits if name not in ("train", "test")]
    if "train" not in splits:
        if not eval_names:
            raise TaskError(f"task {spec.name}: no train or evaluation split found in {source}")
        if split_from_eval is None:
            raise TaskError(
                f"task {spec.name} has no train split in {source}; pass split_from_eval=F (--split-from-eval F, "
                f"e.g. 0.5) to carve a seeded train split out of {eval_names[0]!r}"
            )
        splits[eval_names[0]], splits["train"] = split_off(
            splits[eval_names[0]], split_from_eval, seed, f"carving train from {spec.name} {eval_names[0]}",
            spec.group_column)
    elif split_from_eval is not None:
        raise TaskError(
            f"task {spec.name} has a train split in {source}; split_from_eval is only for tasks without one")
    if not eval_names:
        splits["train"], splits["validation"] = split_off(
            splits["train"], eval_split_fraction, seed, f"carving validation from {spec.name} train",
            spec.group_column)
        eval_names = ["validation"]
    if include_test:
        if "test" not in splits:
            raise TaskError(f"task {spec.name} has no labelled test split in {source}; drop include_test (--eval-test)")
        eval_names.append("test")

    train = subsample(splits["train"], max_train_samples, seed)
    evals = {name: subsample(splits[name], max_eval_samples, seed) for name in eval_names}
    return TaskData(spec, train, evals)


def _read_files(spec: TaskSpec, train_file, eval_file, text_columns, label_column, regression):
    """Splits from user files; the csv task learns its label set (and so its spec) from train_file."""
    if spec.read_file is not None:  # QA / instruction tasks: their own file formats and columns
        if regression is not None:
            raise TaskError(f"regression is only an option of the csv task; task {spec.name} is fixed by its spec")
        paths = {"train": train_file, "validation": eval_file}
        return spec, {name: spec.read_file(spec, Path(path), text_columns, label_column)
                      for name, path in paths.items() if path is not None}
    if spec is FILE_TASK:
        if train_file is None:
            raise TaskError("task csv needs train_file (the label set is read from it); pass --train-file PATH")
        text_columns = text_columns or FILE_TASK.text_columns
        label_column = label_column or FILE_TASK.label_column
        train_table = read_table(train_file)
        spec = infer_label_spec(train_table, label_column, text_columns, regression)
        to_label = file_task_mapper(spec)
        tables = {"train": train_table}
    else:
        if regression is not None:
            raise TaskError(f"regression is only an option of the csv task; task {spec.name} is fixed by its spec")
        text_columns = text_columns or spec.text_columns
        label_column = label_column or spec.label_column
        to_label = spec_label_mapper(spec)
        tables = {"train": read_table(train_file)} if train_file is not None else {}
    if eval_file is not None:
        tables["validation"] = read_table(eval_file)
    splits = {name: table_to_dataset(table, text_columns, label_column, to_label) for name, table in tables.items()}
    return spec, splits


def _read_hub(spec: TaskSpec) -> dict[str, Dataset]:
    """The task's labelled hub splits with normalized column names (needs network or a warm HF cache)."""
    from datasets import load_dataset

    path, name = spec.hub_path
    try:
        dataset_dict = load_dataset(path, name)
    except Exception as error:  # network, auth or cache problems: one line, with the local-files alternative
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise TaskError(
            f"could not load {path}{'/' + name if name else ''} from the Hugging Face hub "
            f"({type(error).__name__}: {detail[:200]}); pass data_dir with local files: {spec.local_layout}"
        ) from error
    if spec.read_hub is not None:
        return spec.read_hub(spec, dataset_dict)
    targets = (TEXT, TEXT_PAIR)[: len(spec.text_columns)]
    rename = {**dict(zip(spec.text_columns, targets)), spec.label_column: LABEL}
    return {split: dataset_dict[split].select_columns(list(rename)).rename_columns(rename) for split in spec.hub_splits}
