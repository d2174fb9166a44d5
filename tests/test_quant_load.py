"""Quantize while loading (quant/load.py): the same codes, constants and logits as quantize_model after a full
from_pretrained, on tiny sharded safetensors checkpoints; the full-precision weight is never kept."""
from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from helpers import inputs, logits, tiny_model

from lorakit import QuantConfig, load_quantized
from lorakit.quant.linear import QuantLinear, quantize_model
from lorakit.quant.load import safetensors_files

CONFIGS = {
    "nf4": QuantConfig(kind="nf4", double_quant=False),
    "nf4-dq": QuantConfig(kind="nf4", double_quant=True),
    "fp4-dq": QuantConfig(kind="fp4", double_quant=True),
    "int8": QuantConfig(kind="int8"),
    "int8-blockwise": QuantConfig(kind="int8", int8_blockwise=True),
}


def save_sharded(model: torch.nn.Module, directory, dtype=torch.bfloat16) -> None:
    model.to(dtype).save_pretrained(directory, max_shard_size="5KB")
    shards = set(json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"].values())
    assert len(shards) > 2  # really sharded: layers arrive in several files


def assert_same_state(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    a, b = expected.state_dict(), actual.state_dict()
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_loading_quantized_equals_quantizing_after_a_full_load(tmp_path, name, arch):
    config = CONFIGS[name]
    save_sharded(tiny_model(arch), tmp_path)
    reference = quantize_model(tf.AutoModelForCausalLM.from_pretrained(tmp_path), config)
    loaded = load_quantized(tmp_path, config)
    assert sum(isinstance(m, QuantLinear) for m in loaded.modules()) == 14 if arch == "llama" else 8
    assert_same_state(reference, loaded)  # qweight, absmax / absmax_q, absmax_scale, absmax_offset, the rest
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight or arch == "llama"  # GPT-2 ties
    assert not loaded.training
    batch = inputs()
    assert torch.equal(logits(reference, batch), logits(loaded, batch))


def test_fp32_checkpoint_and_untied_target_head(tmp_path):
    """An fp32 checkpoint loads in fp32; an lm_head not skipped (tied on GPT-2) is quantized after tying."""
    config = QuantConfig(kind="nf4", skip_modules=())
    save_sharded(tiny_model("gpt2"), tmp_path, dtype=torch.float32)
    reference = quantize_model(tf.AutoModelForCausalLM.from_pretrained(tmp_path), config)
    loaded = load_quantized(tmp_path, config)
    assert isinstance(loaded.lm_head, QuantLinear)
    assert loaded.get_input_embeddings().weight.dtype == torch.float32
    assert_same_state(reference, loaded)
    batch = inputs()
    assert torch.equal(logits(reference, batch), logits(loaded, batch))


def test_new_task_head_is_initialized_and_base_codes_match(tmp_path):
    """A causal-LM checkpoint loaded for sequence classification: `score` is not in it and is initialized."""
    config = QuantConfig(kind="nf4", double_quant=True)
    save_sharded(tiny_model("llama"), tmp_path)
    kwargs = {"num_labels": 3}
    reference = quantize_model(tf.AutoModelForSequenceClassification.from_pretrained(tmp_path, **kwargs), config)
    loaded = load_quantized(tmp_path, config, tf.AutoModelForSequenceClassification, kwargs)
    assert loaded.score.weight.shape == (3, 32) and torch.isfinite(loaded.score.weight).all()
    assert loaded.score.weight.std() > 0
    a, b = reference.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("score."))


def test_head_of_another_shape_needs_new_head(tmp_path):
    save_sharded(tiny_model("bert"), tmp_path)  # 3 labels
    kwargs = {"num_labels": 2}
    with pytest.raises(ValueError, match=r"classifier\.(weight|bias) has shape"):
        load_quantized(tmp_path, QuantConfig(), tf.AutoModelForSequenceClassification, kwargs)
    model = load_quantized(tmp_path, QuantConfig(), tf.AutoModelForSequenceClassification, kwargs, new_head=True)
    assert model.classifier.weight.shape == (2, 32)


def test_no_safetensors_is_a_clear_error(tmp_path):
    tiny_model("llama").config.save_pretrained(tmp_path)  # config.json, no weights (e.g. a .bin-only model)
    assert safetensors_files(tmp_path) == []
    with pytest.raises(ValueError, match="has no model.safetensors"):
        load_quantized(tmp_path, QuantConfig())


def test_read_safetensors_reads_every_dtype_and_shape(tmp_path):
    from safetensors.torch import save_file

    from lorakit.quant.load import read_safetensors

    tensors = {"w": torch.randn(3, 5).bfloat16(), "i": torch.arange(7), "empty": torch.zeros(0, 4),
               "scalar": torch.tensor(2.5), "h": torch.randn(4, 4).half(), "b": torch.tensor([True, False])}
    save_file(tensors, str(tmp_path / "x.safetensors"))
    read = dict(read_safetensors(tmp_path / "x.safetensors"))
    assert sorted(read) == sorted(tensors)
    for name, tensor in tensors.items():
        assert read[name].dtype == tensor.dtype and torch.equal(read[name], tensor), name
