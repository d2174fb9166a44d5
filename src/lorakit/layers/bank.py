"""Several named adapters on one LoRA layer: the adapter in use sits in the layer's own slot, the others wait in a bank.

    layer.lora_A, layer.lora_B, layer.r, layer.scaling, ...   the slot: adapter `layer.adapter_name`, PEFT's keys,
                                                              the fused one-adapter forward of lora.py
    layer.bank["b"].lora_A, ...                               adapter "b", the same fields, off the forward path
    layer.also_active = ("b",)                                bank adapters summed into the output with the slot's

Switching adapters swaps the fields of the slot and a bank entry (module references, no copy), so the adapter in use
is always computed by the same code, at the same speed, under the same parameter names as a model with one adapter.
With one adapter the bank is empty and nothing here runs. The model-level API (set_adapter, delete_adapter, ...) is
in named.py; a layer class lists the fields that make up one adapter in ADAPTER_FIELDS.
"""
from __future__ import annotations

import torch
from torch import nn


class AdapterEntry(nn.Module):
    """One banked adapter: the ADAPTER_FIELDS of its layer class (lora_A, lora_B, r, alpha, scaling, ...)."""

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}"


class Slots:
    """The named-adapter part of a LoRA layer (a mixin, like Mergeable). The layer calls init_slots() in __init__."""

    ADAPTER_FIELDS: tuple[str, ...] = ()
    LOW_RANK_FIELDS: tuple[str, str] = ("", "")  # the fields holding A (r, in) and B (out, r)

    def init_slots(self) -> None:
        self.adapter_name = "default"  # the adapter in the slot
        self.bank = nn.ModuleDict()  # name -> AdapterEntry: the layer's other adapters
        self.also_active: tuple[str, ...] = ()  # bank adapters summed with the slot's (set_adapter([a, b]))
        self.rows = None  # a mixed-batch plan (multi.RowPlan) while lorakit.mixed_batch is in effect

    def adapter_names(self) -> list[str]:
        return [self.adapter_name, *self.bank]

    def entry(self, name: str) -> nn.Module:
        """The module holding adapter `name`'s fields: the layer itself for the slot's adapter."""
        if name == self.adapter_name:
            return self
        if name not in self.bank:
            raise KeyError(f"this layer holds the adapters {self.adapter_names()}, not {name!r}")
        return self.bank[name]

    def low_rank(self, name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(A, B, scaling) of adapter `name`: ΔW = scaling·B·A (transposed for Conv1D and embeddings)."""
        entry = self.entry(name)
        a, b = (getattr(entry, field) for field in self.LOW_RANK_FIELDS)
        a, b = (t.weight if isinstance(t, nn.Linear) else t for t in (a, b))
        return a, b, entry.scaling

    def add_adapter(self, name: str, fresh: nn.Module) -> None:
        """Bank the adapter that `fresh` (a new layer of this class around the same base) was initialised with."""
        if type(fresh) is not type(self):
            raise ValueError(f"adapter {name!r} would put a {type(fresh).__name__} on a layer that holds a "
                             f"{type(self).__name__}: the adapters of one layer must all be DoRA or all plain LoRA")
        entry = AdapterEntry()
        for field in self.ADAPTER_FIELDS:
            setattr(entry, field, getattr(fresh, field))
        self.bank[name] = entry

    def use(self, name: str) -> None:
        """Swap adapter `name` from the bank into the slot (and the slot's adapter into the bank)."""
        if name == self.adapter_name:
            return
        entry = self.bank[name]
        del self.bank[name]
        for field in self.ADAPTER_FIELDS:
            ours, theirs = getattr(self, field), getattr(entry, field)
            setattr(self, field, theirs)
            setattr(entry, field, ours)
        self.bank[self.adapter_name] = entry
        self.adapter_name = name

    def remove(self, name: str) -> bool:
        """Drop adapter `name`; True when the layer holds no adapter any more (the caller unwraps it)."""
        if name == self.adapter_name:
            if not self.bank:
                return True
            self.use(next(iter(self.bank)))
        del self.bank[name]
        self.also_active = tuple(n for n in self.also_active if n != name)
        return False

    def activate(self, names: tuple[str, ...]) -> None:
        """Compute with this layer's share of `names`: the first into the slot, the rest summed; none: base only."""
        present = [n for n in names if n == self.adapter_name or n in self.bank]
        self.disabled = not present
        if present:
            self.use(present[0])
        self.also_active = tuple(present[1:])
        for name, entry in self.bank.items():  # only the adapters in use train (PEFT's set_adapter)
            entry.requires_grad_(name in present)
        for field in self.ADAPTER_FIELDS:
            value = getattr(self, field)
            if isinstance(value, nn.Module):
                value.requires_grad_(bool(present))
            elif isinstance(value, nn.Parameter):
                value.requires_grad_(bool(present))
