"""Configuration: frozen dataclasses that validate themselves and round-trip to JSON.

    cfg = LoraConfig(r=8, alpha=16, target_modules=["query", "value"])
    LoraConfig.from_json(cfg.to_json()) == cfg   # True

Every field has a one-line comment; bad values fail here, at creation, with the value named.

A model with LoRA carries its adapters' configs in one AdapterState, `model.lorakit` (adapter_state(model)).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

from lorakit.validation import check_fields, check_regex

logger = logging.getLogger(__name__)
# LoraConfig's targets when none are given: lorakit's default (PEFT has per-model defaults), the architecture toggles
# of each attention block's query and value projections, resolved per model type
DEFAULT_TARGETS = ("query", "value")

# Init of A (B starts at 0 in all three). "kaiming": kaiming-uniform with a=sqrt(5), PEFT's and loralib's default
# (bound 1/sqrt(in_features)); "gaussian": PEFT's init_lora_weights="gaussian", N(0, 1/r^2) (std 1/r);
# "normal_1_over_r": N(0, 1/r) (std 1/sqrt(r)). "gaussian" in any run config means PEFT's (README, "The idea"), so
# a file and PEFT agree on what it names.
INITS = ("kaiming", "gaussian", "normal_1_over_r")
# The LoRA family's initialisations (init/family.py): W0 keeps a residual ("pissa", "pissa_niter_<N>", "olora") or
# is quantized against the adapter ("loftq", QLoRA only).
FAMILY_INITS = ("pissa", "olora", "loftq")


def is_family_init(init: str) -> bool:
    """"pissa", "olora", "loftq" or "pissa_niter_<N>" (PiSSA by randomized SVD with N subspace iterations)."""
    niter = init.removeprefix("pissa_niter_")
    return init in FAMILY_INITS or (niter != init and niter.isdigit())
BIASES = ("none", "all", "lora_only")
FLOAT32_MAX = 3.4028234663852886e38  # the largest float32: a LoRA scaling beyond it overflows
ADAPTER_DTYPES = ("float32", "int8")
QUANT_KINDS = ("nf4", "fp4", "int8")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# Output heads of transformers models: never adapted by "all-linear", never quantized by default.
HEAD_NAMES = ("classifier", "pre_classifier", "qa_outputs", "score", "lm_head")
# The architecture toggles of target_modules, resolved per model type by targets.TOGGLES
TOGGLE_NAMES = ("query", "key", "value", "projection", "mlp", "head")
# The output layer of transformers' task models (the heads above less DistilBERT's pre_classifier and lm_head).
TASK_HEADS = ("classifier", "score", "qa_outputs")


def path_matches(path: str, name: str) -> bool:
    """PEFT's name rule for target modules, skipped modules and modules_to_save: `name` is the module's whole path
    or its last components ("encoder.layer.0.attention.self.query" matches "query" and "self.query", not "uery")."""
    return path == name or path.endswith("." + name)


# The PEFT release whose file format lorakit writes (adapter_config.json's peft_version).
PEFT_FORMAT_VERSION = "0.22.0"


def saves_by_bare_suffix(peft_version: str | None) -> bool:
    """Does a file of this peft_version match modules_to_save by the bare path end ("norm" also saving
    input_layernorm)? PEFT before 0.22 did, and so did lorakit files without a peft_version; 0.22 matches
    modules_to_save like targets (path_matches). Dev builds of 0.22 ("0.22.0.dev0@abc") follow 0.22."""
    if not peft_version:
        return True
    release = re.match(r"(\d+)\.(\d+)", str(peft_version))
    return release is not None and (int(release[1]), int(release[2])) < (0, 22)


def tupled(value):
    """Lists become tuples so the dataclass stays hashable and frozen all the way down."""
    if isinstance(value, list):
        return tuple(value)
    return value


class JsonMixin:
    """to_dict / to_json / from_dict / from_json for a frozen dataclass of plain values."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; accepted fields: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class LoraConfig(JsonMixin):
    """Where and how to inject LoRA: h = W0·x + (alpha/r)·B·A·dropout(x)  (Hu et al. 2021, eq. 3)."""

    r: int = 8  # rank of the update B·A
    # scaling numerator: the update is multiplied by alpha / r (or alpha / sqrt(r)). 8 = PEFT's default; with
    # kaiming init at lr 1e-3 it gave the best all-linear LoRA on SST-2 (benchmarks/results/accuracy.md)
    alpha: float = 8.0
    dropout: float = 0.0  # dropout on the LoRA branch's input, in [0, 1)
    # which modules: a list of names (exact or ".suffix"), one regex string (full match), "all-linear",
    # or the architecture toggles "query", "key", "value", "projection", "mlp", "head" (resolved per model)
    target_modules: tuple[str, ...] | str = DEFAULT_TARGETS  # none given: logged (INFO), lorakit's default
    exclude_modules: tuple[str, ...] | str | None = None  # same syntax; matches are never adapted
    layers_to_transform: tuple[int, ...] | None = None  # only these transformer block indices
    rank_pattern: dict[str, int] = field(default_factory=dict)  # regex on module path -> r
    alpha_pattern: dict[str, float] = field(default_factory=dict)  # regex on module path -> alpha
    bias: str = "none"  # "none" | "all" (every bias trains) | "lora_only" (biases of adapted layers train)
    use_rslora: bool = False  # rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski 2023)
    init: str = "kaiming"  # init of A, one of INITS (kaiming = PEFT's default); B = 0
    # modules trained and saved in full, besides the task head of classification / QA models, which always is
    # (PEFT's rule); nothing inside them gets LoRA
    modules_to_save: tuple[str, ...] | None = None
    adapter_dtype: str = "float32"  # "int8" stores A and B as int8 with per-row scales (quant/int8_adapters.py)
    # DoRA (Liu et al. 2024): a trainable magnitude per output unit, W' = m·(W0 + s·B·A)/||W0 + s·B·A|| (dora.py)
    use_dora: bool = False
    loftq_iter: int = 1  # init="loftq": alternations of quantize / rank-r SVD (LoftQ alg. 1, T); PEFT's default 1

    def __post_init__(self):
        if self.target_modules is DEFAULT_TARGETS:  # the default itself: no targets were given
            logger.info("LoraConfig: no target_modules given: LoRA goes into %s, lorakit's default (the query and "
                        "value projections of each attention block, per model type; PEFT's per-model defaults may "
                        "differ); give target_modules to choose, e.g. 'all-linear'", DEFAULT_TARGETS)
        for name in ("target_modules", "exclude_modules", "layers_to_transform", "modules_to_save"):
            object.__setattr__(self, name, tupled(getattr(self, name)))
        check_fields(self, lambda name: f"LoraConfig: {name}")  # types, finite numbers (validation.py)
        for name in ("target_modules", "exclude_modules"):
            if isinstance(getattr(self, name), str) and getattr(self, name) != "all-linear":
                check_regex(getattr(self, name), f"LoraConfig: {name} regex")
        for pattern in (*self.rank_pattern, *self.alpha_pattern):
            check_regex(pattern, "LoraConfig: rank_pattern / alpha_pattern key")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoraConfig: r must be a positive integer, got r={self.r!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ValueError(f"LoraConfig: alpha must be > 0, got alpha={self.alpha!r}")
        if self.alpha > FLOAT32_MAX:  # 1e308 overflowed in the first forward pass, a traceback after the run began
            raise ValueError(f"LoraConfig: alpha must be at most {FLOAT32_MAX:.3g} (the scaling alpha/r is applied "
                             f"in float32), got alpha={self.alpha!r} (--lora-alpha)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraConfig: dropout must be in [0, 1), got dropout={self.dropout!r}")
        if self.init not in INITS and not is_family_init(self.init):
            raise ValueError(f"LoraConfig: init={self.init!r} is not supported; "
                             f"accepted: {list(INITS + FAMILY_INITS)} or pissa_niter_<N>")
        if self.bias not in BIASES:
            raise ValueError(f"LoraConfig: bias={self.bias!r} is not supported; accepted: {list(BIASES)}")
        if self.adapter_dtype not in ADAPTER_DTYPES:
            raise ValueError(
                f"LoraConfig: adapter_dtype={self.adapter_dtype!r} is not supported; accepted: {list(ADAPTER_DTYPES)}"
            )
        if self.use_dora and (is_family_init(self.init) or self.adapter_dtype == "int8"):
            raise ValueError(f"LoraConfig: use_dora=True works with init gaussian/kaiming and float32 adapters, "
                             f"got init={self.init!r}, adapter_dtype={self.adapter_dtype!r}")
        if isinstance(self.loftq_iter, bool) or not isinstance(self.loftq_iter, int) or self.loftq_iter < 1:
            raise ValueError(f"LoraConfig: loftq_iter must be an integer >= 1, got loftq_iter={self.loftq_iter!r}")
        if not self.target_modules:
            raise ValueError("LoraConfig: target_modules is empty; give module names, a regex or 'all-linear'")
        for pattern, r in self.rank_pattern.items():
            if not isinstance(r, int) or r <= 0:
                raise ValueError(f"LoraConfig: rank_pattern[{pattern!r}] must be a positive integer, got {r!r}")
        for pattern, a in self.alpha_pattern.items():
            if not isinstance(a, (int, float)) or not math.isfinite(a) or a <= 0:
                raise ValueError(f"LoraConfig: alpha_pattern[{pattern!r}] must be > 0, got {a!r}")

    def __hash__(self):  # dict fields are not hashable; the JSON text is
        return hash(self.to_json())


@dataclass(frozen=True)
class QuantConfig(JsonMixin):
    """How the frozen base weights are stored (QLoRA, Dettmers et al. 2023)."""

    kind: str = "nf4"  # "nf4" | "fp4" (4-bit, block-wise absmax) | "int8" (absmax per output row or per block)
    double_quant: bool = True  # quantize the per-block absmax constants again to 8 bits (blocks of 256)
    block_size: int = 64  # elements sharing one absmax constant (4-bit kinds; int8 when int8_blockwise)
    compute_dtype: str = "float32"  # dtype the weight is dequantized to inside forward
    skip_modules: tuple[str, ...] = HEAD_NAMES  # module names (exact or .suffix) kept in full precision
    int8_blockwise: bool = False  # int8 only: block-wise absmax instead of one absmax per output row

    def __post_init__(self):
        object.__setattr__(self, "skip_modules", tupled(self.skip_modules))
        if self.kind not in QUANT_KINDS:
            raise ValueError(f"QuantConfig: kind={self.kind!r} is not supported; accepted: {list(QUANT_KINDS)}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(
                f"QuantConfig: compute_dtype={self.compute_dtype!r} is not supported; accepted: {list(COMPUTE_DTYPES)}"
            )
        accepted = (32, 64, 128, 256, 512, 1024, 2048, 4096)
        if self.block_size not in accepted:
            raise ValueError(f"QuantConfig: block_size={self.block_size!r} is not supported; accepted: {list(accepted)}")
