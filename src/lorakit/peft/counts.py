"""Parameter counts as PEFT's get_nb_trainable_parameters gives them.

PEFT keeps the base model's copy of every module trained in full (ModulesToSaveWrapper.original_module) beside the
adapters' copies; lorakit trains a module of one adapter in place. The counts add the copy PEFT would hold, and
count a bitsandbytes 4-bit weight (Params4bit: two values per byte of storage) as the values it holds, as PEFT does.
"""
from __future__ import annotations

from torch import nn

from lorakit.config import path_matches
from lorakit.layers.saved_modules import HeadCopies
from lorakit.params import parameter_report
from lorakit.state import adapter_state


def _size(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) of a lorakit model, counted as PEFT counts the same model under peft.PeftModel."""
    report = parameter_report(model)
    extra = 0
    state = adapter_state(model)
    names = {n for config in (state.configs.values() if state else ()) for n in config.modules_to_save}
    wrapped = [p for p, m in model.named_modules() if isinstance(m, HeadCopies)]
    for path, module in model.named_modules():
        if isinstance(module, HeadCopies):
            extra += _size(module.copy_for(module.active)) if module.original_module is None else 0
        elif path and any(path_matches(path, n) for n in names) and not any(
                path == w or path.startswith(w + ".") for w in wrapped):
            extra += _size(module)
    packed = {id(p): p for p in model.parameters() if type(p).__name__ == "Params4bit"}
    extra += sum(p.numel() * (2 * p.element_size() - 1) for p in packed.values())
    return report.trainable, report.total + extra
