"""AdapterState: the adapters of one model and the names in use, kept on the model as one attribute."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lorakit.config import LoraConfig

# The one attribute of a LoRA model that records its adapters (an AdapterState).
STATE_ATTRIBUTE = "lorakit"


@dataclass
class AdapterState:
    """The adapters of one model: each one's resolved LoraConfig by name, in the order they were added, and the
    names in use. `config`, what save_adapter and training read, is that of the first in use; it is not stored
    apart from `configs`, so the two cannot disagree."""

    configs: dict[str, LoraConfig]  # name -> the resolved config (targets as paths, modules_to_save found)
    active: tuple[str, ...]  # the adapters in use, summed; never empty while the state is on a model
    # path -> a frozen copy of the base model's module at that path, for each module the first adapter trains in
    # full in place (PEFT's original_module): disable_lora computes with it
    originals: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> LoraConfig:
        return self.configs[self.active[0]]

    @config.setter
    def config(self, value: LoraConfig) -> None:
        """Replace the recorded config of the (first) adapter in use (training adds the modules it trains in full)."""
        self.configs[self.active[0]] = value


def adapter_state(model: Any) -> AdapterState | None:
    """The AdapterState of a model with LoRA (add_lora, load_adapter); None for a model without."""
    return getattr(model, STATE_ATTRIBUTE, None)
