"""DoRA (layers/dora.py): PEFT parity both ways, the LoRA invariants, QDoRA on NF4, the fused node's gradients."""
from __future__ import annotations

import copy

import pytest
import torch
from helpers import inputs, logits, randomize_lora, tiny_model
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import nn

from lorakit import (LoraConfig, QuantConfig, add_lora, disable_lora, load_adapter, merge_and_unload, merge_lora,
                     parameter_report, save_adapter, unmerge_lora)
from lorakit.layers.dora import DoRALinear
from lorakit.quant.linear import QuantLinear, dequantize_model, quantize_model

TARGETS = {"bert": ["query", "value", "dense"], "gpt2": ["c_attn", "c_proj", "c_fc"],
           "llama": ["q_proj", "v_proj", "down_proj"]}


def _dora(kind, **kw):
    model = tiny_model(kind)
    add_lora(model, LoraConfig(r=4, alpha=8, target_modules=TARGETS[kind], use_dora=True, init="kaiming", **kw))
    randomize_lora(model, scale=0.3)
    return model


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_lorakit_dora_loads_in_peft(kind, tmp_path):
    model = _dora(kind)
    save_adapter(model, tmp_path / "a")
    theirs = PeftModel.from_pretrained(tiny_model(kind), tmp_path / "a").eval()
    batch = inputs()
    torch.testing.assert_close(logits(theirs, batch), logits(model, batch), atol=1e-5, rtol=0)
    assert parameter_report(model).trainable == sum(
        p.numel() for n, p in theirs.named_parameters() if "lora_" in n) + sum(
        p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n)


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_peft_dora_loads_in_lorakit(kind, tmp_path):
    theirs = get_peft_model(tiny_model(kind), PeftLoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[kind],
                                                             use_dora=True, fan_in_fan_out=kind == "gpt2"))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    theirs.eval()
    theirs.save_pretrained(tmp_path / "p")
    ours = load_adapter(tiny_model(kind), tmp_path / "p").eval()
    assert any(isinstance(m, DoRALinear) for m in ours.modules())
    batch = inputs()
    torch.testing.assert_close(logits(ours, batch), logits(theirs, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_dora_invariants(kind):
    base, batch = tiny_model(kind), inputs()
    want = logits(base, batch)
    model = tiny_model(kind)
    add_lora(model, LoraConfig(r=4, alpha=8, target_modules=TARGETS[kind], use_dora=True))
    torch.testing.assert_close(logits(model, batch), want, atol=1e-5, rtol=0)  # B = 0, m = ||W0||: the base
    randomize_lora(model, scale=0.3)
    adapted = logits(model, batch)
    assert (adapted - want).abs().max() > 1e-3
    with disable_lora(model):
        torch.testing.assert_close(logits(model, batch), want, atol=1e-6, rtol=0)
    merge_lora(model)
    merge_lora(model)  # idempotent
    torch.testing.assert_close(logits(model, batch), adapted, atol=1e-5, rtol=0)
    unmerge_lora(model)
    torch.testing.assert_close(logits(model, batch), adapted, atol=1e-5, rtol=0)
    plain = merge_and_unload(copy.deepcopy(model))
    assert not any(isinstance(m, DoRALinear) for m in plain.modules())
    torch.testing.assert_close(logits(plain, batch), adapted, atol=1e-5, rtol=0)
    with disable_lora(model):
        torch.testing.assert_close(logits(model, batch), want, atol=1e-5, rtol=0)


def test_only_adapter_weights_move():
    model = tiny_model("bert").train()
    add_lora(model, LoraConfig(r=4, alpha=8, target_modules=TARGETS["bert"], use_dora=True))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(**inputs(), labels=torch.tensor([0, 1, 2])).loss.backward()
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all("lora_" in n or n.startswith("classifier") for n in moved)
    assert any("lora_magnitude_vector" in n for n in moved)


@pytest.mark.parametrize("fan_in_fan_out", [False, True])
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_fused_node_gradients_match_autograd(fan_in_fan_out, p):
    """DoRALinearFunction against the same formula written with plain ops (norm detached, as in the paper)."""
    torch.manual_seed(0)
    from transformers.pytorch_utils import Conv1D
    base = Conv1D(12, 10) if fan_in_fan_out else nn.Linear(10, 12)
    layer = DoRALinear(base, r=3, alpha=6, dropout=p).train()
    randomize_lora(layer, scale=0.4)
    base.bias.requires_grad_(True)  # bias="all": the node's own dL/db
    x = torch.randn(2, 5, 10, requires_grad=True)
    torch.manual_seed(7)
    y = layer(x)
    gy = torch.randn_like(y)
    (y * gy).sum().backward()
    got = [x.grad.clone()] + [t.grad.clone() for t in (layer.lora_A.weight, layer.lora_B.weight,
                                                        layer.lora_magnitude_vector, base.bias)]
    for t in (x, layer.lora_A.weight, layer.lora_B.weight, layer.lora_magnitude_vector, base.bias):
        t.grad = None
    w0 = base.weight.t() if fan_in_fan_out else base.weight  # (out, in)
    a, b, m, s = layer.lora_A.weight, layer.lora_B.weight, layer.lora_magnitude_vector, layer.scaling
    norm = (w0 + s * b @ a).norm(dim=1).detach()
    if p > 0:  # the same keep mask: replay the generator
        torch.manual_seed(7)
        from lorakit.low_rank import keep_mask
        keep, inv_q = keep_mask(torch.Size([10, 10]), p, x.device)
        xd = x.reshape(-1, 10) * keep * inv_q
    else:
        xd = x.reshape(-1, 10)
    u = x.reshape(-1, 10) @ w0.t() + s * (xd @ a.t()) @ b.t()
    ref = ((m / norm) * u + base.bias).view_as(y)
    torch.testing.assert_close(ref, y, atol=1e-5, rtol=1e-5)
    (ref * gy).sum().backward()
    want = [x.grad, a.grad, b.grad, m.grad, base.bias.grad]
    for g_got, g_want in zip(got, want):
        torch.testing.assert_close(g_got, g_want, atol=1e-5, rtol=1e-4)


def test_eval_norm_is_cached_and_invalidated():
    layer = DoRALinear(nn.Linear(8, 6), r=2, alpha=4).eval()
    n1 = layer.weight_norm()
    assert layer.weight_norm() is n1  # cached in eval mode
    with torch.no_grad():
        layer.lora_B.weight.add_(0.5)
    assert layer.weight_norm() is not n1  # B changed: recomputed
    torch.testing.assert_close(layer.weight_norm(), (layer.base_layer.weight + layer.scaling * layer.lora_B.weight
                                                     @ layer.lora_A.weight).norm(dim=1))


def test_qdora_equals_dora_on_dequantized_weight():
    qcfg = QuantConfig(kind="nf4", double_quant=True)
    quantized = quantize_model(tiny_model("bert"), qcfg)
    dense = dequantize_model(copy.deepcopy(quantized))  # the same weights, fp32
    batch = inputs()
    base_q = logits(quantized, batch)
    cfg = LoraConfig(r=4, alpha=8, target_modules=TARGETS["bert"], use_dora=True)
    add_lora(quantized, cfg)
    add_lora(dense, cfg)
    for model in (quantized, dense):
        randomize_lora(model, scale=0.3)
    assert any(isinstance(m.base_layer, QuantLinear) for m in quantized.modules() if isinstance(m, DoRALinear))
    torch.testing.assert_close(logits(quantized, batch), logits(dense, batch), atol=1e-5, rtol=0)
    assert (logits(quantized, batch) - base_q).abs().max() > 1e-3
    with disable_lora(quantized):
        torch.testing.assert_close(logits(quantized, batch), base_q, atol=1e-6, rtol=0)
    plain = merge_and_unload(copy.deepcopy(quantized))  # dequantized W0 with DoRA folded in
    torch.testing.assert_close(logits(plain, batch), logits(dense, batch), atol=1e-5, rtol=0)
    quantized.train()
    quantized(**batch, labels=torch.tensor([0, 1, 2])).loss.backward()
    assert all(m.lora_magnitude_vector.grad is not None for m in quantized.modules() if isinstance(m, DoRALinear))
