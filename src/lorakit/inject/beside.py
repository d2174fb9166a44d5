"""Adding an adapter beside the ones a model holds (inject.add_lora with a new name): the checks, target matching on
the base model's structure, and per-adapter copies of the modules trained in full."""
from __future__ import annotations

import contextlib

from torch import nn

from lorakit.config import LoraConfig, path_matches

from lorakit.state import adapter_state
from lorakit.layers.saved_modules import HeadCopies
from lorakit.layers.lora import lora_layers
from lorakit.init.family import is_residual_init


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def check_addable(model: nn.Module, config: LoraConfig, name: str) -> None:
    """Can adapter `name` join the adapters of `model`? Raises ValueError saying why not."""
    held = list(adapter_state(model).configs)
    if name in held:
        raise ValueError(f"this model already holds an adapter named {name!r} (it holds "
                         f"{held}); pick another name or delete_adapter(model, {name!r})")
    if is_residual_init(config.init) or config.init == "loftq":
        raise ValueError(f"init={config.init!r} rewrites the base weights the other adapters were trained on; "
                         "only a model's first adapter can use it")
    if config.bias != "none":
        raise ValueError(f"bias={config.bias!r}: biases are shared by every adapter of a model, so only its first "
                         "adapter can train them; use bias='none'")
    if any(layer.merged for _, layer in lora_layers(model)):
        raise ValueError("LoRA is merged into the base weights; unmerge_lora(model) before adding an adapter")


@contextlib.contextmanager
def bases_in_place(model: nn.Module):
    """Within the block every LoRA layer is replaced by its base layer, so targets are matched on the base model's
    modules (not on lora_A / lora_B, which are nn.Linear too)."""
    layers = lora_layers(model)
    for path, layer in layers:
        set_submodule(model, path, layer.base_layer)
    try:
        yield model
    finally:
        for path, layer in layers:
            set_submodule(model, path, layer)


def add_head_copies(model: nn.Module, to_save: tuple[str, ...], name: str) -> None:
    """Give adapter `name` its own copy of every module it trains in full (saved_modules.HeadCopies), starting from the
    module in use; a module no adapter trained yet keeps the base model's own as `original_module`."""
    state = adapter_state(model)
    for head in to_save:
        paths = [p for p, m in model.named_modules() if p and path_matches(p, head) and ".modules_to_save." not in p
                 and not p.endswith(".original_module")]
        if not paths:
            raise ValueError(f"modules_to_save: {head!r} matches no module of this model")
        for path in paths:
            module = model.get_submodule(path)
            if not isinstance(module, HeadCopies):
                owners = [n for n, cfg in state.configs.items()
                          if any(path_matches(path, h) for h in cfg.modules_to_save)]
                copies = {owners[0]: module} if owners else {}
                module = HeadCopies(copies, owners[0] if owners else None, None if owners else module)
                set_submodule(model, path, module)
            module.add_copy(name)
            module.set_active(state.active)
