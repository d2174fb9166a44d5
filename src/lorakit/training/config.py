"""TrainConfig: every setting of a fine-tuning run, as one frozen dataclass that round-trips to JSON and YAML.

    cfg = TrainConfig(model="minilm", task="sst2", data_dir="../shared/data/sst2", method="lora")
    cfg.lr                                  # 1e-3: filled in per method when not given
    TrainConfig.from_yaml(cfg.to_yaml()) == cfg

Field names equal the `lorakit train` flag names (`--max-length` -> max_length; the exceptions are text_columns
= --text-column, given once per column, and the booleans group_by_length / double_quant, switched off by
--no-group-by-length / --no-double-quant), so a run's `config.yaml` is also a valid `--config` file. Each LoRA field
names the LoraConfig field it sets (metadata `lora`; LORA_FIELDS), and `lora_config()` is the one LoraConfig built
from them, when the TrainConfig is created; those fields and LoRA+'s ratio are the LoRA-only settings
(LORA_SETTINGS), which a method outside LORA_METHODS does not use. The quant_* fields mirror QuantConfig
(`quant_config()`, used by method "qlora").

Also here: the device and precision resolution (`resolve_device`, `resolve_precision`), so that the run
prints and records what it actually used, and the two helpers that apply them (`to_device`, `autocast`).
"""
from __future__ import annotations

import os
from dataclasses import Field, dataclass, field, fields
from typing import TYPE_CHECKING

from lorakit.config import LoraConfig, QuantConfig, JsonMixin, tupled, is_family_init
from lorakit.validation import check_fields

_LORA = {f.name: f.default for f in fields(LoraConfig)}  # the LoRA defaults live in LoraConfig alone
METHODS = ("lora", "qlora", "lora+head", "head", "last-layers", "full")
# the methods that train LoRA adapters; DoRA, PiSSA, OLoRA and LoftQ are settings of these (--dora, --lora-init)
LORA_METHODS = ("lora", "qlora", "lora+head")
# LoRA learns best at ~10x the learning rate of full fine-tuning (Hu et al. 2021 used 4e-4..5e-4 on RoBERTa).
# Measured on MiniLM-L6 with the default init of A, PEFT's kaiming-uniform (all-linear, r 8, alpha 8;
# benchmarks/results/accuracy.md): lr 1e-3 gave SST-2 on the full train set 88.30 / 88.76 / 87.96% over three seeds, the best
# LoRA recipe measured there (N(0, 1/r) init, 7x larger at r 8, wanted 3e-4..5e-4), and CoLA Matthews 0.19 in 3
# epochs. A fresh head alone tolerates 1e-3.
DEFAULT_LR = {"lora": 1e-3, "qlora": 1e-3, "lora+head": 1e-3, "head": 1e-3, "last-layers": 5e-4, "full": 5e-5}
PRECISIONS = ("auto", "fp32", "bf16")
# Instruction tuning evaluates loss and perplexity over every held-out record twice a run (before and after);
# SmolLM2-135M on CPU took ~0.45 s a record (202 records: 90 s per evaluation), so the default is a seeded subset.
INSTRUCT_EVAL_SAMPLES = 100
REPORTERS = ("wandb", "tensorboard")



def setting(default, group: str, help: str, **cli) -> Field:
    """A TrainConfig field with what `lorakit train --help` says of it: the --help section `group`, the `help`
    text (the default is added from `default`), and optional cli keys: metavar, choices, flags (the flag names
    when they are not --field-name), default_text (said instead of the default), recorded (eval: the default is
    the recorded run's), after (text after the default). lorakit.cli.flags builds the flags from these.
    A LoRA-only setting says so in `cli` too: lora (the LoraConfig field it sets) or lora_only=True (one that is
    not in LoraConfig)."""
    return field(default=default, metadata={"group": group, "help": help, **cli})


if TYPE_CHECKING:  # torch and yaml are imported where used: `lorakit train --help` reads TrainConfig without them
    import torch


@dataclass(frozen=True)
class TrainConfig(JsonMixin):
    """One training run. Defaults are the recommended settings; `lr=None` means DEFAULT_LR[method]."""

    # model and data
    model: str = setting("minilm", "model", "hub id, local directory, or 'minilm'")
    task: str = setting("sst2", "data", "task name: sst2, cola, mrpc, stsb, qnli, rte, mnli, qqp, imdb, ... or csv",
                        recorded=True)  # a registered task (lorakit.tasks.task_names()) or "csv"
    data_dir: str | None = setting(None, "data", "the task's original files (e.g. ../shared/data/sst2); default: "
                                   "the Hugging Face hub", metavar="DIR")
    train_file: str | None = setting(None, "data", ".csv/.tsv/.jsonl training file (task csv, or any task)",
                                     metavar="FILE")
    eval_file: str | None = setting(None, "data", ".csv/.tsv/.jsonl evaluation file", metavar="FILE")
    text_columns: tuple[str, ...] | None = setting(
        None, "data", "text column of the files; give it twice for sentence pairs (default: text)", metavar="NAME",
        flags=("--text-column", "--text-columns"))
    label_column: str | None = setting(None, "data", "label column of the files (default: label)", metavar="NAME")
    split_from_eval: float | None = setting(
        None, "data", "carve a share F of the evaluation split into train (tasks without a train split)", metavar="F")
    max_train_samples: int | None = setting(None, "data", "seeded random subset of the train split", metavar="N")
    max_eval_samples: int | None = setting(  # 0 = all; None = all, INSTRUCT_EVAL_SAMPLES for instruction data
        None, "data", "seeded random subset of each eval split; 'all': every row (default: all for classification "
        f"and QA, {INSTRUCT_EVAL_SAMPLES} for instruction data)", metavar="N")
    eval_test: bool = setting(False, "data", "also evaluate on the labelled test split where the data has one "
                              "(IMDB, SST-2, MRPC)")
    max_length: int = setting(128, "data", "tokens per example", metavar="T", recorded=True)  # after truncation
    pad_to_max_length: bool = setting(False, "data", "pad every batch to --max-length (throughput baseline; "
                                      "default: pad to the batch's longest)")
    # what trains
    method: str = setting("lora", "method", (
        "what trains: lora (LoRA + the task head), qlora (lora over a 4/8-bit base), lora+head (LoRA + the layers "
        "below the head, e.g. BERT's pooler, in full), head (the classifier only), last-layers (the head and the "
        "layer below it), full"), choices=METHODS, after=(
        "LoRA adapts every linear layer below the head unless the --lora-<toggle> flags, --target-modules or "
        "--target-regex say otherwise"))
    init_adapter: str | None = setting(None, "method", "start from a saved adapter (e.g. LoRA first, then --method "
                                       "head trains the head on top of it); its LoRA settings replace the --lora-* "
                                       "flags", metavar="DIR")
    lora_r: int = setting(_LORA["r"], "LoRA", "rank r of the update B·A", lora="r")
    lora_alpha: float = setting(_LORA["alpha"], "LoRA", "alpha; the update is scaled by alpha/r", lora="alpha")
    lora_dropout: float = setting(_LORA["dropout"], "LoRA", "dropout on the LoRA branch input", lora="dropout")
    # names/toggles, "all-linear", or one regex string (--target-regex)
    target_modules: tuple[str, ...] | str = setting(
        "all-linear", "LoRA", "module names ('.name' suffix match), or 'all-linear'; overrides the toggles",
        metavar="NAME", lora="target_modules")
    use_rslora: bool = setting(_LORA["use_rslora"], "LoRA", "scale by alpha/sqrt(r) instead of alpha/r",
                               lora="use_rslora")
    # config.INITS or the LoRA family's (config.is_family_init)
    lora_init: str = setting(_LORA["init"], "LoRA", (
        "kaiming (PEFT's) | gaussian (PEFT's, std 1/r) | normal_1_over_r (std 1/sqrt(r)): A random, B = 0; pissa | "
        "pissa_niter_<N> | olora: A, B from W0, W0 keeps the residual; loftq (--method qlora): W0 quantized against "
        "B·A"), metavar="INIT", lora="init")
    dora: bool = setting(_LORA["use_dora"], "LoRA", "DoRA: also train a magnitude per output unit, "
                         "W' = m·(W0 + s·B·A)/||W0 + s·B·A||", lora="use_dora")  # layers/dora.py
    loftq_iter: int = setting(_LORA["loftq_iter"], "LoRA", "LoftQ alternations", metavar="T", lora="loftq_iter")
    quant_kind: str = setting("nf4", "QLoRA (--method qlora)", "", choices=("nf4", "fp4", "int8"))
    double_quant: bool = setting(True, "QLoRA (--method qlora)", "keep the absmax constants in fp32 (default: "
                                 "quantize them too)")
    quant_compute_dtype: str = setting("float32", "QLoRA (--method qlora)", "dtype the base weights are "
                                       "dequantized to", choices=("float32", "bfloat16", "float16"))
    # optimisation
    epochs: int = setting(3, "optimisation", "")
    max_steps: int | None = setting(None, "optimisation", "optimizer steps; overrides --epochs", metavar="N")
    lr: float | None = setting(None, "optimisation", "peak learning rate", default_text="per method: " + ", ".join(
        f"{m} {lr:g}" for m, lr in DEFAULT_LR.items()))  # None = DEFAULT_LR[method]
    loraplus_ratio: float | None = setting(None, "optimisation", "LoRA+: the B matrices learn at lr x R (e.g. 16; "
                                           "default: off)", metavar="R", lora_only=True)  # Hayou et al. 2024
    weight_decay: float = setting(0.0, "optimisation", "AdamW weight decay on matrices")  # never biases and norms
    batch_size: int = setting(32, "optimisation", "examples per micro-batch", metavar="N")
    grad_accum: int = setting(1, "optimisation", "micro-batches per optimizer step", metavar="K")
    eval_batch_size: int = setting(64, "runtime", "", metavar="N")
    warmup_ratio: float = setting(0.06, "optimisation", "share of steps in linear warmup")  # then linear decay to 0
    warmup_steps: int | None = setting(None, "optimisation", "warmup steps; overrides --warmup-ratio", metavar="N")
    max_grad_norm: float = setting(1.0, "optimisation", "gradient clipping, 0 = off")
    precision: str = setting("auto", "runtime", "auto = bf16 autocast on a CUDA GPU that supports it, else fp32",
                             choices=PRECISIONS)
    gradient_checkpointing: bool = setting(False, "optimisation", "recompute activations in backward: less memory, "
                                           "~30%% slower")
    # the model's own dropout (hidden states, attention probabilities) from torch instead of lorakit's cheaper CPU
    # one (layers/dropout.py: same distribution, another random stream; no change on CUDA)
    torch_dropout: bool = setting(False, "optimisation", "the model's dropout as torch runs it (default: lorakit's "
                                  "cheaper CPU dropout, the same distribution from another random stream; on CUDA "
                                  "both are torch's)")
    group_by_length: bool = setting(True, "optimisation", "plain shuffled batches (default: batches of similar "
                                    "lengths)")
    # evaluation, checkpoints, stopping
    eval_steps: int = setting(0, "evaluation, checkpoints, output", "also evaluate every N steps (default: epoch "
                              "ends only)", metavar="N")  # always at each epoch end too
    save_steps: int = setting(0, "evaluation, checkpoints, output", "checkpoint every N steps (default: at every "
                              "evaluation)", metavar="N")
    save_total_limit: int = setting(2, "evaluation, checkpoints, output", "step checkpoints kept",
                                    metavar="N")  # the best one is kept separately
    early_stopping_patience: int = setting(0, "evaluation, checkpoints, output", "stop after N evaluations without "
                                           "improvement (default: off)", metavar="N")
    # run
    seed: int = setting(42, "runtime", "seed of data order, subsets, initialisation, dropout")
    device: str = setting("auto", "runtime", "auto | cpu | cuda | cuda:N | mps")
    # training/fsdp.py; placement.wrap_model. One process (no launcher): no effect
    fsdp: bool = setting(False, "runtime", "under torchrun / accelerate launch: shard the model across the processes "
                         "(FSDP2, one unit per transformer block; frozen base, QLoRA codes and LoRA weights each held "
                         "1/N per process) instead of a whole copy per process (DDP); LoRA methods")
    output: str | None = setting(None, "evaluation, checkpoints, output", "output directory",
                                 default_text="runs/<task>-<method>", metavar="DIR")
    new_run: bool = setting(False, "evaluation, checkpoints, output", "start a run in a non-empty --output that is "
                            "not a lorakit run (refused by default); its files are left alone, and a name the run "
                            "writes that is taken there is refused")
    resume: str | None = setting(None, "evaluation, checkpoints, output", (
        "a checkpoint directory (<output>/checkpoints/step-*), or 'auto': the newest one under --output; every "
        "setting comes from the run's config.yaml, flags given override"), metavar="CHECKPOINT")
    report_to: tuple[str, ...] = setting((), "evaluation, checkpoints, output", "also log to wandb / tensorboard "
                                         "(JSON Lines always)", choices=REPORTERS)

    def __post_init__(self):
        for name in ("text_columns", "report_to"):  # one name may be given as a plain string
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tupled(value))
        object.__setattr__(self, "target_modules", tupled(self.target_modules))  # a string is a regex
        check_fields(self, lambda name: f"--{name.replace('_', '-')}")  # types, finite numbers (validation.py)
        for name in ("data_dir", "train_file", "eval_file", "init_adapter"):  # recorded absolute: found from anywhere
            if getattr(self, name) is not None:
                object.__setattr__(self, name, os.path.abspath(os.path.expanduser(getattr(self, name))))
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; accepted: {', '.join(METHODS)}")
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[self.method])
        if self.output is None:
            object.__setattr__(self, "output", f"runs/{self.task}-{self.method}")
        if not str(self.output).strip():
            raise ValueError("--output is empty; give the run's directory (e.g. --output runs/my-run)")
        positive = {"max_length": self.max_length, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "eval_batch_size": self.eval_batch_size, "epochs": self.epochs}
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"--max-steps must be a positive integer, got {self.max_steps!r}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr!r}")
        if self.loraplus_ratio is not None and self.loraplus_ratio < 1:
            raise ValueError(f"--loraplus-ratio must be >= 1 (B's lr = lr * ratio), got {self.loraplus_ratio!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; accepted: {', '.join(PRECISIONS)}")
        for name in ("eval_steps", "save_steps", "early_stopping_patience", "max_grad_norm", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)!r}")
        if self.save_total_limit < 1:
            raise ValueError(f"--save-total-limit must be >= 1, got {self.save_total_limit!r}")
        unknown = [r for r in self.report_to if r not in REPORTERS]
        if unknown:
            raise ValueError(f"unknown --report-to {unknown}; accepted: {', '.join(REPORTERS)}")
        if not self.uses_lora and self.loraplus_ratio:
            raise ValueError(f"--loraplus-ratio applies to LoRA methods, not --method {self.method}; drop it or "
                             "use --method lora")
        # the LoRA fields checked by building their LoraConfig, which the run then uses (lora_config())
        object.__setattr__(self, "_lora", LoraConfig(**{to: getattr(self, name) for name, to in LORA_FIELDS.items()}))
        if self.lora_init == "loftq" and self.method != "qlora":
            raise ValueError("--lora-init loftq quantizes the base: it needs --method qlora")
        if self.method == "qlora" and is_family_init(self.lora_init) and self.lora_init != "loftq":
            raise ValueError(f"--lora-init {self.lora_init} initialises from the full-precision weight; "
                             "use --method lora (or --lora-init loftq with qlora)")
        if self.method == "qlora":
            self.quant_config()
        if self.fsdp and not self.uses_lora:
            raise ValueError(f"--fsdp shards LoRA training (--method {', '.join(LORA_METHODS[:-1])} or "
                             f"{LORA_METHODS[-1]}), not --method {self.method}; drop --fsdp (data-parallel without "
                             "it) or use a LoRA method")

    @property
    def uses_lora(self) -> bool:
        return self.method in LORA_METHODS

    def lora_config(self) -> LoraConfig:
        """The LoraConfig of the LoRA fields, built (and so checked) once, when this TrainConfig was created;
        modules_to_save None: the task head alone (PEFT's default)."""
        return self._lora

    def quant_config(self) -> QuantConfig:
        return QuantConfig(kind=self.quant_kind, double_quant=self.double_quant, compute_dtype=self.quant_compute_dtype)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> TrainConfig:
        import yaml

        return cls.from_dict(yaml.safe_load(text) or {})


# TrainConfig field -> the LoraConfig field it sets, from the fields' metadata (setting(..., lora=...))
LORA_FIELDS = {f.name: f.metadata["lora"] for f in fields(TrainConfig) if "lora" in f.metadata}
# the settings only a LoRA method uses: the LoRA fields and those tagged lora_only
LORA_SETTINGS = tuple(f.name for f in fields(TrainConfig) if f.name in LORA_FIELDS or f.metadata.get("lora_only"))


def eval_sample_cap(max_eval_samples: int | None, instruction_data: bool) -> int | None:
    """The examples evaluated per split (None = all): max_eval_samples, where 0 means all and None the default
    (all; INSTRUCT_EVAL_SAMPLES for instruction data, a causal LM's)."""
    if max_eval_samples is None:
        return INSTRUCT_EVAL_SAMPLES if instruction_data else None
    return max_eval_samples or None


def resolve_device(name: str) -> torch.device:
    """"auto" picks cuda, then mps, then cpu; an explicit choice must be available (ValueError otherwise)."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; accepted: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available to torch {torch.__version__}; "
                         "use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS (Apple GPU) is not available here; use --device cpu (or auto)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}; accepted: auto, cpu, cuda, cuda:N, mps")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" on a CUDA device with bf16 support, else "fp32"; explicit bf16 must be supported.

    CPU bf16 autocast exists but is slower than fp32 on most CPUs without AMX, so auto keeps fp32 there.
    """
    import torch

    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("--precision bf16: this GPU has no bf16 support (needs compute capability 8.0+); "
                         "use --precision fp32")
    return precision


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def autocast(device: torch.device, precision: str):
    """bf16 autocast for precision "bf16", a no-op context for "fp32"."""
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
