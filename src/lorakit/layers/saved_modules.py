"""Per-adapter copies of a module trained in full (modules_to_save: a classifier head, a pooler, ...).

With one adapter the module trains in place and is saved under its own path, PEFT's key. When a second adapter also
trains the module, `HeadCopies` takes its place: one copy per adapter, under PEFT's in-memory names
("<path>.modules_to_save.<adapter>.weight"), and the copy of the adapter in use computes. Saved files keep PEFT's
keys ("<path>.weight"); `file_key` / `param_name` map between the two.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class HeadCopies(nn.Module):
    """One copy of a module per adapter; `active` computes, or each row its adapter's copy in a mixed batch.
    `original` is the base model's module when an adapter that does not train it may be in use (else None)."""

    def __init__(self, copies: dict[str, nn.Module], active: str | None, original: nn.Module | None):
        super().__init__()
        self.modules_to_save = nn.ModuleDict(copies)
        self.original_module = original
        self.active = active
        self.row_names: list[str | None] | None = None  # a mixed batch (named.mixed_batch)

    def copy_for(self, name: str | None) -> nn.Module:
        """The module adapter `name` computes with: its copy, else the base model's, else the active copy."""
        if name in self.modules_to_save:
            return self.modules_to_save[name]
        if self.original_module is not None:
            return self.original_module
        return self.modules_to_save[self.active] if self.active in self.modules_to_save else next(
            iter(self.modules_to_save.values()))

    @property
    def weight(self) -> torch.Tensor:
        """The weight in use (models read e.g. `classifier.weight.dtype`)."""
        return self.copy_for(self.active).weight

    def add_copy(self, name: str) -> None:
        """A copy for adapter `name`, from the base model's module when kept, else from the copy in use (the first
        adapter trained the module in place; PEFT keeps the base model's, lorakit's one-adapter path does not)."""
        self.modules_to_save[name] = copy.deepcopy(self.copy_for(None))

    def set_active(self, names: tuple[str, ...]) -> None:
        """The first of `names` with a copy computes (and trains); None: the base model's module."""
        self.active = next((n for n in names if n in self.modules_to_save), None)
        for name, module in self.modules_to_save.items():
            module.requires_grad_(name == self.active)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.row_names is None:
            return self.copy_for(self.active)(x)
        out = None
        for name in dict.fromkeys(self.row_names):  # each adapter's copy on its own rows
            rows = [i for i, n in enumerate(self.row_names) if n == name]
            part = self.copy_for(name)(x[rows])  # None: the base model's module or the copy in use
            out = part.new_empty(x.shape[0], *part.shape[1:]) if out is None else out
            out[rows] = part
        return out


def file_key(param: str, name: str) -> str | None:
    """The saved key of parameter `param` for adapter `name`: "<p>.modules_to_save.<name>.w" -> "<p>.w"; None for
    another adapter's copy or the base model's module."""
    if ".original_module." in param:
        return None
    head, sep, rest = param.partition(".modules_to_save.")
    if not sep:
        return param
    owner, _, leaf = rest.partition(".")
    return f"{head}.{leaf}" if owner == name else None


def param_name(key: str, name: str, params: dict) -> str:
    """The parameter of adapter `name` that saved key "<p>.<leaf>" fills: "<p>.modules_to_save.<name>.<leaf>" when
    the module at some prefix p is wrapped, else the key itself."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        wrapped = ".".join([*parts[:i], "modules_to_save", name, *parts[i:]])
        if wrapped in params:
            return wrapped
    return key
