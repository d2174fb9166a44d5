"""The layer: math, init, merge state, the fused autograd node against plain autograd."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorakit import LoRAEmbedding, LoRALinear
from lorakit import low_rank
from lorakit.layers import fused


def _layer(base, r=4, alpha=8.0, dropout=0.0, init="normal_1_over_r"):
    torch.manual_seed(0)
    layer = LoRALinear(base, r=r, alpha=alpha, dropout=dropout, init=init)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    return layer


def _reference(layer, x, mask=None, inv_q=1.0):
    """h = W0·x + b + (alpha/r)·B·A·(mask ⊙ x · inv_q), written with plain autograd ops."""
    base = layer.base_layer
    w = base.weight.t() if isinstance(base, Conv1D) else base.weight  # (out, in)
    xd = x if mask is None else x * mask * inv_q
    return x @ w.t() + base.bias + layer.scaling * (xd @ layer.lora_A.weight.t() @ layer.lora_B.weight.t())


def test_b_zero_equals_base():
    base = nn.Linear(16, 12)
    layer = LoRALinear(base, r=4, alpha=8)
    x = torch.randn(2, 5, 16)
    assert torch.equal(layer(x), base(x))
    assert torch.count_nonzero(layer.lora_B.weight) == 0


@pytest.mark.parametrize("init, peft_init", [("kaiming", True), ("gaussian", "gaussian")])
def test_init_equals_peft(init, peft_init):
    """PEFT is the oracle: from the same seed, its layer draws the same A (and B = 0)."""
    import peft
    base, peft_base = nn.Linear(64, 48), nn.Sequential(nn.Linear(64, 48))
    torch.manual_seed(0)
    ours = LoRALinear(base, r=8, alpha=16, init=init)
    torch.manual_seed(0)
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["0"], init_lora_weights=peft_init)
    theirs = peft.get_peft_model(peft_base, config).base_model.model[0]
    assert torch.equal(ours.lora_A.weight, theirs.lora_A["default"].weight)
    assert torch.count_nonzero(ours.lora_B.weight) == 0 and torch.count_nonzero(theirs.lora_B["default"].weight) == 0


def test_init_statistics():
    torch.manual_seed(0)
    g = LoRALinear(nn.Linear(512, 512), r=16, alpha=16, init="gaussian")
    assert abs(g.lora_A.weight.std().item() - 1 / 16) < 0.003  # PEFT's gaussian: A ~ N(0, 1/r^2)
    n = LoRALinear(nn.Linear(512, 512), r=16, alpha=16, init="normal_1_over_r")
    assert abs(n.lora_A.weight.std().item() - 1 / math.sqrt(16)) < 0.01  # A ~ N(0, 1/r)
    k = LoRALinear(nn.Linear(512, 512), r=16, alpha=16)  # the default: kaiming
    bound = 1 / math.sqrt(512)  # kaiming_uniform(a=sqrt(5)) on fan_in 512
    assert k.lora_A.weight.abs().max() <= bound + 1e-6 and k.lora_A.weight.abs().max() > 0.9 * bound
    with pytest.raises(ValueError, match="init='xavier'"):
        LoRALinear(nn.Linear(4, 4), r=2, alpha=2, init="xavier")


def test_weight_and_bias_answer_for_the_base():
    """Model code that reads `layer.weight.dtype` works on a wrapped layer (as on PEFT's); both are read-only."""
    base = nn.Linear(8, 6)
    layer = LoRALinear(base, r=2, alpha=4)
    assert layer.weight is base.weight and layer.bias is base.bias
    assert LoRALinear(nn.Linear(8, 6, bias=False), r=2, alpha=4).bias is None
    assert "weight" not in dict(layer.named_parameters())  # no second name for the base weight in state dicts
    with pytest.raises(AttributeError):
        layer.weight = torch.zeros(6, 8)
    from lorakit.config import QuantConfig
    from lorakit.quant.linear import QuantLinear
    quant = QuantLinear.from_linear(nn.Linear(64, 32), QuantConfig())
    qlayer = LoRALinear(quant, r=2, alpha=4)  # as PEFT over bnb: the packed storage (its dtype), not a dense matrix
    assert qlayer.weight is quant.qweight and qlayer.weight.dtype == torch.uint8 and qlayer.bias is quant.bias


def test_scaling_rslora():
    assert LoRALinear(nn.Linear(4, 4), r=4, alpha=8).scaling == 2.0
    assert LoRALinear(nn.Linear(4, 4), r=4, alpha=8, use_rslora=True).scaling == 4.0


@pytest.mark.parametrize("conv", [False, True])
def test_fused_forward_and_grads_match_autograd(conv):
    base = Conv1D(12, 16) if conv else nn.Linear(16, 12)  # Conv1D(nf=out, nx=in)
    with torch.no_grad():
        base.bias.normal_()
    layer = _layer(base)
    x = torch.randn(3, 5, 16, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = layer(x)
    ref = _reference(layer, x_ref)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    out.backward(g)
    grads = [x.grad, layer.lora_A.weight.grad, layer.lora_B.weight.grad]
    layer.zero_grad()
    ref.backward(g)
    for got, want in zip(grads, [x_ref.grad, layer.lora_A.weight.grad, layer.lora_B.weight.grad]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert base.weight.grad is None and base.bias.grad is None


def test_fused_gradcheck_with_dropout(monkeypatch):
    """With a fixed mask, the fused node's gradients equal finite differences (float64)."""
    torch.manual_seed(0)
    mask = (torch.rand(6, 8) > 0.3).to(torch.uint8)
    monkeypatch.setattr(low_rank, "keep_mask", lambda shape, p, device: (mask.view(shape), 1 / 0.7))
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    a = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    bb = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    f = lambda x, w, b, a, bb: fused.lora_linear(x, w, b, a, bb, 1.5, 0.3, False)
    assert torch.autograd.gradcheck(f, (x, w, b, a, bb))
    ref = x @ w.t() + b + 1.5 * ((x * mask.view(2, 3, 8) / 0.7) @ a.t() @ bb.t())
    torch.testing.assert_close(f(x, w, b, a, bb), ref)


def test_dropout_mask_rate_and_scale():
    torch.manual_seed(0)
    keep, inv_q = low_rank.keep_mask(torch.Size([1000, 1000]), 0.1, torch.device("cpu"))
    assert keep.dtype == torch.uint8
    assert abs(keep.float().mean().item() - 0.9) < 2e-3
    assert abs(inv_q - 1 / 0.9) < 1e-4
    layer = _layer(nn.Linear(64, 64), dropout=0.5)
    x = torch.randn(4, 64)
    layer.train()
    torch.manual_seed(1)
    y1 = layer(x)
    torch.manual_seed(2)
    assert not torch.allclose(y1, layer(x))  # stochastic in train mode
    layer.eval()
    torch.testing.assert_close(layer(x), _reference(layer, x))  # no dropout in eval mode


@pytest.mark.parametrize("conv", [False, True])
def test_merge_unmerge_idempotent(conv):
    base = Conv1D(12, 16) if conv else nn.Linear(16, 12)
    layer = _layer(base)
    w0 = base.weight.detach().clone()
    x = torch.randn(4, 16)
    y = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5)
    merged_w = base.weight.detach().clone()
    layer.merge()  # twice changes nothing
    assert torch.equal(base.weight, merged_w)
    layer.eval(); layer.train()  # mode changes never merge or unmerge
    assert layer.merged and torch.equal(base.weight, merged_w)
    layer.unmerge(); layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(base.weight, w0, rtol=0, atol=1e-6)


def test_merge_bf16_in_fp32():
    base = nn.Linear(32, 32).to(torch.bfloat16)
    layer = _layer(base)
    assert layer.lora_A.weight.dtype == torch.float32  # adapters train in fp32 over 16-bit bases
    x = torch.randn(2, 32, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    expected = (base.weight.float() + layer.delta_weight()).to(torch.bfloat16)
    layer.merge()
    assert torch.equal(base.weight, expected)


def test_disabled_equals_base():
    base = nn.Linear(16, 12)
    layer = _layer(base)
    x = torch.randn(3, 16)
    layer.disabled = True
    assert torch.equal(layer(x), base(x))


def test_embedding_layer():
    base = nn.Embedding(20, 8, padding_idx=0)
    torch.manual_seed(0)
    layer = LoRAEmbedding(base, r=4, alpha=8)
    ids = torch.tensor([[1, 5, 0, 19]])
    assert torch.equal(layer(ids), base(ids))  # A = 0 at init
    assert torch.count_nonzero(layer.lora_embedding_B) > 0
    with torch.no_grad():
        layer.lora_embedding_A.normal_()
    y = layer(ids)
    expected = base(ids) + 2.0 * (layer.lora_embedding_A.t()[ids] @ layer.lora_embedding_B.t())
    torch.testing.assert_close(y, expected)
    layer.merge(); layer.merge()
    torch.testing.assert_close(layer(ids), y, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer(ids), y)


def test_wrap_rejects_other_layers():
    with pytest.raises(TypeError, match="Conv2d"):
        LoRALinear(nn.Conv2d(3, 3, 3), r=2, alpha=2)


@pytest.mark.parametrize("p", [0.0, 0.2])
def test_fused_saves_no_copy_of_input(p):
    """Backward keeps x itself (shared with sibling layers), a 1-byte mask when p > 0, and x·A^T: no float copy of x."""
    layer = _layer(nn.Linear(64, 48), dropout=p).train()
    x = torch.randn(4, 50, 64, requires_grad=True)  # more elements than the weight
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x)
    big_float = [t for t in saved if t.is_floating_point() and t.numel() >= x.numel()]
    assert len(big_float) == 1 and big_float[0].data_ptr() == x.data_ptr()
    masks = [t for t in saved if not t.is_floating_point()]
    assert (len(masks) == 1 and masks[0].element_size() == 1) if p > 0 else not masks
