"""Local file layouts of benchmark tasks: which files under `data_dir` hold which split, in which columns.

A task may accept several layouts (CoLA: GLUE's train.tsv/dev.tsv or the cola_public release's raw files),
each possibly inside a sub-folder of data_dir (SST-2: `data_dir/` or `data_dir/glue/`). The first layout whose
required files exist is read; if none matches, the TaskError names the missing file and every accepted layout.

Split names: "train", the evaluation splits ("validation", or "validation_matched"/"validation_mismatched"
for MNLI), and "test" only where the test file is labelled. A split listing several files is their
concatenation in order (GLUE CoLA dev = in_domain_dev + out_of_domain_dev). A split whose first file is absent
is skipped unless it is required; `load_splits` then carves the missing train or validation split.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, concatenate_datasets

from lorakit.tasks.base import TaskError, TaskSpec
from lorakit.tasks.files import read_table, require_file, spec_label_mapper, table_to_dataset


@dataclass(frozen=True)
class Layout:
    """One way a task's files can lie under data_dir."""

    description: str  # for messages, e.g. "GLUE tsv: train.tsv, dev.tsv"
    files: tuple[tuple[str, tuple[str, ...]], ...]  # (split, file names relative to the folder), in split order
    text_columns: tuple[str, ...]  # column names inside these files
    label_column: str
    required: tuple[str, ...] = ("validation",)  # splits that must exist for this layout to match
    header: tuple[str, ...] | None = None  # column names for header-less files
    subdirs: tuple[str, ...] = ("",)  # folders under data_dir to look in, in order
    skip_malformed: bool = False  # drop rows with a wrong field count (GLUE QQP)

    def split_files(self, split: str) -> tuple[str, ...]:
        return dict(self.files).get(split, ())

    def first_file(self, split: str) -> str:
        return self.split_files(split)[0]


@dataclass(frozen=True)
class LayoutReader:
    """TaskSpec.read_local for tasks stored as tables: tries `layouts` in order."""

    layouts: tuple[Layout, ...]

    def describe(self) -> str:
        return " | or: ".join(layout.description for layout in self.layouts)

    def __call__(self, spec: TaskSpec, data_dir: Path) -> dict[str, Dataset]:
        folder, layout = self.find(spec, Path(data_dir))
        return read_layout(spec, folder, layout)

    def find(self, spec: TaskSpec, data_dir: Path) -> tuple[Path, Layout]:
        if not data_dir.is_dir():
            raise TaskError(f"data_dir {data_dir} is not a directory; task {spec.name} expects {self.describe()}")
        for layout in self.layouts:
            for sub in layout.subdirs:
                folder = data_dir / sub
                # a layout matches when the first file of any of its required splits exists
                if any((folder / layout.first_file(split)).is_file() for split in layout.required):
                    return folder, layout
        first = self.layouts[0]
        missing = data_dir / first.first_file(first.required[0])
        raise TaskError(f"missing file {missing}: task {spec.name} expects data_dir to hold {self.describe()}")


def read_layout(spec: TaskSpec, folder: Path, layout: Layout) -> dict[str, Dataset]:
    """Read every present split of `layout` under `folder` into normalized datasets."""
    to_label = spec_label_mapper(spec)
    splits: dict[str, Dataset] = {}
    for split, names in layout.files:
        if not (folder / names[0]).is_file():
            if split in layout.required and split != "train":
                require_file(folder / names[0], f"task {spec.name} layout {layout.description}")
            continue
        parts = []
        for name in names:
            path = require_file(folder / name, f"task {spec.name} layout {layout.description}")
            table = read_table(path, header=layout.header, skip_malformed=layout.skip_malformed)
            parts.append(table_to_dataset(table, layout.text_columns, layout.label_column, to_label))
        splits[split] = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    return splits
