"""PEFT's LoraConfig and TaskType under PEFT's names and defaults, mapped onto lorakit.LoraConfig.

    from lorakit.peft import LoraConfig, TaskType
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1)
    config.to_lorakit()      # lorakit.LoraConfig(r=8, alpha=16, dropout=0.1, ...)

A PEFT field lorakit does not implement is refused, in one line, unless it is at its off value. No torch, no peft.
"""
from __future__ import annotations

import copy
import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from lorakit.config import PEFT_FORMAT_VERSION, LoraConfig as CoreConfig
from lorakit.errors import UserError


class TaskType(str, enum.Enum):
    """PEFT's task types: a str enum (TaskType.SEQ_CLS == "SEQ_CLS")."""

    SEQ_CLS = "SEQ_CLS"
    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
    CAUSAL_LM = "CAUSAL_LM"
    TOKEN_CLS = "TOKEN_CLS"
    QUESTION_ANS = "QUESTION_ANS"
    FEATURE_EXTRACTION = "FEATURE_EXTRACTION"


class PeftType(str, enum.Enum):
    """The one PEFT method this facade offers."""

    LORA = "LORA"


# init_lora_weights -> lorakit's init; PEFT's False (B random, for tests) is not among lorakit's inits
INITS = {True: "kaiming", "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
# PEFT fields lorakit does not implement, with their off value
OFF = {"megatron_config": None, "astra_config": None, "use_bdlora": None, "trainable_token_indices": None, "loftq_config": {},
       "eva_config": None, "corda_config": None, "lora_ga_config": None, "velora_config": None,
       "alora_invocation_tokens": None, "use_qalora": False, "monteclora_config": None, "layer_replication": None,
       "lora_bias": False, "target_parameters": None, "arrow_config": None, "kasa_config": None,
       "ensure_weight_tying": False}  # fan_in_fan_out: lorakit sees a GPT-2 Conv1D itself


def _unimplemented_fields():
    """PEFT's fields lorakit does not implement (OFF), each at its off value, as a base dataclass of LoraConfig."""
    specs = [(name, Any, field(default_factory=lambda off=off: copy.copy(off))) for name, off in OFF.items()]
    return dataclasses.make_dataclass("UnimplementedFields", specs)


UnimplementedFields = _unimplemented_fields()


@dataclass
class LoraConfig(UnimplementedFields):
    """PEFT's LoraConfig: its field names and defaults (r=8, lora_alpha=8, lora_dropout=0.0, target_modules None:
    the model type's default, q and v of attention). The fields of UnimplementedFields (OFF) are PEFT's too."""

    task_type: str | TaskType | None = None
    peft_type: str | PeftType = PeftType.LORA
    base_model_name_or_path: str | None = None
    revision: str | None = None
    inference_mode: bool = False
    r: int = 8
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    fan_in_fan_out: bool = False  # lorakit finds GPT-2's Conv1D layers itself
    bias: str = "none"
    use_rslora: bool = False
    modules_to_save: list[str] | None = None
    init_lora_weights: bool | str = True
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None  # lorakit finds the transformer blocks itself
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    use_dora: bool = False
    megatron_core: str | None = "megatron.core"
    qalora_group_size: int = 16
    auto_mapping: dict | None = None
    peft_version: str | None = None

    def __post_init__(self):
        self.peft_version = self.peft_version or PEFT_FORMAT_VERSION  # the file format lorakit writes
        if isinstance(self.task_type, str) and self.task_type in TaskType.__members__:
            self.task_type = TaskType(self.task_type)
        if isinstance(self.layers_to_transform, int):
            self.layers_to_transform = [self.layers_to_transform]

    def to_lorakit(self) -> CoreConfig:
        """The lorakit.LoraConfig that injects what PEFT would; a field lorakit lacks: one UserError line."""
        for name, off in OFF.items():
            if getattr(self, name) not in (off, None, False, {}, []):
                raise UserError(f"LoraConfig({name}={getattr(self, name)!r}): lorakit does not implement {name}; "
                                f"leave it at {off!r}")
        init = self.init_lora_weights
        niter = isinstance(init, str) and init.startswith("pissa_niter_")
        if not niter and init not in INITS:
            raise UserError(f"LoraConfig(init_lora_weights={init!r}): lorakit implements {list(INITS)} and "
                            "pissa_niter_<N>; LoftQ is lorakit.apply_loftq(model, quant_config)")
        init = init if niter else INITS[init]
        return CoreConfig(r=self.r, alpha=self.lora_alpha, dropout=self.lora_dropout,
                          target_modules=self.target_modules or ("query", "value"),
                          exclude_modules=self.exclude_modules, layers_to_transform=self.layers_to_transform,
                          rank_pattern=dict(self.rank_pattern), alpha_pattern=dict(self.alpha_pattern),
                          bias=self.bias, use_rslora=self.use_rslora, init=init,
                          modules_to_save=tuple(self.modules_to_save) if self.modules_to_save else None,
                          use_dora=self.use_dora)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for key in ("task_type", "peft_type"):
            out[key] = getattr(out[key], "value", out[key])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "LoraConfig":
        """From adapter_config.json's fields: those this class does not know are ignored, as PEFT ignores them."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_lorakit(cls, config: CoreConfig, **fields) -> "LoraConfig":
        """The facade's config of an adapter lorakit made itself (add_weighted_adapter, a file)."""
        init = {v: k for k, v in INITS.items()}.get(config.init, config.init)
        targets = config.target_modules
        return cls(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                   target_modules=targets if isinstance(targets, str) else set(targets), bias=config.bias,
                   use_rslora=config.use_rslora, init_lora_weights=init, rank_pattern=dict(config.rank_pattern),
                   alpha_pattern=dict(config.alpha_pattern), use_dora=config.use_dora,
                   modules_to_save=list(config.modules_to_save) or None, **fields)


PeftConfig = LoraConfig
