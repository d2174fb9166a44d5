"""The cheap CPU dropout: torch's distribution and gradient, and the models' outputs unchanged where nothing drops."""
from __future__ import annotations

import pytest
import torch
import transformers.integrations.sdpa_attention as sdpa_module
from torch import nn
from transformers.models.llama.modeling_llama import LlamaAttention

from helpers import KINDS, inputs, tiny_model
from lorakit import LoraConfig, add_lora
from lorakit.layers.dropout import ATTENTION, FastDropout, dropout, fast_dropout


def test_drop_rate_scale_and_mean_match_inverted_dropout():
    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 0.5
    out = dropout(x, 0.1, training=True)
    kept = out != 0
    assert abs(1 - kept.float().mean().item() - 0.1) < 0.002  # P(drop) = 6554/65536 = 0.100006
    scale = 65536 / (65536 - 6554)
    torch.testing.assert_close(out[kept], x[kept] * scale)
    assert abs(out.mean().item() / x.mean().item() - 1) < 0.003  # E[out] = x
    rows = kept.float().mean(1)  # no structure across the 16-bit lanes of one 64-bit draw
    assert rows.min() > 0.85 and rows.max() < 0.95
    lanes = kept.view(-1, 4).float().mean(0)
    assert (lanes - 0.9).abs().max() < 0.003


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(0)
    x = torch.randn(64, 33, requires_grad=True)
    w = torch.randn(64, 33)
    out = dropout(x, 0.3, training=True)
    (out * w).sum().backward()
    scale = 65536 / (65536 - round(0.3 * 65536))
    torch.testing.assert_close(x.grad, (out != 0).float() * w * scale)


def test_identity_in_eval_mode_and_at_p_zero_and_seeded():
    x = torch.randn(5, 7)
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0, training=True) is x
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))
    layer = FastDropout(0.25)
    assert layer.p == 0.25 and "p=0.25" in repr(layer)
    torch.manual_seed(3)
    a = layer(x)
    torch.manual_seed(3)
    assert torch.equal(a, layer(x))


def _near_zero_dropout(model: nn.Module) -> None:
    """p = 1e-6 rounds to no drop at all (and scale 1): train mode must then give the eval-mode outputs."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 1e-6
        if isinstance(module, LlamaAttention):  # no dropout layer: a float it passes to sdpa
            module.attention_dropout = 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_unchanged_when_nothing_drops(kind):
    model = tiny_model(kind)
    batch = inputs()
    with torch.no_grad():
        reference = model(**batch).logits
    _near_zero_dropout(model)
    swapped = fast_dropout(model)
    assert (swapped > 0) == (kind != "llama") and not any(type(m) is nn.Dropout for m in model.modules())
    assert model.config._attn_implementation == ATTENTION
    model.train()
    torch.manual_seed(0)  # llama's attention (4 query heads on 2 key heads) stays with torch's sdpa and dropout
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference, atol=1e-5, rtol=1e-5)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference)  # eval: transformers' sdpa call, untouched


def test_bert_attention_takes_the_explicit_path_in_training(monkeypatch):
    model = tiny_model("bert")
    add_lora(model, LoraConfig(target_modules=["query", "value"]))
    fast_dropout(model)

    def refuse(*args, **kwargs):
        raise AssertionError("attention went to sdpa with dropout on")

    monkeypatch.setattr(sdpa_module, "sdpa_attention_forward", refuse)
    model.train()
    torch.manual_seed(0)
    out = model(**inputs()).logits
    out.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_B" in n)
    torch.manual_seed(0)
    assert torch.equal(model(**inputs()).logits, out)  # seeded: the same masks again
    torch.manual_seed(1)
    assert not torch.equal(model(**inputs()).logits, out)  # dropout is on


def test_fast_dropout_is_idempotent_and_leaves_plain_modules_alone():
    model = tiny_model("bert")
    first = fast_dropout(model)
    assert first == sum(isinstance(m, FastDropout) for m in model.modules()) and fast_dropout(model) == 0
    mlp = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2), nn.Linear(4, 2))
    assert fast_dropout(mlp) == 1 and isinstance(mlp[1], FastDropout) and mlp[1].p == 0.2
