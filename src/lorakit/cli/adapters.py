"""`lorakit eval` and `lorakit predict` with several --adapter: one model load, one result per adapter.

    lorakit eval --adapter runs/sst2 --adapter imdb=runs/imdb --task sst2
    lorakit predict --adapter runs/sst2 --adapter runs/imdb "a gripping film"

The first adapter decides the base model, the quantization and (unless --task) the task, as with one adapter; the
others join it on the same loaded model (lorakit.load_adapter(..., name=...)) and must have been trained on the same
base. Each is labelled NAME from NAME=DIR, else by its run directory's name.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lorakit.errors import UserError

if TYPE_CHECKING:  # `lorakit --help` imports no torch
    from torch import nn


def adapter_dirs(values: str | list[str] | None) -> list[tuple[str, str]]:
    """(label, directory) per --adapter value (NAME=DIR or DIR), in the order given."""
    values = [values] if isinstance(values, str) else list(values or [])
    pairs = []
    for value in values:
        label, sep, directory = value.partition("=")
        if not sep:
            path = Path(value.rstrip("/"))
            label, directory = (path.parent.name if path.name == "adapter" else path.name) or value, value
        pairs.append((label, directory))
    labels = [label for label, _ in pairs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise UserError(f"--adapter: the label {repeated[0]!r} is given to several adapters; name them apart with "
                        "NAME=DIR (for example --adapter sst2=runs/a --adapter imdb=runs/b)")
    return pairs


def load_more_adapters(model: nn.Module, first: str, more: list[tuple[str, str]]) -> None:
    """Load every (label, dir) of `more` beside the first adapter (the model's "default"), as adapter-1, -2, ..."""
    from lorakit import load_adapter
    from lorakit.training.methods import find_artifact, read_record

    if not more:
        return
    first_record = read_record(find_artifact(first))
    for i, (label, directory) in enumerate(more, start=1):
        if not Path(directory).is_dir():
            raise UserError(f"--adapter {directory}: no such directory; give a `lorakit train` output directory or "
                            "an adapter directory")
        art = find_artifact(directory)
        record = read_record(art)
        for key in ("base_model", "quantization"):
            if record.get(key) != first_record.get(key):
                raise UserError(f"--adapter {label}: its {key.replace('_', ' ')} is {record.get(key)!r}, the first "
                                f"adapter's {first_record.get(key)!r}; adapters evaluated together must share "
                                "their base model: run them separately")
        load_adapter(model, art, name=f"adapter-{i}")


def each_adapter(model: nn.Module, labels: list[str]) -> Iterator[str]:
    """Set each adapter in turn (the first is "default") and yield its label."""
    from lorakit import set_adapter

    for i, label in enumerate(labels):
        set_adapter(model, "default" if i == 0 else f"adapter-{i}")
        yield label
