"""Fine-tuning methods: which parameters train, and how a trained model is saved and loaded again.

    model, tokenizer = load_base("minilm", spec)           # the base model with the task kind's head
    setup_method(model, cfg)                                # freeze / inject / quantize per cfg.method
    save_artifact(model, tokenizer, cfg, spec, "runs/x")    # -> runs/x/adapter | weights | model
    model, tokenizer, record = load_artifact("runs/x", spec)   # the same model back, ready to evaluate

Methods (TrainConfig.method):
    head         the task head only (BERT, DistilBERT: classifier; RoBERTa: classifier.out_proj)
    last-layers  the layers just below the head, and the head (BERT: pooler + classifier; DistilBERT:
                 pre_classifier + classifier; RoBERTa: classifier.dense + classifier.out_proj)
    full         every parameter
    lora         LoRA adapters; the task head trains in full (PEFT's modules_to_save for sequence classification)
    qlora        lora over a base quantized by quantize_model (TrainConfig.quant_*)
    lora+head    LoRA adapters, and the last-layers modules trained in full
With init_adapter, a saved adapter is loaded first and the method decides what trains on top of it: lora / qlora /
lora+head continue the adapter, head / last-layers freeze it, full merges it into the weights.

Artifacts, one sub-directory of the run's output, each with lorakit.json (method, base model, quantization, run
config):
    adapter/   PEFT format (save_adapter) whenever the model has LoRA layers; PeftModel.from_pretrained reads it
    weights/   head, last-layers: trainable.safetensors, the trained tensors to load over the base model
    model/     full: a plain transformers model directory with its tokenizer (from_pretrained reads it)
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import transformers as tf
from safetensors.torch import save_file
from torch import nn

from lorakit.io.peft_format import CONFIG_NAME, load_adapter, save_adapter
from lorakit.io.atomic import atomic_dir, read_json, read_safetensors
from lorakit.config import TASK_HEADS, QuantConfig
from lorakit.state import adapter_state
from lorakit.errors import UserError
from lorakit.inject.inject import add_lora, lora_layers, merge_and_unload, resolve_targets
from lorakit.inject.targets import pattern_value
from lorakit.io.loftq_base import loftq_quantized_base
from lorakit.layers.lora import LORA_LAYERS
from lorakit.init.family import apply_loftq
from lorakit.training.checkpoint import TRAINABLE, trainable_state
from lorakit.training.evaluation import kind_of
from lorakit.training.launch import is_main_process
from lorakit.models.loading import quiet_transformers, resolve_model_path
from lorakit.quant.linear import dequantize_model, is_quantized, quantize_model
from lorakit.quant.load import load_quantized, safetensors_files
from lorakit.tasks import SEQUENCE_CLASSIFICATION, TaskSpec
from lorakit.training.config import TrainConfig

RECORD = "lorakit.json"
BELOW_HEAD = ("pooler", "pre_classifier")  # the layer feeding the head, where the architecture has one
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model")


def load_base(name: str, spec: TaskSpec, new_head: bool = False,
              quant_config: QuantConfig | None = None) -> tuple[nn.Module, tf.PreTrainedTokenizerBase]:
    """The model `name` (hub id, directory or alias) with the head `spec` needs, and its tokenizer.

    new_head: a saved head of another shape (a model fine-tuned for other labels) is replaced by a fresh one
    (training); otherwise that is an error (evaluation must not score a random head).
    quant_config: the base for QLoRA, quantized while it is read when the checkpoint is safetensors (quant/load.py:
    the full-precision model never exists in memory), else quantized after a full load.
    """
    kind = kind_of(spec)
    path = resolve_model_path(name)
    try:
        if quant_config is not None and safetensors_files(path):
            with quiet_transformers():
                model = load_quantized(path, quant_config, kind.auto_model, kind.model_kwargs(spec), new_head)
            fresh = []
        else:
            model, fresh = _load_quietly(kind, path, spec, new_head)
        if quant_config is not None and not is_quantized(model):
            quantize_model(model, quant_config)
    except RuntimeError as err:
        if "mismatched" not in str(err):
            raise
        raise ValueError(f"model {name!r} has a task head of another shape than task {spec.name} needs "
                         f"({spec.num_labels} outputs); evaluate it on the task it was trained for") from None
    except OSError as err:
        raise ValueError(f"cannot load model {name!r} ({_first_line(err)}); give a hub id, a local model "
                         "directory with config.json, or 'minilm'") from None
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):
            raise
        raise ValueError(f"model {name!r} has no {spec.kind} head in transformers, which task {spec.name} needs; "
                         "choose a model that has one (BERT, DistilBERT, RoBERTa, GPT-2, Llama, ... or 'minilm')"
                         ) from None
    if fresh and new_head and is_main_process():  # transformers' LOAD REPORT table, in one line
        what = ("a new classification head is" if spec.kind == SEQUENCE_CLASSIFICATION else "a new task head is"
                ) if all(k.split(".")[0] in TASK_HEADS for k in fresh) else "parameters missing from the checkpoint are"
        shown = ", ".join(fresh[:4]) + (f" and {len(fresh) - 4} more" if len(fresh) > 4 else "")
        print(f"lorakit: {what} initialised ({shown}); training learns it")
    local = Path(path)
    if local.is_dir() and not any((local / f).is_file() for f in TOKENIZER_FILES):
        # transformers 5 would build an empty-vocabulary tokenizer here, silently
        raise ValueError(f"model directory {name} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
                         "save them there with tokenizer.save_pretrained(directory)")
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise ValueError(f"cannot load the tokenizer of model {name!r} ({_first_line(err)}); a model directory "
                         "needs its tokenizer files too (tokenizer.save_pretrained(directory))") from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:  # GPT-2, Llama: pad with end-of-text
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _load_quietly(kind, path: str, spec: TaskSpec, new_head: bool) -> tuple[nn.Module, list[str]]:
    """from_pretrained without transformers' load report and weight-loading bar. Returns (model, the names of the
    parameters initialised fresh: missing from the checkpoint, or of another shape there)."""
    with quiet_transformers():
        model, info = kind.auto_model.from_pretrained(path, ignore_mismatched_sizes=new_head, output_loading_info=True,
                                                      **kind.model_kwargs(spec))
    mismatched = [m[0] if isinstance(m, (tuple, list)) else m for m in info.get("mismatched_keys") or ()]
    return model, sorted({*(info.get("missing_keys") or ()), *mismatched})


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def head_modules(model: nn.Module, method: str) -> tuple[str, ...]:
    """Module paths that train in full for `head` and `last-layers` (see the module docstring)."""
    names = {name for name, _ in model.named_modules()}
    heads = [h for h in TASK_HEADS if h in names]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no task head ({', '.join(TASK_HEADS)}); "
                         "--method head / last-layers need a model with one")
    if method == "head":  # RoBERTa-style heads are dense -> tanh -> out_proj: the classifier proper is out_proj
        return tuple(f"{h}.out_proj" if f"{h}.out_proj" in names else h for h in heads)
    below = [name for name in sorted(names) if name.rsplit(".", 1)[-1] in BELOW_HEAD]
    return (*below, *heads)


def train_in_full(model: nn.Module, names: tuple[str, ...]) -> None:
    """Unfreeze whole modules; on a LoRA model also list them in modules_to_save so save_adapter keeps them."""
    modules = dict(model.named_modules())
    for name in names:
        if any(isinstance(m, LORA_LAYERS) for m in modules[name].modules()):
            raise ValueError(f"{name} holds LoRA layers (from --init-adapter), so it cannot also train in full; "
                             "train the adapter with --method lora, or use an adapter without LoRA on the head")
        modules[name].requires_grad_(True)
    if lora_layers(model):
        state = adapter_state(model)
        to_save = tuple(dict.fromkeys((*state.config.modules_to_save, *names)))
        state.config = dataclasses.replace(state.config, modules_to_save=to_save)


def setup_method(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Freeze, quantize or inject LoRA in place so exactly the parameters of cfg.method train."""
    lora = cfg.lora_config()
    if cfg.uses_lora and not cfg.init_adapter:
        check_rank(model, lora)
    if uses_loftq(cfg):  # LoftQ quantizes W0 against B·A: LoRA first, on the full-precision model (run.py loads it so)
        add_lora(model, lora)
        apply_loftq(model, cfg.quant_config())
        return model
    if cfg.method == "qlora" and not is_quantized(model):  # load_base(..., quant_config) quantizes while loading
        quantize_model(model, cfg.quant_config())
    if cfg.init_adapter:
        load_adapter(model, cfg.init_adapter, is_trainable=True)  # its LoRA weights and modules_to_save train
    if cfg.method == "full":
        if lora_layers(model):
            merge_and_unload(model)
        model.requires_grad_(True)
    elif cfg.uses_lora:
        extra = head_modules(model, "last-layers") if cfg.method == "lora+head" else ()
        if lora_layers(model):
            train_in_full(model, extra)
        else:  # lora+head: the layers below the head train in full, so they get no LoRA inside
            add_lora(model, dataclasses.replace(lora, modules_to_save=extra) if extra else lora)
    else:
        model.requires_grad_(False)
        train_in_full(model, head_modules(model, cfg.method))
    return model


def layer_sizes(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a layer LoRA adapts: nn.Linear and QuantLinear, GPT-2's Conv1D (weight in x out), Embedding."""
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features), int(module.out_features)
    weight = getattr(module, "weight", None)
    if weight is not None and weight.dim() == 2:  # Conv1D stores (in, out)
        return tuple(weight.shape) if type(module).__name__ == "Conv1D" else tuple(weight.shape[::-1])
    return None


def check_rank(model: nn.Module, lora) -> None:
    """r <= min(in, out) of every adapted layer, before any LoRA weight is allocated: a larger rank adds no
    expressiveness (B·A has rank min(in, out) at most; PEFT allows it) and --lora-r 100000 allocated until the OOM
    killer came. UserError naming the layer, r and the limit."""
    paths, _ = resolve_targets(model, lora)
    for path in paths:
        sizes = layer_sizes(model.get_submodule(path))
        r = pattern_value(path, lora.rank_pattern, lora.r)
        if sizes is not None and r > min(sizes):
            raise UserError(f"--lora-r {r} is larger than layer {path} allows ({sizes[0]} -> {sizes[1]}: r <= "
                            f"min(in, out) = {min(sizes)}); choose --lora-r {min(sizes)} or less")


def uses_loftq(cfg: TrainConfig) -> bool:
    """QLoRA with LoftQ's initialisation: the base is quantized against the adapter (init/family.py apply_loftq)."""
    return cfg.method == "qlora" and cfg.lora_init == "loftq" and not cfg.init_adapter


def save_artifact(model: nn.Module, tokenizer, cfg: TrainConfig, spec: TaskSpec, output: str | Path,
                  adapter: dict | None = None) -> Path:
    """Write what reloads the trained model (module docstring) under `output`, atomically. Returns its path.

    adapter: the adapter's tensors when the model cannot give them itself (FSDP: fsdp.gather_adapter's)."""
    record = {"method": cfg.method, "base_model": cfg.model, "task": spec.name,
              "quantization": cfg.quant_config().to_dict() if cfg.method == "qlora" else None,
              "config": cfg.to_dict()}
    if lora_layers(model):
        path = Path(output) / "adapter"
        with atomic_dir(path) as tmp:
            save_adapter(model, tmp, state=adapter)
            (tmp / RECORD).write_text(json.dumps(record, indent=2))
    elif cfg.method == "full":
        path = Path(output) / "model"
        with atomic_dir(path) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / RECORD).write_text(json.dumps(record, indent=2))
    else:
        path = Path(output) / "weights"
        with atomic_dir(path) as tmp:
            save_file(trainable_state(model), str(tmp / TRAINABLE))
            (tmp / RECORD).write_text(json.dumps(record, indent=2))
    return path


def find_artifact(path: str | Path) -> Path:
    """`path` itself if it holds a trained model, else its adapter/, weights/ or model/ sub-directory."""
    path = Path(path)
    for candidate in (path, path / "adapter", path / "weights", path / "model"):
        if any((candidate / f).is_file() for f in (CONFIG_NAME, TRAINABLE, "config.json")):
            return candidate
    raise FileNotFoundError(f"{path} holds no trained model: expected a `lorakit train` output directory, or a "
                            f"directory with {CONFIG_NAME} (adapter), {TRAINABLE} (head weights) or config.json "
                            "(model)")


def read_record(path: str | Path) -> dict:
    """lorakit.json of an artifact (empty for directories lorakit did not write, e.g. a hub model)."""
    file = Path(path) / RECORD
    return _read_json(file, "run record") if file.is_file() else {}


def _read_json(file: Path, what: str) -> dict:
    """The JSON object in `file`; a UserError naming the file when it holds something else."""
    data = read_json(file, what)
    if not isinstance(data, dict):
        raise UserError(f"{what} {file} must hold a JSON object, not a {type(data).__name__}; the artifact is "
                        "damaged: restore it or train again")
    return data


def _base_model(art: Path, *names: str | None) -> str:
    """The first base model name given (the caller's, the record's, the adapter config's)."""
    for name in names:
        if isinstance(name, str) and name:
            return name
    raise UserError(f"{art} does not name the base model it was trained on (no {RECORD} with base_model); "
                    "give the base model (lorakit: --model NAME)")


def load_artifact(path: str | Path, spec: TaskSpec, base_model: str | None = None):
    """(model, tokenizer, record) from an artifact directory or a plain model directory.

    base_model overrides the base recorded in the artifact (adapter and weights artifacts only).
    """
    art = find_artifact(path)
    record = read_record(art)
    if (art / CONFIG_NAME).is_file():
        adapter_config = _read_json(art / CONFIG_NAME, "adapter config")
        base = _base_model(art, base_model, record.get("base_model"), adapter_config.get("base_model_name_or_path"))
        quant = record.get("quantization")
        quant_config = QuantConfig.from_dict(quant) if quant else None
        run = TrainConfig.from_dict(record["config"]) if quant and "config" in record else None
        loftq = run is not None and uses_loftq(run)  # the adapter was trained over LoftQ's Q_T, not q(W0)
        model, tokenizer = load_base(base, spec, quant_config=None if loftq else quant_config)
        if loftq:
            loftq_quantized_base(model, run.lora_config(), quant_config)
        load_adapter(model, art)  # a damaged weights file: atomic.read_safetensors' UserError
    elif (art / TRAINABLE).is_file():
        base = _base_model(art, base_model, record.get("base_model"))
        model, tokenizer = load_base(base, spec)
        tensors = read_safetensors(art / TRAINABLE, "trained weights")
        missing = sorted(set(tensors) - set(model.state_dict()))
        if missing:
            raise ValueError(f"{art / TRAINABLE} holds tensors this base model lacks ({missing[:3]}); "
                             f"is {base!r} the model it was trained on?")
        model.load_state_dict(tensors, strict=False)
    else:
        model, tokenizer = load_base(str(art), spec)
    return model.requires_grad_(False), tokenizer, record


def merged_model(model: nn.Module) -> nn.Module:
    """A plain transformers model: LoRA folded into the weights, quantized layers dequantized."""
    if lora_layers(model):
        return merge_and_unload(model)  # dequantizes the quantized layers LoRA did not touch too
    return dequantize_model(model)
