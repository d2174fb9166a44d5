"""QLoRA: LoRA on a quantized base is the same layer on a QuantLinear, and behaves like LoRA on the dequantized weight."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import inputs, logits, randomize_lora, tiny_model
from lorakit import LoraConfig, QuantConfig, add_lora, load_adapter, merge_and_unload, merge_lora, save_adapter
from lorakit.layers.lora import LoRALinear
from lorakit.quant.linear import QuantLinear, quantize_model

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
        for name in qmodel.lorakit.config.modules_to_save:
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


# ---------------------------------------------------------------- the autograd node: gradients and what it saves

QUANT_CONFIGS = [
    QuantConfig(kind="nf4", double_quant=True, block_size=32),
    QuantConfig(kind="fp4", double_quant=False),
    QuantConfig(kind="int8"),
    QuantConfig(kind="int8", int8_blockwise=True),
]
QUANT_IDS = ["nf4-dq", "fp4", "int8-row", "int8-block"]


def _saved_tensors(fn) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every tensor autograd saves for backward while fn() runs, and fn's result."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return saved, out


@pytest.mark.parametrize("config", QUANT_CONFIGS, ids=QUANT_IDS)
def test_quant_linear_gradients_equal_linear_on_dequantized(config):
    torch.manual_seed(0)
    layer = QuantLinear.from_linear(nn.Linear(96, 40), config)
    layer.bias.requires_grad_(True)  # as with LoRA bias="all"
    x = torch.randn(3, 5, 96, requires_grad=True)
    g = torch.randn(3, 5, 40)
    gx, gb = torch.autograd.grad(layer(x), (x, layer.bias), g)
    x_ref, w, b = x.detach().requires_grad_(), layer.dequantize(), layer.bias.detach().requires_grad_()
    gx_ref, gb_ref = torch.autograd.grad(nn.functional.linear(x_ref, w, b), (x_ref, b), g)
    assert torch.allclose(gx, gx_ref, atol=1e-6) and torch.allclose(gb, gb_ref, atol=1e-6)
    layer.bias.requires_grad_(False)  # frozen bias: no gradient computed for it
    layer(x).backward(g)
    assert layer.bias.grad is None


@pytest.mark.parametrize("config", QUANT_CONFIGS, ids=QUANT_IDS)
def test_quant_linear_saves_codes_not_a_dense_weight(config):
    layer = QuantLinear.from_linear(nn.Linear(256, 128), config)
    x = torch.randn(4, 256, requires_grad=True)
    saved, _ = _saved_tensors(lambda: layer(x))
    saved_bytes = sum(t.numel() * t.element_size() for t in saved)
    assert saved_bytes == layer.storage_bytes()  # exactly the codes and constants: the layer's own buffers
    assert all(any(t is b for b in layer.buffers()) for t in saved)
    assert saved_bytes < 128 * 256 * 4 / 3  # against 131072 bytes for the fp32 weight


def test_qlora_layer_saves_no_dense_weight():
    """LoRA over a QuantLinear keeps what LoRA over nn.Linear keeps, minus the weight: no (out, in) float tensor."""
    torch.manual_seed(0)
    base = QuantLinear.from_linear(nn.Linear(256, 128), QuantConfig(kind="nf4"))
    layer = LoRALinear(base, r=4, alpha=8, dropout=0.1).train()
    x = torch.randn(4, 256, requires_grad=True)
    saved, _ = _saved_tensors(lambda: layer(x))
    floats = [t for t in saved if t.is_floating_point() and not any(t is b for b in base.buffers())]
    assert not any(t.numel() >= 128 * 256 for t in floats)
    assert sum(t.numel() * t.element_size() for t in floats) < 20_000  # x (4 KB), A, B, x·Aᵀ


@pytest.mark.parametrize("p", [0.0, 0.1])
@pytest.mark.parametrize("config", QUANT_CONFIGS[:3], ids=QUANT_IDS[:3])
def test_qlora_node_equals_fused_lora_on_dequantized_weight(config, p):
    """The QLoRA node computes what fused.lora_linear computes with the dequantized weight (same dropout mask)."""
    torch.manual_seed(0)
    qlayer = LoRALinear(QuantLinear.from_linear(nn.Linear(48, 24), config), r=4, alpha=8, dropout=p).train()
    dense = nn.Linear(48, 24)
    with torch.no_grad():
        dense.weight.copy_(qlayer.base_layer.dequantize())
        dense.bias.copy_(qlayer.base_layer.bias)
        nn.init.normal_(qlayer.lora_B.weight)
    layer = LoRALinear(dense, r=4, alpha=8, dropout=p).train()
    layer.load_state_dict({k: v for k, v in qlayer.state_dict().items() if k.startswith("lora_")}, strict=False)
    x = torch.randn(2, 7, 48)
    g = torch.randn(2, 7, 24)
    grads = []
    for module in (qlayer, layer):
        xi = x.clone().requires_grad_()
        torch.manual_seed(5)  # the same dropout mask in both
        out = module(xi)
        out.backward(g)
        grads.append((out, xi.grad, module.lora_A.weight.grad, module.lora_B.weight.grad))
    for ours, ref in zip(*grads):
        assert torch.allclose(ours, ref, atol=1e-5)


def test_qlora_general_path_for_other_dtypes():
    """A bfloat16 compute dtype with fp32 adapters takes the plain-ops path and still trains A and B."""
    torch.manual_seed(0)
    base = QuantLinear.from_linear(nn.Linear(64, 32), QuantConfig(kind="nf4", compute_dtype="bfloat16"))
    layer = LoRALinear(base, r=4, alpha=8)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(5, 64, requires_grad=True)
    out = layer(x)
    ref = nn.functional.linear(x.bfloat16(), base.dequantize().bfloat16(), base.bias.bfloat16()).float()
    ref = ref + layer.scaling * (x @ layer.lora_A.weight.t() @ layer.lora_B.weight.t())
    assert out.dtype == torch.float32 and (out - ref).abs().max() < 0.05
    out.sum().backward()
    assert x.grad is not None and layer.lora_A.weight.grad.abs().sum() > 0


def test_qlora_training_follows_lora_on_the_dequantized_twin():
    """A few AdamW steps of QLoRA and of LoRA on nn.Linear layers holding the dequantized weights: same trajectory."""
    qmodel = quantize_model(tiny_model("bert"), QuantConfig(kind="nf4", block_size=32))
    twin = _dequantized_twin(qmodel, "bert")
    cfg = LoraConfig(r=4, alpha=8, target_modules="all-linear", bias="lora_only")
    models = [add_lora(qmodel, cfg).train(), add_lora(twin, cfg).train()]
    with torch.no_grad():
        twin.load_state_dict(qmodel.state_dict(), strict=False)  # same adapters, head and biases
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2) for m in models]
    batch = {**inputs(), "labels": torch.tensor([0, 1, 2])}
    for _ in range(3):
        for model, opt in zip(models, opts):
            torch.manual_seed(0)  # the same hidden-dropout masks in both
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
    trained = dict(twin.named_parameters())
    for name, p in qmodel.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p, trained[name], atol=1e-4), name


def test_qlora_gpt2_merges_back_into_conv1d_and_round_trips(tmp_path):
    """GPT-2 stores Conv1D weights (in, out): the merged model gets Conv1D layers back, LoRA or not, and
    save_pretrained / from_pretrained reproduces its logits (a Linear in a Conv1D's place would load transposed)."""
    import transformers as tf
    from transformers.pytorch_utils import Conv1D

    model = quantize_model(tiny_model("gpt2"), QuantConfig(kind="nf4", block_size=32))
    add_lora(model, LoraConfig(r=4, alpha=8, target_modules=["c_attn"]))  # c_proj, c_fc stay quantized, no LoRA
    randomize_lora(model, scale=0.05)
    batch = inputs()
    expected = logits(model, batch)
    merged = merge_and_unload(model)
    assert not any(isinstance(m, (QuantLinear, LoRALinear)) for m in merged.modules())
    assert all(isinstance(merged.get_submodule(f"transformer.h.0.{n}"), Conv1D)
               for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    assert (logits(merged, batch) - expected).abs().max() <= 1e-5
    merged.save_pretrained(tmp_path)
    reloaded = type(merged).from_pretrained(tmp_path)
    assert isinstance(reloaded, tf.PreTrainedModel)
    assert (logits(reloaded, batch) - expected).abs().max() <= 1e-5
