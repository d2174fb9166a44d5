"""GGUF out, for llama.cpp, Ollama and LM Studio: the merged model, or the adapter alone as a GGUF LoRA file.

    write_merged_gguf(merged, tokenizer_source, "model.gguf", out_type="f16")   # or "q8_0", "f32", "base"
    write_lora_gguf(lora_model, "adapter.gguf")       # llama-cli -m base.gguf --lora adapter.gguf
    export_gguf("runs/instruct", "out.gguf")          # `lorakit export --adapter runs/instruct --gguf out.gguf`

Names and layout follow llama.cpp's own converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py):
  * tensor names come from the `gguf` package's TensorNameMap for the architecture ("model.layers.0.self_attn.q_proj"
    -> "blk.0.attn_q"); Llama-family models only (LLAMA: Llama, SmolLM2, Mistral; QWEN2: Qwen2);
  * LLAMA's rotary layout differs from transformers': the rows of attn_q / attn_k are permuted per head
    (`permute_rows`, convert_hf_to_gguf's LlamaModel.permute). A LoRA delta B·A of q/k gets the same row
    permutation, which lands on B alone: P·(B·A) = (P·B)·A. QWEN2 uses the NeoX layout: no permutation;
  * a torch tensor of shape (rows, cols) is stored as is; ggml lists dimensions in reverse (ne = [cols, rows]).
    So lora_a holds A: torch (r, in), ggml ne [in, r]; lora_b holds B: torch (out, r), ggml ne [r, out];
  * the LoRA file has general.type "adapter", adapter.type "lora", adapter.lora.alpha; llama.cpp scales each delta
    by alpha / r with r read from lora_a's shape. lorakit's own per-layer scaling (rsLoRA, alpha_pattern) is folded
    into B so that alpha / r times B·A equals the layer's scaling·B·A exactly.
Tokenizer and chat template: copied key by key from the base model's GGUF file when there is one (SmolLM2 arrives
as GGUF), else built from the tokenizer directory with the `gguf` package's BpeVocab + SpecialVocab.
Out types: f32, f16, q8_0 (quantized by the `gguf` package), or "base": each tensor in the base GGUF file's own type
(SmolLM2's Q4_1 / Q8_0 / F32). Vectors (norms, biases) stay f32 as llama.cpp's converter keeps them; a matrix whose
rows do not split into the type's blocks falls back to f16, as convert_hf_to_gguf does.
"""
from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from lorakit.io.atomic import initial_mode, is_no_space, no_space_error

if TYPE_CHECKING:  # imported where used: `lorakit --help` stays light
    import numpy as np
    import torch
    from torch import nn

ARCHITECTURES = {  # transformers model class -> gguf MODEL_ARCH name (convert_hf_to_gguf's registrations)
    "LlamaForCausalLM": "LLAMA", "MistralForCausalLM": "LLAMA", "Qwen2ForCausalLM": "QWEN2",
}
OUT_TYPES = ("f16", "q8_0", "f32", "base")
_FILE_TYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "Q8_0": "MOSTLY_Q8_0", "Q4_0": "MOSTLY_Q4_0",
               "Q4_1": "MOSTLY_Q4_1", "Q5_0": "MOSTLY_Q5_0", "Q5_1": "MOSTLY_Q5_1"}


@dataclass(frozen=True)
class Shape:
    """The hyperparameters the GGUF header and the q/k permutation need, read from a transformers config."""

    arch: str  # gguf MODEL_ARCH name
    blocks: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    ffn: int
    context: int
    vocab: int
    rms_eps: float
    rope_theta: float
    tied: bool


def model_shape(model: nn.Module) -> Shape:
    """Shape of a Llama-family causal LM; one clear error for any other architecture."""
    name = type(model).__name__
    if name not in ARCHITECTURES:
        raise ValueError(f"GGUF export supports the Llama family ({', '.join(ARCHITECTURES)}); this model is {name}")
    c = model.config
    rope = dict(getattr(c, "rope_parameters", None) or {"rope_type": "default", "rope_theta": c.rope_theta})
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"GGUF export writes plain RoPE only; this model uses rope_type {rope['rope_type']!r}")
    heads = c.num_attention_heads
    return Shape(ARCHITECTURES[name], c.num_hidden_layers, heads, c.num_key_value_heads or heads,
                 getattr(c, "head_dim", None) or c.hidden_size // heads, c.hidden_size, c.intermediate_size,
                 c.max_position_embeddings, c.vocab_size, c.rms_norm_eps, float(rope["rope_theta"]),
                 bool(c.tie_word_embeddings))


def permute_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """convert_hf_to_gguf's LlamaModel.permute: per head, rows (2, d/2) -> (d/2, 2) (transformers' rotate-half
    layout to GGML's interleaved pairs). weight: (heads·d, ...) -> same shape."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2) \
        .reshape(weight.shape)


def _q_k_heads(shape: Shape, hf_name: str) -> int | None:
    """Heads to permute the rows of this tensor by (LLAMA q_proj / k_proj), or None."""
    if shape.arch != "LLAMA":
        return None
    if ".q_proj." in hf_name:
        return shape.heads
    return shape.kv_heads if ".k_proj." in hf_name else None


def gguf_name(name_map, hf_name: str) -> str:
    """"model.layers.0.self_attn.q_proj.weight" -> "blk.0.attn_q.weight" via the gguf package's TensorNameMap."""
    mapped = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise ValueError(f"GGUF export: no llama.cpp tensor name for {hf_name}")
    return mapped


def write_atomic(writer_fn, path: str | os.PathLike) -> Path:
    """Run writer_fn(tmp_path) on a temporary file next to `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.fchmod(fd, initial_mode())  # the user's umask, not mkstemp's 0600 (kept after the rename)
    os.close(fd)
    try:
        writer_fn(Path(tmp))
        os.replace(tmp, path)
    except Exception as err:
        if is_no_space(err):
            raise no_space_error(path, Path(tmp).stat().st_size, so_far=True) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _header(writer, shape: Shape, name: str) -> None:
    writer.add_name(name)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.blocks)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_vocab_size(shape.vocab)
    writer.add_rope_dimension_count(shape.head_dim)


def copy_tokenizer(writer, base_gguf: str | os.PathLike) -> None:
    """Every tokenizer.* key of a llama.cpp-made GGUF file (tokens, merges, special ids, pre, chat template)."""
    import gguf

    for key, field in gguf.GGUFReader(base_gguf).fields.items():
        if key.startswith("tokenizer."):
            kind = gguf.GGUFValueType(field.types[0])
            sub = gguf.GGUFValueType(field.types[-1]) if kind == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), kind, sub)


def tokenizer_from_directory(writer, tokenizer, vocab_size: int) -> None:
    """A byte-level BPE tokenizer (GPT-2 style: Llama 3, SmolLM2, Qwen2) via the gguf package's BpeVocab and
    SpecialVocab, as convert_hf_to_gguf's _set_vocab_gpt2 does; the pre-tokenizer is recorded as "default"."""
    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        try:
            vocab = gguf.vocab.BpeVocab(Path(tmp))
        except (FileNotFoundError, ValueError, KeyError) as err:
            raise ValueError(f"GGUF export needs a byte-level BPE tokenizer (tokenizer.json); {err}") from None
        tokens, _, types = (list(column) for column in zip(*vocab.all_tokens()))
        for i in range(len(tokens), vocab_size):  # rows of the embedding no token uses
            tokens.append(f"[PAD{i}]".encode())
            types.append(gguf.TokenType.UNUSED)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(tmp, load_merges=True, n_vocab=len(tokens))
        special.add_to_gguf(writer, quiet=True)
        if special.chat_template is None and tokenizer.chat_template:
            writer.add_chat_template(tokenizer.chat_template)


def tensor_type(out_type: str, gguf_name_: str, array: np.ndarray, base_types: dict):
    """The GGML type one tensor is written in (module docstring: vectors f32, unsplittable rows f16)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

    if array.ndim == 1:
        return Q.F32
    wanted = base_types.get(gguf_name_, Q.F16) if out_type == "base" else {"f16": Q.F16, "q8_0": Q.Q8_0,
                                                                           "f32": Q.F32}[out_type]
    if wanted not in (Q.F32, Q.F16) and array.shape[-1] % GGML_QUANT_SIZES[wanted][0]:
        return Q.F16
    return wanted


def base_tensor_types(base_gguf: str | os.PathLike | None) -> dict:
    """{gguf tensor name: GGML type} of the base GGUF file ({} without one)."""
    import gguf

    return {t.name: t.tensor_type for t in gguf.GGUFReader(base_gguf).tensors} if base_gguf else {}


def file_type(out_type: str, base_types: dict):
    """general.file_type: the type of most matrices (llama.cpp's LlamaFileType naming)."""
    from gguf import GGMLQuantizationType as Q, LlamaFileType

    if out_type != "base":
        return LlamaFileType[_FILE_TYPES[out_type.upper()]]
    matrices = [t for t in base_types.values() if t not in (Q.F32,)]
    common = max(set(matrices), key=matrices.count) if matrices else Q.F16
    if common.name not in _FILE_TYPES:
        raise ValueError(f"--gguf-type base: the gguf package cannot write the base file's type {common.name}; "
                         f"use one of f16, q8_0, f32")
    return LlamaFileType[_FILE_TYPES[common.name]]


def write_merged_gguf(model: nn.Module, tokenizer, path: str | os.PathLike, out_type: str = "f16",
                      base_gguf: str | os.PathLike | None = None, name: str = "lorakit merged model") -> Path:
    """The merged (plain transformers) model as a GGUF model file. base_gguf: the base model's own GGUF file, whose
    tokenizer keys are copied (else built from `tokenizer`) and whose tensor types out_type "base" reuses."""
    import gguf

    if out_type not in OUT_TYPES:
        raise ValueError(f"unknown GGUF type {out_type!r}; accepted: {', '.join(OUT_TYPES)}")
    if out_type == "base" and base_gguf is None:
        raise ValueError("--gguf-type base needs the base model's GGUF file (--base-gguf FILE)")
    shape = model_shape(model)
    arch = gguf.MODEL_ARCH[shape.arch]
    name_map = gguf.get_tensor_name_map(arch, shape.blocks)
    base_types = base_tensor_types(base_gguf)

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
        writer.add_type(gguf.GGUFType.MODEL)
        _header(writer, shape, name)
        writer.add_file_type(file_type(out_type, base_types))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        if base_gguf is not None:
            copy_tokenizer(writer, base_gguf)
        else:
            tokenizer_from_directory(writer, tokenizer, shape.vocab)
        for hf_name, tensor in model.state_dict().items():
            if shape.tied and hf_name == "lm_head.weight":
                continue  # llama.cpp reuses token_embd
            heads = _q_k_heads(shape, hf_name)
            tensor = permute_rows(tensor, heads) if heads else tensor
            array = tensor.detach().float().cpu().numpy()
            target = gguf_name(name_map, hf_name)
            qtype = tensor_type(out_type, target, array, base_types)
            writer.add_tensor(target, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        _finish(writer)

    return write_atomic(write, path)


def write_lora_gguf(model: nn.Module, path: str | os.PathLike, name: str = "lorakit adapter") -> Path:
    """The LoRA weights of a lorakit model (add_lora / load_adapter, not merged) as a llama.cpp LoRA adapter."""
    import gguf

    from lorakit.state import adapter_state
    from lorakit.quant.int8_adapters import adapter_weights
    from lorakit.inject.inject import lora_layers
    from lorakit.layers.lora import LoRALinear

    shape = model_shape(model)
    config = adapter_state(model).config
    if config.bias != "none" or config.modules_to_save:
        raise ValueError("a llama.cpp LoRA file holds LoRA A/B only; this adapter also trains biases or "
                         f"modules_to_save {list(config.modules_to_save)}: export the merged model instead")
    layers = lora_layers(model)
    if any(not isinstance(layer, LoRALinear) or layer.merged for _, layer in layers):
        raise ValueError("--lora-only exports unmerged LoRA on linear layers only (no embedding LoRA); "
                         "export the merged model instead")
    if shape.tied and any(p == "lm_head" for p, _ in layers):
        raise ValueError("LoRA on a tied lm_head cannot be applied by llama.cpp; export the merged model instead")
    arch = gguf.MODEL_ARCH[shape.arch]
    name_map = gguf.get_tensor_name_map(arch, shape.blocks)

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_name(name)
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config.alpha))
        for module_path, layer in layers:
            A, B = (w.detach().float().cpu() for w in adapter_weights(layer))  # A: (r, in), B: (out, r)
            B = B * (layer.scaling * layer.r / config.alpha)  # llama.cpp scales by alpha / r: fold in the rest
            heads = _q_k_heads(shape, module_path + ".")
            B = permute_rows(B, heads) if heads else B  # P·(B·A) = (P·B)·A
            target = gguf_name(name_map, module_path + ".weight")
            writer.add_tensor(target + ".lora_a", A.contiguous().numpy())
            writer.add_tensor(target + ".lora_b", B.contiguous().numpy())
        _finish(writer)

    return write_atomic(write, path)


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _check_architecture(base_name: str) -> None:
    """The base model's class from its config, before any weights are loaded."""
    import transformers as tf

    from lorakit.models.loading import resolve_model_path

    classes = tf.AutoConfig.from_pretrained(resolve_model_path(base_name)).architectures or ["unknown"]
    if classes[0] not in ARCHITECTURES:
        raise ValueError(f"GGUF export supports the Llama family ({', '.join(ARCHITECTURES)}); "
                         f"{base_name} is {classes[0]}")


def export_gguf(adapter: str, out: str, model: str | None = None, out_type: str = "f16", lora_only: bool = False,
                base_gguf: str | None = None) -> Path:
    """`lorakit export`: load the adapter (a `lorakit train` output or a PEFT adapter directory) on its base model
    (`model` overrides the recorded one) and write the merged model, or with lora_only the adapter alone.
    The base GGUF file (tokenizer keys, "base" types) is `base_gguf`, else SmolLM2's packaged file for the
    "smollm2" base, else none (the tokenizer is then built from the base model's tokenizer files)."""
    if importlib.util.find_spec("gguf") is None:
        raise ValueError("lorakit export --gguf needs the gguf package: pip install 'lorakit[gguf]'")
    from lorakit.models.gguf import find_smollm2_gguf
    from lorakit.training.methods import find_artifact, load_artifact, merged_model, read_record
    from lorakit.tasks import get_task

    if not Path(adapter).is_dir():
        raise FileNotFoundError(f"--adapter {adapter}: no such directory")
    if out_type not in OUT_TYPES:
        raise ValueError(f"unknown --gguf-type {out_type!r}; accepted: {', '.join(OUT_TYPES)}")
    artifact = find_artifact(adapter)
    record = read_record(artifact)
    peft_config = artifact / "adapter_config.json"
    recorded = json.loads(peft_config.read_text()).get("base_model_name_or_path") if peft_config.is_file() else None
    base_name = model or record.get("base_model") or recorded
    if base_name is None:
        raise ValueError(f"{adapter} does not record its base model; give it with --model")
    if base_gguf is None and (base_name or "").lower() == "smollm2":
        base_gguf = str(find_smollm2_gguf())
    if base_gguf is not None and not Path(base_gguf).is_file():
        raise FileNotFoundError(f"--base-gguf {base_gguf}: no such file")
    _check_architecture(base_name)
    task = get_task(record.get("task") or "instruct")
    lora_model, tokenizer, _ = load_artifact(adapter, task, base_model=base_name)
    model_shape(lora_model)
    if lora_only:
        return write_lora_gguf(lora_model, out, name=f"lorakit adapter {Path(adapter).name}")
    return write_merged_gguf(merged_model(lora_model).float().eval(), tokenizer, out, out_type, base_gguf,
                             name=f"{base_name or 'model'} + lorakit adapter {Path(adapter).name}")
