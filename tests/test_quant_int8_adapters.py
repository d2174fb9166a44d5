"""int8 adapters (LoraConfig(adapter_dtype="int8")): per-row quantization, fake-quant training, int8 files."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from helpers import inputs, logits, randomize_lora, tiny_model
from lorakit import LoraConfig, QuantConfig, add_lora, load_adapter, merge_and_unload, save_adapter
from lorakit.quant.int8_adapters import dequantize_rows, fake_quantize, quantize_rows
from lorakit.quant.linear import quantize_model

INT8 = dict(r=4, alpha=8, target_modules="all-linear", adapter_dtype="int8")


# ---------------------------------------------------------------- per-row quantization


def test_quantize_rows_error_and_idempotence():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 40, generator=g) * torch.logspace(-4, 1, 16)[:, None]  # rows of very different scales
    w[3] = 0  # a zero row (B starts at zero)
    codes, scale = quantize_rows(w)
    assert codes.dtype == torch.int8 and codes.shape == (16, 40)
    assert scale.dtype == torch.float32 and scale.shape == (16,)
    assert codes.abs().amax(dim=1)[torch.arange(16) != 3].eq(127).all() and scale[3] == 0 and (codes[3] == 0).all()
    w_hat = dequantize_rows(codes, scale)
    assert ((w_hat - w).abs() <= 0.5 * scale[:, None] * (1 + 1e-6)).all()  # half a step per row
    assert torch.equal(scale, scale.bfloat16().float())  # scales have 8 significant bits...
    codes2, scale2 = quantize_rows(w_hat)  # ...so quantizing the dequantized values changes nothing
    assert torch.equal(codes2, codes) and torch.equal(scale2, scale)


def test_fake_quantize_value_and_straight_through_gradient():
    w = torch.randn(8, 24, requires_grad=True)
    out = fake_quantize(w)
    assert torch.equal(out, dequantize_rows(*quantize_rows(w)))
    g = torch.randn(8, 24)
    out.backward(g)
    assert torch.equal(w.grad, g)  # dL/dw := dL/dw_hat


# ---------------------------------------------------------------- training and inference


def test_forward_uses_int8_adapters_and_gradients_reach_a_and_b():
    model = add_lora(tiny_model("bert"), LoraConfig(**INT8)).train()
    reference = add_lora(tiny_model("bert"), LoraConfig(**{**INT8, "adapter_dtype": "float32"})).eval()
    randomize_lora(model, scale=0.3)
    with torch.no_grad():
        for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
            q.copy_(dequantize_rows(*quantize_rows(p)) if name.endswith(("lora_A.weight", "lora_B.weight")) else p)
    batch = inputs()
    model.eval()
    assert torch.equal(logits(model, batch), logits(reference, batch))  # forward = fp32 LoRA on dq(q(A)), dq(q(B))
    model.train()
    model(**batch, labels=torch.tensor([0, 1, 2])).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_training_steps_from_zero_b():
    """B starts at zero (a zero row quantizes to zero); the straight-through gradient still moves it."""
    model = add_lora(tiny_model("bert"), LoraConfig(**INT8)).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(**inputs(), labels=torch.tensor([0, 1, 2])).loss.backward()
        opt.step()
        opt.zero_grad()
    moved = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert all(p.abs().sum() > 0 for p in moved)


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2", "qlora-llama"])
def test_save_load_bit_exact_logits(kind, tmp_path):
    arch = kind.removeprefix("qlora-")

    def fresh():
        model = tiny_model(arch)
        return quantize_model(model, QuantConfig(kind="nf4", block_size=32)) if kind.startswith("qlora") else model

    model = add_lora(fresh(), LoraConfig(**INT8))
    randomize_lora(model)
    model.train()  # a few steps: the fp32 master weights leave the int8 grid, the file holds their quantization
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        out = model(**inputs())
        out.logits.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    batch = inputs(seed=7)
    expected = logits(model, batch)
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORAKIT_INT8"
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        assert f.metadata()["lorakit_adapter_dtype"] == "int8"
        lora_keys = [k for k in f.keys() if ".lora_A.weight" in k or ".lora_B.weight" in k]
        codes = [k for k in lora_keys if not k.endswith("_scale")]
        assert codes and all(f.get_tensor(k).dtype == torch.int8 for k in codes)
        assert all(f.get_tensor(k + "_scale").dtype == torch.float32 for k in codes)
    again = load_adapter(fresh(), tmp_path).eval()
    assert again.lorakit.config.adapter_dtype == "int8"
    assert torch.equal(logits(again, batch), expected)


class _Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up, self.down = nn.Linear(512, 512), nn.Linear(512, 512)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def test_int8_file_is_about_4x_smaller(tmp_path):
    sizes = {}
    for dtype in ("float32", "int8"):
        model = add_lora(_Mlp(), LoraConfig(r=32, alpha=32, target_modules=["up", "down"], adapter_dtype=dtype))
        randomize_lora(model)
        save_adapter(model, tmp_path / dtype)
        sizes[dtype] = (tmp_path / dtype / "adapter_model.safetensors").stat().st_size
    # per layer: A (32, 512) + B (512, 32) codes, one fp32 scale per row (32 + 512): 32768 + 2176 bytes
    assert sizes["int8"] < 2 * (32768 + 2176) + 1000
    assert sizes["float32"] / sizes["int8"] > 3.6  # 32 bits against 8 + 32/512 (A) and 8 + 32/32 (B)


def test_peft_refuses_int8_adapters(tmp_path):
    peft = pytest.importorskip("peft")
    model = add_lora(tiny_model("llama"), LoraConfig(**INT8))
    save_adapter(model, tmp_path)
    with pytest.raises(KeyError, match="LORAKIT_INT8"):
        peft.PeftModel.from_pretrained(tiny_model("llama"), tmp_path)


def test_merge_uses_the_quantized_adapters():
    model = add_lora(tiny_model("bert"), LoraConfig(**INT8))
    randomize_lora(model, scale=0.05)
    batch = inputs()
    expected = logits(model, batch)
    merged = merge_and_unload(model)
    assert (logits(merged, batch) - expected).abs().max() <= 1e-5
