"""PiSSA, OLoRA (residual inits, saved as rank-2r LoRA on the original base) and LoftQ (init/family.py)."""
from __future__ import annotations

import json

import pytest
import torch
from helpers import inputs, logits, randomize_lora, tiny_model
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model

from lorakit import LoraConfig, QuantConfig, add_lora, apply_loftq, load_adapter, save_adapter
from lorakit.layers.lora import LoRALinear
from lorakit.init.family import loftq_factors, principal_factors
from lorakit.quant.codes import dequantize, quantize
from lorakit.quant.linear import QuantLinear

TARGETS = {"bert": ["query", "value", "dense"], "gpt2": ["c_attn", "c_proj"], "llama": ["q_proj", "v_proj", "up_proj"]}


def _perturb(model, seed=5, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora"])
@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_saved_residual_adapter_works_on_the_original_base(kind, init, tmp_path):
    batch = inputs()
    base_logits = logits(tiny_model(kind), batch)
    model = tiny_model(kind)
    add_lora(model, LoraConfig(r=4, alpha=8, target_modules=TARGETS[kind], init=init))
    torch.testing.assert_close(logits(model, batch), base_logits, atol=1e-4, rtol=0)  # W_res + s·B·A = W0
    _perturb(model)  # "training"
    trained = logits(model, batch)
    assert (trained - base_logits).abs().max() > 1e-3
    save_adapter(model, tmp_path / "a")
    fields = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert fields["r"] == 8 and fields["lora_alpha"] == 16 and fields["init_lora_weights"] is True
    theirs = PeftModel.from_pretrained(tiny_model(kind), tmp_path / "a").eval()  # the unmodified base
    torch.testing.assert_close(logits(theirs, batch), trained, atol=1e-4, rtol=0)
    ours = load_adapter(tiny_model(kind), tmp_path / "a")
    torch.testing.assert_close(logits(ours, batch), trained, atol=1e-4, rtol=0)


@pytest.mark.parametrize("init", ["pissa", "olora"])
@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_peft_converted_adapter_loads_in_lorakit(kind, init, tmp_path):
    peft_model = get_peft_model(tiny_model(kind), PeftLoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[kind],
                                                                 init_lora_weights=init))
    peft_model.peft_config["default"].init_lora_weights = True
    peft_model.save_pretrained(tmp_path / "init")
    peft_model.peft_config["default"].init_lora_weights = init
    _perturb(peft_model)
    peft_model.eval()
    batch = inputs()
    want = logits(peft_model, batch)
    peft_model.save_pretrained(tmp_path / "conv", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    ours = load_adapter(tiny_model(kind), tmp_path / "conv")
    assert ours.lorakit.config.r == 8
    torch.testing.assert_close(logits(ours, batch), want, atol=1e-4, rtol=0)


def test_pissa_factors_are_the_top_singular_triplets():
    torch.manual_seed(0)
    w = torch.randn(24, 16) @ torch.diag(0.1 ** torch.arange(16.0)) @ torch.randn(16, 16)  # a decaying spectrum
    a, b = principal_factors(w, 4, 2.0)
    u, s, vh = torch.linalg.svd(w)
    torch.testing.assert_close(2.0 * b @ a, u[:, :4] @ torch.diag(s[:4]) @ vh[:4], atol=1e-5, rtol=1e-5)
    a2, b2 = principal_factors(w, 4, 2.0, niter=8)
    assert (2.0 * b2 @ a2 - 2.0 * b @ a).norm() < 1e-2 * (2.0 * b @ a).norm()  # randomized SVD finds them


@pytest.mark.parametrize("kind", ["nf4", "fp4", "int8"])
def test_loftq_lowers_the_quantization_error(kind):
    torch.manual_seed(0)
    w = torch.randn(64, 128) * 0.05
    cfg = QuantConfig(kind=kind, double_quant=False)

    def error(q_input, a, b):
        q = dequantize(quantize(q_input, kind, cfg.block_size, False, False), torch.float32)
        return (w - q - 1.0 * b @ a).norm()

    plain = (w - dequantize(quantize(w, kind, cfg.block_size, False, False), torch.float32)).norm()
    one = error(*loftq_factors(w, 8, 1.0, cfg, 1))
    five = error(*loftq_factors(w, 8, 1.0, cfg, 5))
    assert one < plain and five <= one * 1.001


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_apply_loftq_on_a_model(kind):
    model = tiny_model(kind)
    add_lora(model, LoraConfig(r=4, alpha=8, target_modules=TARGETS[kind], init="loftq", loftq_iter=3))
    errors = apply_loftq(model, QuantConfig(kind="nf4"))
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert layers and all(isinstance(m.base_layer, QuantLinear) for m in layers)
    assert all(isinstance(m.lora_A, torch.nn.Linear) for m in layers)  # adapters stay full precision
    assert sum(e["loftq"] ** 2 for e in errors.values()) < sum(e["plain"] ** 2 for e in errors.values())
    # the recorded error is the model's: W0 - (dq(Q) + s·B·A) with the layer's own codes
    fresh = tiny_model(kind)
    path, layer = next((p, m) for p, m in model.named_modules() if isinstance(m, LoRALinear))
    w0 = fresh.get_submodule(path).weight.float()
    w0 = w0.t() if kind == "gpt2" else w0
    got = (w0 - layer.base_layer.dequantize() - layer.scaling * layer.lora_B.weight @ layer.lora_A.weight).norm()
    assert abs(got.item() - errors[path]["loftq"]) < 1e-4
    model.train()
    out = model(**inputs(), labels=torch.tensor([0, 1, 2]) if kind == "bert" else inputs()["input_ids"])
    out.loss.backward()
    assert all(m.lora_A.weight.grad is not None for m in layers)


def test_residual_init_refuses_a_quantized_base():
    from lorakit.quant.linear import quantize_model
    model = quantize_model(tiny_model("bert"), QuantConfig(kind="nf4"))
    with pytest.raises(ValueError, match="full-precision"):
        add_lora(model, LoraConfig(r=4, target_modules=["query"], init="pissa"))


def test_config_rejects_bad_family_values():
    with pytest.raises(ValueError, match="init='pissa_niter_x'"):
        LoraConfig(init="pissa_niter_x")
    with pytest.raises(ValueError, match="use_dora"):
        LoraConfig(use_dora=True, init="pissa")
    with pytest.raises(ValueError, match="loftq_iter"):
        LoraConfig(loftq_iter=0)
    assert LoraConfig.from_json(LoraConfig(use_dora=True, loftq_iter=3).to_json()).use_dora
