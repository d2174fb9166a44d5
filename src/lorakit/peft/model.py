"""PeftModel under PEFT's names, on lorakit's adapters: the transformers model at `model.base_model.model`, its
LoRA layers lorakit's, each method one call into lorakit's API.

    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=8))   # tasks.py
    model.print_trainable_parameters()
    model.save_pretrained("out")                 # PEFT's files and layout
    model = PeftModel.from_pretrained(base, "out")

The class is a transformers PreTrainedModel only so that transformers.Trainer saves a checkpoint by calling
save_pretrained (the adapter files) instead of writing the whole model's state dict; nothing of PreTrainedModel's
own __init__ runs, and attributes the wrapper lacks come from the base model (__getattr__), as in PEFT.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from lorakit.adapters.api import (active_adapters, adapter_config, adapter_names, delete_adapter, mixed_batch,
                                  set_adapter)
from lorakit.combine.api import add_weighted_adapter
from lorakit.inject.inject import (add_lora, disable_lora, merge_and_unload, merge_lora, train_first_adapter,
                                   unmerge_lora)
from lorakit.io.peft_format import load_adapter, save_adapter
from lorakit.layers.lora import lora_layers
from lorakit.peft.config import LoraConfig
from lorakit.params import count_line
from lorakit.peft.counts import parameter_counts
from lorakit.peft.hub import WEIGHTS_NAME, adapter_dir, read_config

# PEFT's name for "no adapter" in adapter_names=
BASE_NAME = "__base__"
# what Trainer's resume reads for a model that is not a peft.PeftModel: an index naming the adapter file
INDEX_NAME = "model.safetensors.index.json"


class BaseSignature:
    """`forward` of a PeftModel: on the class the function itself (Trainer reads the label names from it), on a
    model that function bound, with the base model's signature plus adapter_names (Trainer keeps the dataset
    columns the base model's forward takes)."""

    def __init__(self, function):
        self.function = function

    def __get__(self, model, owner=None):
        if model is None:
            return self.function
        bound = self.function.__get__(model, owner)
        base_forward = model.get_base_model().forward

        def forward(*args, **kwargs):
            return bound(*args, **kwargs)

        forward.__signature__ = _with_adapter_names(inspect.signature(base_forward))
        return forward


class LoraModel(nn.Module):
    """PEFT's `peft_model.base_model`: the transformers model as `.model`; other attributes are the model's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)


class PeftModel(PreTrainedModel):
    """PEFT's PeftModel: get_peft_model / from_pretrained make one; the methods are PEFT's."""

    base_model = property(lambda self: self._modules["base_model"])
    task_type: str | None = None  # a task class's TaskType value (tasks.py)
    task_classes: dict[str, type] = {}  # task_type -> its class, filled as tasks.py defines them

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.task_type is not None:
            PeftModel.task_classes[cls.task_type] = cls

    def __init__(self, model: nn.Module, peft_config: LoraConfig | None = None, adapter_name: str = "default",
                 **_kwargs):
        nn.Module.__init__(self)  # not PreTrainedModel.__init__: the base model's config stays untouched
        self.base_model = LoraModel(model)
        self.config = getattr(model, "config", None)
        self._peft_config: dict[str, LoraConfig] = {}
        self._disabled: contextlib.ExitStack | None = None  # disable_adapter_layers() until enable_adapter_layers()
        if peft_config is not None:
            self.add_adapter(adapter_name, peft_config)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_model", "_modules"):
                raise
            return getattr(self._modules["base_model"].model, name)

    # --- adapters -------------------------------------------------------------------------------------------------

    @property
    def peft_config(self) -> dict[str, LoraConfig]:
        """Adapter name -> its LoraConfig (the facade's; adapters lorakit made itself get one from lorakit's)."""
        model = self.get_base_model()
        for name in adapter_names(model):
            if name not in self._peft_config:
                self._peft_config[name] = LoraConfig.from_lorakit(adapter_config(model, name),
                                                                  task_type=self._task_type())
        return {name: self._peft_config[name] for name in adapter_names(model)}

    def _task_type(self):
        first = next(iter(self._peft_config.values()), None)
        return first.task_type if first is not None else None

    def get_base_model(self) -> nn.Module:
        return self._modules["base_model"].model

    def add_adapter(self, adapter_name: str, peft_config: LoraConfig, low_cpu_mem_usage: bool = False) -> None:
        model = self.get_base_model()
        peft_config.base_model_name_or_path = peft_config.base_model_name_or_path or getattr(
            getattr(model, "config", None), "_name_or_path", None)
        add_lora(model, peft_config.to_lorakit(), adapter_name)
        if peft_config.target_modules is None:  # as PEFT records the model type's default: the module names
            peft_config.target_modules = {path.rsplit(".", 1)[-1] for path, layer in lora_layers(model)
                                          if adapter_name in layer.adapter_names()}
        self._peft_config[adapter_name] = peft_config
        if peft_config.inference_mode:
            self._freeze(adapter_name)

    def load_adapter(self, model_id: str | os.PathLike, adapter_name: str, is_trainable: bool = False,
                     revision: str | None = None, subfolder: str | None = None, **kwargs):
        """PEFT's load_adapter: eval mode and frozen unless is_trainable."""
        path = adapter_dir(model_id, revision=revision, subfolder=subfolder, **kwargs)
        model = self.get_base_model()
        training = model.training
        load_adapter(model, path, adapter_name)
        config = LoraConfig.from_dict(read_config(path))
        config.inference_mode = not is_trainable
        self._peft_config[adapter_name] = config
        if not is_trainable:
            self._freeze(adapter_name)
            self.eval()
        elif active_adapters(model)[:1] == (adapter_name,):  # trainable and in use, in the mode it was in, whether
            resolved = adapter_config(model, adapter_name)  # or not lorakit's load_adapter froze it (is_trainable)
            train_first_adapter(model, resolved, resolved.modules_to_save)
            self.train(training)
        return self

    def _freeze(self, adapter_name: str) -> None:
        """The adapter's tensors stop training (an inactive adapter is frozen already)."""
        if active_adapters(self.get_base_model())[:1] == (adapter_name,):
            self.get_base_model().requires_grad_(False)

    def set_adapter(self, adapter_name: str | list[str]) -> None:
        set_adapter(self.get_base_model(), adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        delete_adapter(self.get_base_model(), adapter_name)
        self._peft_config.pop(adapter_name, None)

    @property
    def active_adapter(self) -> str:
        return active_adapters(self.get_base_model())[0]

    @property
    def active_adapters(self) -> list[str]:
        return list(active_adapters(self.get_base_model()))

    def add_weighted_adapter(self, adapters: list[str], weights: list[float], adapter_name: str,
                             combination_type: str = "svd", **kwargs) -> None:
        """PEFT's: an existing adapter_name is left as it is (lorakit's own raises)."""
        if adapter_name in adapter_names(self.get_base_model()):
            return
        kwargs = {k: v for k, v in kwargs.items() if k != "svd_driver"}
        add_weighted_adapter(self.get_base_model(), adapters, weights, adapter_name, combination_type, **kwargs)

    # --- merging and switching off ---------------------------------------------------------------------------------

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        with self._using(adapter_names):
            merge_lora(self.get_base_model())
        self._check_finite(safe_merge)

    def unmerge_adapter(self) -> None:
        unmerge_lora(self.get_base_model())

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: list[str] | None = None) -> nn.Module:
        model = self.get_base_model()
        if adapter_names:
            set_adapter(model, adapter_names)
        merged = merge_and_unload(model)
        self._check_finite(safe_merge)
        return merged

    def unload(self) -> nn.Module:
        """The base model without any adapter, nothing merged."""
        model = self.get_base_model()
        for name in reversed(adapter_names(model)):
            delete_adapter(model, name)
        return model

    def _check_finite(self, safe_merge: bool) -> None:
        if safe_merge and not all(torch.isfinite(p).all() for p in self.get_base_model().parameters()):
            raise ValueError("NaNs detected in the merged weights. The adapter seems to be broken")

    @contextlib.contextmanager
    def _using(self, names: list[str] | None):
        model = self.get_base_model()
        previous = active_adapters(model)
        if names:
            set_adapter(model, names)
        try:
            yield
        finally:
            if names and not any(layer.merged for _, layer in lora_layers(model)):
                set_adapter(model, previous)

    @contextlib.contextmanager
    def disable_adapter(self):
        with disable_lora(self.get_base_model()):
            yield

    def disable_adapter_layers(self) -> None:
        if self._disabled is None:
            self._disabled = contextlib.ExitStack()
            self._disabled.enter_context(disable_lora(self.get_base_model()))

    def enable_adapter_layers(self) -> None:
        if self._disabled is not None:
            self._disabled.close()
            self._disabled = None

    # --- counts -----------------------------------------------------------------------------------------------------

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) as PEFT counts them: a module trained in full counts with its base model's copy."""
        return parameter_counts(self.get_base_model())

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(count_line(trainable, total))

    # --- forward, generate -------------------------------------------------------------------------------------------

    def forward(self, *args, labels=None, adapter_names: list[str] | None = None, **kwargs):
        """The base model's forward; adapter_names=[...] gives each batch row its adapter (lorakit's mixed_batch,
        "__base__": no adapter)."""
        if labels is not None:
            kwargs["labels"] = labels
        with self._rows(adapter_names):
            return self.get_base_model()(*args, **kwargs)

    forward = BaseSignature(forward)

    def generate(self, *args, adapter_names: list[str] | None = None, **kwargs):
        with self._rows(adapter_names):
            return self.get_base_model().generate(*args, **kwargs)

    def _rows(self, names: list[str] | None):
        if names is None:
            return contextlib.nullcontext()
        return mixed_batch(self.get_base_model(), [None if n == BASE_NAME else n for n in names])

    # --- what transformers asks of a PreTrainedModel ------------------------------------------------------------------

    def can_generate(self) -> bool:
        return self.get_base_model().can_generate()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.get_base_model().gradient_checkpointing_disable()

    def enable_input_require_grads(self) -> None:
        self.get_base_model().enable_input_require_grads()

    def get_input_embeddings(self) -> nn.Module:
        return self.get_base_model().get_input_embeddings()

    def get_output_embeddings(self):
        return self.get_base_model().get_output_embeddings()

    def tie_weights(self, *args, **kwargs):
        return None  # the base model's weights are tied where it made them; the adapter ties nothing

    def prepare_inputs_for_generation(self, *args, **kwargs):
        return self.get_base_model().prepare_inputs_for_generation(*args, **kwargs)

    # --- files ----------------------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True,
                        selected_adapters: list[str] | None = None, is_main_process: bool | None = None,
                        **_kwargs) -> None:
        """PEFT's layout: "default" in save_directory, any other adapter in save_directory/<name>/; files already
        there stay. Called as transformers.Trainer calls it (is_main_process= given) it also writes the index that
        Trainer's resume reads for a model that is not a peft.PeftModel (INDEX_NAME)."""
        if is_main_process is False:
            return
        target = Path(save_directory)
        target.mkdir(parents=True, exist_ok=True)
        names = list(selected_adapters) if selected_adapters else adapter_names(self.get_base_model())
        with tempfile.TemporaryDirectory(dir=target) as tmp:
            for name in names:
                written = save_adapter(self.get_base_model(), Path(tmp) / name, name=name)
                place = target if name == "default" else target / name
                place.mkdir(exist_ok=True)
                for file in written.iterdir():
                    shutil.move(str(file), str(place / file.name))
        if is_main_process is not None:
            _write_resume_index(target, names, self.state_dict())

    @classmethod
    def from_pretrained(cls, model: nn.Module, model_id: str | os.PathLike, adapter_name: str = "default",
                        is_trainable: bool = False, config: LoraConfig | None = None, revision: str | None = None,
                        **kwargs) -> "PeftModel":
        """The adapter at model_id (a directory or a hub id) on `model`; the class by its task_type, as PEFT."""
        path = adapter_dir(model_id, revision=revision, subfolder=kwargs.pop("subfolder", None), **kwargs)
        if cls is PeftModel:
            cls = PeftModel.task_classes.get(read_config(path).get("task_type"), PeftModel)
        return cls(model).load_adapter(path, adapter_name, is_trainable=is_trainable)


def _with_adapter_names(signature: inspect.Signature) -> inspect.Signature:
    params = list(signature.parameters.values())
    extra = inspect.Parameter("adapter_names", inspect.Parameter.KEYWORD_ONLY, default=None)
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    return signature.replace(parameters=[*params[:at], extra, *params[at:]])


def _write_resume_index(target: Path, names: list[str], state: dict) -> None:
    """model.safetensors.index.json mapping the saved adapter tensors (the wrapper's state-dict keys equal the
    file's) to adapter_model.safetensors: Trainer's resume loads a non-PEFT model's checkpoint through it."""
    import json

    from safetensors import safe_open

    if "default" not in names:
        return
    with safe_open(str(target / WEIGHTS_NAME), "pt") as f:
        keys = [k for k in f.keys() if k in state]
    index = {"metadata": {"written_by": "lorakit.peft for Trainer's resume"}, "weight_map": dict.fromkeys(keys, WEIGHTS_NAME)}
    (target / INDEX_NAME).write_text(json.dumps(index, indent=2))

