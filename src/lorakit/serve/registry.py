"""The served model and its adapters by name: loaded at start (--adapter NAME=DIR), loaded and unloaded at run time
(only from under --adapter-root, safetensors only;
confine.py copies them out of the root first).

    served = load_served(cfg)                 # base model + tokenizer + every --adapter, on cfg.device
    served.add("imdb", private_copy)          # POST /v1/load_lora_adapter (confine.confined_copy's directory)
    served.remove("imdb")
    served.resolve("sst2")                    # the adapter name for a request's `model` (None: the base model)

Adapters live side by side on one model (lorakit's named adapters, `load_adapter(model, path, name=...)`); a batch
picks one per row with `lorakit.mixed_batch`. Every method here runs on the batcher's worker thread (or before it
starts), never beside a forward pass.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from lorakit.io.peft_format import CONFIG_NAME, WEIGHTS_NAME
from lorakit.errors import UserError
from lorakit.tasks import CAUSAL_LM, SEQUENCE_CLASSIFICATION, TaskSpec, get_task
from lorakit.training.config import TrainConfig, resolve_device
from lorakit.training.methods import find_artifact, load_base, read_record
from lorakit.serve.config import ServeConfig

DEFAULT_TASK = "instruct"  # no adapter recorded a task: the base model serves completions
DEFAULT_MAX_LENGTH = TrainConfig.max_length  # classification truncation when an adapter records none (as predict)
SERVED_KINDS = (CAUSAL_LM, SEQUENCE_CLASSIFICATION)


@dataclass
class Adapter:
    """One served adapter: where it came from, and how its classification outputs are named."""

    path: Path
    id2label: dict[int, str] | None = None  # classification: label names, as `lorakit predict` prints them
    max_length: int = DEFAULT_MAX_LENGTH  # classification: tokens per text (the run's --max-length)


@dataclass
class Served:
    """The base model, its tokenizer and task, and the adapters loaded on it."""

    model: object
    tokenizer: object
    spec: TaskSpec
    base_name: str
    device: object
    adapters: dict[str, Adapter] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def context_length(self) -> int:
        """Most tokens a sequence may hold (prompt + completion)."""
        return int(self.model.config.max_position_embeddings)  # GPT-2's n_positions answers to this name too

    def names(self) -> list[str]:
        """The `model` values requests may use: the base model, then every adapter."""
        return [self.base_name, *self.adapters]

    def resolve(self, name: str) -> str | None:
        """The adapter a request's `model` names (None: the base model); KeyError when there is none of that name."""
        if name == self.base_name:
            return None
        if name not in self.adapters:
            raise KeyError(name)
        return name

    def labels(self, adapter: str | None) -> tuple[dict[int, str] | None, int]:
        """(label names, max length) of classification with `adapter` (None: the base model's task)."""
        if adapter is None:
            return self.spec.id2label, DEFAULT_MAX_LENGTH
        return self.adapters[adapter].id2label, self.adapters[adapter].max_length

    def forward_context(self, names: list[str | None]):
        """The context in which one batched forward uses adapter names[i] for row i (None: the base model)."""
        if not self.adapters:
            return contextlib.nullcontext()
        from lorakit import mixed_batch

        return mixed_batch(self.model, names)

    def add(self, name: str, directory: str | Path) -> Adapter:
        """Load the adapter in `directory` (a `lorakit train` output or an adapter directory) under `name`."""
        from lorakit import adapter_config, adapter_names, delete_adapter, load_adapter

        if name in self.adapters or name == self.base_name:
            raise UserError(f"an adapter named {name!r} is already loaded; unload it first or choose another name")
        art = adapter_dir(directory)
        adapter = self.describe(art)
        check_finite(art)
        check_shares_no_base_module(self.model, art)
        try:
            load_adapter(self.model, art, name=name)
            if adapter_config(self.model, name).use_dora:  # mixed batches take plain LoRA only: every batch would fail
                raise UserError(f"{art} is a DoRA adapter; lorakit serve mixes plain LoRA adapters in one batch only: "
                                "serve its merged model (lorakit merge) as --model instead")
        except Exception:
            if name in adapter_names(self.model):  # half loaded (tensors of another base model): taken out again
                delete_adapter(self.model, name)
            raise
        self.model.to(self.device).eval()  # the new LoRA tensors on the model's device, dropout off
        self.adapters[name] = adapter
        return adapter

    def describe(self, art: Path) -> Adapter:
        """An Adapter for the directory `art`; a UserError when its task does not fit the served model."""
        record = read_record(art)
        config = {} if record.get("config") is None else record["config"]
        max_length = config.get("max_length", DEFAULT_MAX_LENGTH) if isinstance(config, dict) else None
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise UserError(f"{art}: its run record's config.max_length must be a positive integer (tokens per "
                            "text); the record is damaged")
        if record.get("quantization"):
            raise UserError(f"{art} was trained over a quantized base (QLoRA); lorakit serve serves adapters of a "
                            "full-precision base: serve its merged model (lorakit merge) as --model instead")
        task = record.get("task")
        if task is not None and not isinstance(task, str):
            raise UserError(f"{art}: its run record's task must be a task name; the record is damaged")
        if task is None:
            return Adapter(art, self.spec.id2label, max_length)
        spec = get_task(task)
        if spec.kind != self.kind or spec.num_labels != self.spec.num_labels:
            raise UserError(f"{art} was trained for task {task} ({spec.kind}, {spec.num_labels} outputs); this "
                            f"server serves {self.spec.name} ({self.kind}, {self.spec.num_labels} outputs)")
        return Adapter(art, spec.id2label, max_length)

    def remove(self, name: str) -> None:
        """Unload adapter `name`; KeyError when none is loaded under it."""
        from lorakit import delete_adapter

        if name not in self.adapters:
            raise KeyError(name)
        delete_adapter(self.model, name)
        del self.adapters[name]


def check_shares_no_base_module(model, art: Path) -> None:
    """A UserError when the adapter would train a module of the shared base in full: modules_to_save other than
    the task head, or biases (bias "all" / "lora_only"). The first adapter on a model trains those in place, so
    the base rows of every batch, and the other tenants' adapters, would compute with its copy."""
    from lorakit.config import path_matches
    from lorakit.inject.inject import default_modules_to_save
    from lorakit.io.atomic import read_json

    config = read_json(art / CONFIG_NAME, "adapter config")
    if not isinstance(config, dict):
        return  # load_adapter refuses it in one line
    if config.get("bias", "none") != "none":
        raise UserError(f"{art}: the adapter trains the base model's biases (bias={config['bias']!r}), which every "
                        "client of this server shares; serve its merged model (lorakit merge) as --model instead")
    heads = set(default_modules_to_save(model))
    paths = [p for p, _ in model.named_modules() if p]
    shared = [n for n in config.get("modules_to_save") or () if isinstance(n, str) and n not in heads
              and any(path_matches(p, n) for p in paths)]
    if shared:
        raise UserError(f"{art}: the adapter trains {shared} of the base model in full (modules_to_save), which "
                        "every client of this server shares; serve its merged model (lorakit merge) as --model")


# Trained LoRA weights are O(1); beyond this, a product in a mixed batch may overflow to inf, and the masked
# low-rank product (0 x inf = NaN) would reach the other adapters' rows.
MAX_WEIGHT = 1e4


def check_finite(art: Path) -> None:
    """A UserError when the adapter's weights hold NaN, infinity or magnitudes beyond MAX_WEIGHT: in a mixed batch
    the masked low-rank product (0 x NaN = NaN) would reach the other adapters' rows too."""
    import torch
    from safetensors import safe_open

    with safe_open(str(art / WEIGHTS_NAME), framework="pt") as f:
        for key in f.keys():
            tensor = f.get_tensor(key)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise UserError(f"{art}: the adapter's weights hold NaN or infinite values; it is not served")
            if tensor.is_floating_point() and tensor.numel() and float(tensor.abs().max()) > MAX_WEIGHT:
                raise UserError(f"{art}: the adapter's tensor {key} holds values beyond {MAX_WEIGHT:g} in magnitude, "
                                "which could overflow in a batch shared with other clients; it is not served")


def adapter_dir(directory: str | Path) -> Path:
    """The adapter directory of `directory` (itself or its adapter/): adapter_config.json plus safetensors weights."""
    try:
        art = find_artifact(directory)
    except FileNotFoundError as err:
        raise UserError(str(err)) from None
    if not (art / CONFIG_NAME).is_file():
        raise UserError(f"{directory} holds no LoRA adapter ({CONFIG_NAME}); lorakit serve serves adapters")
    if not (art / WEIGHTS_NAME).is_file():
        raise UserError(f"{art} has no {WEIGHTS_NAME}; adapters load from safetensors only (no pickle files)")
    return art


def served_task(cfg: ServeConfig, dirs: dict[str, str]) -> tuple[TaskSpec, str]:
    """(the task the server serves, the base model): --task / --model first, else the first adapter's record."""
    first = read_record(adapter_dir(next(iter(dirs.values())))) if dirs else {}
    spec = get_task(cfg.task or first.get("task") or DEFAULT_TASK)
    if spec.kind not in SERVED_KINDS:
        raise UserError(f"task {spec.name} is {spec.kind.replace('_', ' ')}; lorakit serve serves causal LMs "
                        "(completions, chat) and sequence classifiers (/v1/classify)")
    base = cfg.model or first.get("base_model")
    if not base:
        raise UserError("the first --adapter does not record its base model; give --model")
    return spec, base


def load_served(cfg: ServeConfig) -> Served:
    """The base model with every --adapter loaded, in eval mode on cfg.device."""
    import torch

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    dirs = cfg.adapter_dirs()
    spec, base = served_task(cfg, dirs)
    device = resolve_device(cfg.device)
    model, tokenizer = load_base(base, spec)
    served = Served(model.to(device).eval(), tokenizer, spec, base, device)
    for name, directory in dirs.items():
        served.add(name, directory)
    return served
