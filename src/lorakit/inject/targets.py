"""Which modules get LoRA: PEFT's matching rules plus lorakit's architecture toggles.

A target specification is one of
  * a list of names: a module matches when its path equals a name or ends with "." + name (PEFT's rule),
  * one regex string: a module matches when the regex matches its whole path (re.fullmatch, PEFT's rule),
  * "all-linear": every Linear / Conv1D layer except the model's output layer, found from the model as PEFT 0.22
    does (`output_layers`); a task head that trains in full gets no LoRA anyway (inject.resolve_targets),
  * toggles, mixed freely into the list: "query", "key", "value", "projection", "mlp", "head" (each only where it
    names no module of the model itself, else PEFT's meaning of the name wins), resolved per
    architecture by `TOGGLES` below (BERT, DistilBERT, RoBERTa, ELECTRA, GPT-2, OPT, BART, T5, Llama / Qwen2 /
    Mistral / Gemma / Phi-3 / SmolLM). On classification and QA models the task head trains in full, so "head"
    adapts something only on language models (lm_head).

    >>> resolve_toggles("bert", ["query", "value"])
    ['query', 'value']
    >>> resolve_toggles("distilbert", ["query", "mlp"])
    ['q_lin', 'ffn.lin1', 'ffn.lin2']
"""
from __future__ import annotations

import re
import sys

from torch import nn
from transformers.pytorch_utils import Conv1D

from lorakit.config import TOGGLE_NAMES, path_matches
from lorakit.quant.linear import QuantLinear


_BERT = {
    "query": ["query"],
    "key": ["key"],
    "value": ["value"],
    "projection": ["attention.output.dense"],
    # "output.dense" alone would also match attention.output.dense: anchor the MLP's output on the layer index
    "mlp": ["intermediate.dense", r"re:.*\.layer\.\d+\.output\.dense"],
    "head": ["classifier", "qa_outputs"],
}
_LLAMA = {
    "query": ["q_proj"],
    "key": ["k_proj"],
    "value": ["v_proj"],
    "projection": ["o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
    "head": ["lm_head", "score"],
}
TOGGLES: dict[str, dict[str, list[str]]] = {
    "bert": _BERT,
    "roberta": {**_BERT, "head": ["classifier.dense", "classifier.out_proj", "qa_outputs"]},
    "xlm-roberta": {**_BERT, "head": ["classifier.dense", "classifier.out_proj", "qa_outputs"]},
    "distilbert": {
        "query": ["q_lin"],
        "key": ["k_lin"],
        "value": ["v_lin"],
        "projection": ["out_lin"],
        "mlp": ["ffn.lin1", "ffn.lin2"],
        "head": ["pre_classifier", "classifier", "qa_outputs"],
    },
    # GPT-2 fuses query, key and value into one Conv1D (c_attn): any of the three toggles selects it.
    "gpt2": {
        "query": ["attn.c_attn"],
        "key": ["attn.c_attn"],
        "value": ["attn.c_attn"],
        "projection": ["attn.c_proj"],
        "mlp": ["mlp.c_fc", "mlp.c_proj"],
        "head": ["lm_head", "score"],
    },
    "electra": {**_BERT, "head": ["classifier.dense", "classifier.out_proj", "qa_outputs"]},
    "opt": {**_LLAMA, "projection": ["self_attn.out_proj"], "mlp": ["fc1", "fc2"],
            "head": ["lm_head", "score", "qa_outputs"]},
    "bart": {
        **_LLAMA,
        "projection": ["self_attn.out_proj", "encoder_attn.out_proj"],
        "mlp": ["fc1", "fc2"],
        "head": ["lm_head", "classification_head.dense", "classification_head.out_proj", "qa_outputs"],
    },
    "t5": {
        "query": ["q"],
        "key": ["k"],
        "value": ["v"],
        "projection": ["o"],
        "mlp": ["DenseReluDense.wi", "DenseReluDense.wi_0", "DenseReluDense.wi_1", "DenseReluDense.wo"],
        "head": ["lm_head", "classification_head.dense", "classification_head.out_proj", "qa_outputs"],
    },
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "phi3": {**_LLAMA, "query": ["qkv_proj"], "key": ["qkv_proj"], "value": ["qkv_proj"], "mlp": ["gate_up_proj", "down_proj"]},
}

# PEFT's rule for layers_to_transform without layers_pattern: the first numbered path segment after a named one
# ("bert.encoder.layer.3.attention..." -> 3, "encoder.block.1.layer.0.SelfAttention.q" -> 1)
_LAYER_INDEX = re.compile(r".*?\.[^.]*\.(\d+)\.")


def is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D, QuantLinear))


def output_layers(model: nn.Module) -> set[str]:
    """The paths "all-linear" leaves out, by PEFT 0.22's rule (tuners_utils._maybe_include_all_linear_layers): the
    model's output embeddings (get_output_embeddings: lm_head, Whisper's proj_out, BERT-MLM's decoder; None for a
    speech or vision backbone's head, which is adapted, as ViT's classifier and Wav2Vec2-CTC's lm_head are), else on
    a sequence classifier its top-level score / classifier. Nothing for a model that is not a PreTrainedModel."""
    # a PreTrainedModel exists only once transformers.modeling_utils is imported; importing it here would pull in
    # transformers' loss modules (and scipy) for plain nn.Modules
    modeling = sys.modules.get("transformers.modeling_utils")
    if modeling is None or not isinstance(model, modeling.PreTrainedModel):
        return set()
    found = model.get_output_embeddings()
    if found is None and type(model).__name__.endswith("ForSequenceClassification"):
        found = next((getattr(model, n) for n in ("score", "classifier") if getattr(model, n, None) is not None), None)
    return {p for p, m in model.named_modules() if m is found} if found is not None else set()


def resolve_toggles(model_type: str | None, targets: list[str], paths: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Replace toggle names in `targets` with this architecture's module names; other names pass through.

    paths: the model's adaptable modules. A toggle name that selects one of them (CamemBERT's "query", Wav2Vec2's
    feature_projection.projection) keeps PEFT's meaning, a module whose path ends with it: toggles resolve only
    names that match no module."""
    toggles = [t for t in targets if t in TOGGLE_NAMES and not any(path_matches(p, t) for p in paths)]
    if not toggles:
        return list(targets)
    table = TOGGLES.get(model_type or "")
    if table is None:
        raise ValueError(
            f"the toggles {toggles} are not defined for model_type={model_type!r} (known: {sorted(TOGGLES)}); "
            "name the modules instead (target_modules=['q_proj', ...]), give a regex, or use 'all-linear'"
        )
    out: list[str] = []
    for t in targets:
        for name in table[t] if t in toggles else [t]:
            if name not in out:
                out.append(name)
    return out


def name_matches(path: str, spec: tuple[str, ...] | list[str] | str) -> bool:
    """PEFT's rule: a string is a full-match regex; a list matches exact paths or '.name' suffixes.

    List entries starting with "re:" are full-match regexes (used by the toggle tables).
    """
    if isinstance(spec, str):
        return re.fullmatch(spec, path) is not None
    for name in spec:
        if name.startswith("re:"):
            if re.fullmatch(name[3:], path):
                return True
        elif path_matches(path, name):
            return True
    return False


def layer_index(path: str) -> int | None:
    match = _LAYER_INDEX.match(path)
    return int(match.group(1)) if match else None


def pattern_value(path: str, patterns: dict, default):
    """rank_pattern / alpha_pattern lookup with PEFT's rule: the key matches the end of the path."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def find_targets(
    model: nn.Module,
    targets: tuple[str, ...] | str,
    exclude: tuple[str, ...] | str | None = None,
    layers: tuple[int, ...] | None = None,
) -> list[str]:
    """Paths of the modules to adapt, in model order. Raises ValueError when nothing matches."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    all_linear = targets == "all-linear" or (not isinstance(targets, str) and "all-linear" in targets)
    kinds = (nn.Linear, Conv1D, QuantLinear, nn.Embedding)
    paths = [p for p, m in model.named_modules() if p and isinstance(m, kinds)]
    if not isinstance(targets, str):
        targets = resolve_toggles(model_type, [t for t in targets if t != "all-linear"], paths)
    if isinstance(exclude, (tuple, list)):
        exclude = resolve_toggles(model_type, list(exclude), paths)
    found = []
    outputs = output_layers(model) if all_linear else set()
    for path, module in model.named_modules():
        if not path or not isinstance(module, (nn.Linear, Conv1D, QuantLinear, nn.Embedding)):
            continue
        if all_linear:
            chosen = is_linear_like(module) and path not in outputs
            chosen = chosen or (not isinstance(targets, str) and bool(targets) and name_matches(path, targets))
        else:
            chosen = name_matches(path, targets)
        if not chosen or (exclude and name_matches(path, exclude)):
            continue
        if layers is not None and layer_index(path) not in layers:
            continue
        found.append(path)
    if not found:
        candidates = [p for p, m in model.named_modules() if p and (is_linear_like(m) or isinstance(m, nn.Embedding))]
        shown = ", ".join(candidates[:40]) + (f", ... ({len(candidates)} in all)" if len(candidates) > 40 else "")
        raise ValueError(
            f"target_modules={targets!r} matched no module of this model (model_type={model_type!r}). "
            f"Linear-like modules: {shown}"
        )
    return found


def compact_targets(model: nn.Module, paths: list[str]) -> list[str]:
    """The shortest description PEFT can reload: leaf names if they select exactly `paths`, else full paths."""
    leaves = sorted({p.rsplit(".", 1)[-1] for p in paths})
    kinds = (nn.Linear, Conv1D, QuantLinear, nn.Embedding)
    selected = [p for p, m in model.named_modules() if p and isinstance(m, kinds) and name_matches(p, leaves)]
    return leaves if selected == list(paths) else list(paths)
