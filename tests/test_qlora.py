"""QLoRA: LoRA on a quantized base is the same layer on a QuantLinear, and behaves like LoRA on the dequantized weight."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import inputs, logits, randomize_lora, tiny_model
from lorakit import LoraConfig, QuantConfig, add_lora, load_adapter, merge_and_unload, merge_lora, save_adapter
from lorakit.lora import LoRALinear
from lorakit.quant_linear import QuantLinear, quantize_model

KINDS = ["nf4", "fp4", "int8"]


def _dequantized_twin(qmodel: nn.Module, kind: str) -> nn.Module:
    """The same architecture with every QuantLinear replaced by an nn.Linear holding its dequantized weight."""
    twin = tiny_model(kind)
    for path, module in qmodel.named_modules():
        if isinstance(module, QuantLinear):
            dense = twin.get_submodule(path)
            with torch.no_grad():
                dense.weight.copy_(module.dequantize())  # bert and llama: nn.Linear, (out, in)
                if module.bias is not None:
                    dense.bias.copy_(module.bias)
    return twin


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_qlora_equals_lora_on_dequantized(kind, arch):
    qmodel = quantize_model(tiny_model(arch), QuantConfig(kind=kind, block_size=32))
    twin = _dequantized_twin(qmodel, arch)
    cfg = LoraConfig(r=4, alpha=8, target_modules="all-linear")
    add_lora(qmodel, cfg)
    add_lora(twin, cfg)
    randomize_lora(qmodel)
    randomize_lora(twin)
    with torch.no_grad():
        for name in qmodel.lorakit_config.modules_to_save:
            twin.get_submodule(name).load_state_dict(qmodel.get_submodule(name).state_dict())
    batch = inputs()
    assert (logits(qmodel, batch) - logits(twin, batch)).abs().max() <= 1e-5


@pytest.mark.parametrize("requantize", [False, True])
def test_merge_into_dequantized_base(requantize):
    model = quantize_model(tiny_model("bert"), QuantConfig(kind="nf4", block_size=32))
    add_lora(model, LoraConfig(r=4, alpha=8, target_modules="all-linear"))
    randomize_lora(model, scale=0.05)
    batch = inputs()
    expected = logits(model, batch)
    with pytest.raises(TypeError, match="merge_and_unload"):
        merge_lora(model)
    merged = merge_and_unload(model, requantize=requantize)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    if requantize:
        assert any(isinstance(m, QuantLinear) for m in merged.modules())
        errors = merged.requantize_errors
        assert errors and all(e["max_abs"] > 0 and 0 < e["rel_fro"] < 0.2 for e in errors.values())
    else:
        assert not any(isinstance(m, QuantLinear) for m in merged.modules())
        assert (logits(merged, batch) - expected).abs().max() <= 1e-5


def test_optimizer_step_moves_only_adapters_codes_untouched():
    model = quantize_model(tiny_model("bert"), QuantConfig(kind="nf4", block_size=32))
    add_lora(model, LoraConfig(r=4, alpha=8, target_modules="all-linear", dropout=0.1))
    model.train()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**inputs(), labels=torch.tensor([0, 1, 2])).loss.backward()
    opt.step()
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    for n, p in model.named_parameters():
        moved = not torch.equal(p, params[n])
        if "lora_B" in n or n.startswith("classifier"):
            assert moved, n
        if not p.requires_grad:
            assert not moved, n


def test_adapters_save_and_load_on_quantized_models(tmp_path):
    qc = QuantConfig(kind="nf4", block_size=32)
    model = quantize_model(tiny_model("llama"), qc)
    add_lora(model, LoraConfig(r=4, alpha=8, target_modules="all-linear"))
    randomize_lora(model)
    batch = inputs()
    expected = logits(model, batch)
    save_adapter(model, tmp_path)
    again = load_adapter(quantize_model(tiny_model("llama"), qc), tmp_path)
    assert torch.equal(logits(again, batch), expected)
    plain = load_adapter(tiny_model("llama"), tmp_path)  # the same adapter on the full-precision base
    assert (logits(plain, batch) - expected).abs().max() < 0.5  # close, not equal: the base differs by rounding
