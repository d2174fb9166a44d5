"""IMDB movie-review sentiment (Maas et al. 2011): 25k train / 25k test reviews, labels 0 = neg, 1 = pos.

There is no official validation split: `load_splits` carves a seeded `eval_split_fraction` of train into
"validation", and the official test set is the extra "test" evaluation split (include_test=True).

Hub source: `datasets.load_dataset("stanfordnlp/imdb")` (splits train / test / unsupervised; the last is unused).
Local layouts (data_dir):
    train.jsonl(.gz) / test.jsonl(.gz)   one JSON object a line with "text" and "label" (0/1)
    aclImdb/ original release            train/{neg,pos}/*.txt and test/{neg,pos}/*.txt (data_dir may be aclImdb
                                         itself or its parent); one review per file, read in file-name order
Review text is kept as is (it still holds `<br />` breaks, as on the hub).
"""
from __future__ import annotations

from pathlib import Path

from datasets import Dataset

from lorakit.tasks.base import TaskError, TaskSpec, make_dataset
from lorakit.tasks.layouts import Layout, LayoutReader

CLASSES = ("neg", "pos")
JSONL_LAYOUTS = tuple(
    Layout(
        f"train.{ext} and test.{ext} (fields text, label)",
        (("train", (f"train.{ext}",)), ("test", (f"test.{ext}",))),
        ("text",), "label", required=("train",),
    )
    for ext in ("jsonl.gz", "jsonl")
)
ACLIMDB_DESCRIPTION = "aclImdb release (train/{neg,pos}/*.txt, test/{neg,pos}/*.txt)"


def _review_folder(data_dir: Path) -> Path | None:
    for folder in (data_dir, data_dir / "aclImdb"):
        if (folder / "train" / "pos").is_dir() and (folder / "train" / "neg").is_dir():
            return folder
    return None


def _read_reviews(split_dir: Path) -> Dataset:
    texts, labels = [], []
    for label, name in enumerate(CLASSES):
        folder = split_dir / name
        if not folder.is_dir():
            raise TaskError(f"missing folder {folder}: expected {ACLIMDB_DESCRIPTION}")
        for path in sorted(folder.glob("*.txt")):
            texts.append(path.read_text(encoding="utf-8"))
            labels.append(label)
    return make_dataset(texts, None, labels, str(split_dir))


def read_imdb(spec: TaskSpec, data_dir: Path) -> dict[str, Dataset]:
    """TaskSpec.read_local for IMDB: the jsonl files if present, else the aclImdb text-file tree."""
    data_dir = Path(data_dir)
    if any((data_dir / layout.first_file("train")).is_file() for layout in JSONL_LAYOUTS):
        return LayoutReader(JSONL_LAYOUTS)(spec, data_dir)
    folder = _review_folder(data_dir) if data_dir.is_dir() else None
    if folder is None:
        raise TaskError(
            f"missing file {data_dir / 'train.jsonl.gz'}: task imdb expects data_dir to hold {spec.local_layout}")
    splits = {"train": _read_reviews(folder / "train")}
    if (folder / "test").is_dir():
        splits["test"] = _read_reviews(folder / "test")
    return splits


IMDB = TaskSpec(
    name="imdb",
    text_columns=("text",),
    label_column="label",
    num_labels=2,
    label_names=CLASSES,
    metric_names=("accuracy",),
    main_metric="accuracy",
    hub_path=("stanfordnlp/imdb", None),
    hub_splits=("train", "test"),
    local_layout=f"{LayoutReader(JSONL_LAYOUTS).describe()} | or: {ACLIMDB_DESCRIPTION}",
    read_local=read_imdb,
)
