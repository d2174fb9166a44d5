"""Many adapters on one model (adapters/api.py, layers/bank.py): each adapter alone equals a model holding only it, sums
equal the merged sum, deleting one leaves the other bit-identical, save/load both ways in PEFT's multi-adapter
layout, errors."""
from __future__ import annotations

import pytest
import torch

from helpers import inputs, logits, randomize_lora, tiny_model
from lorakit import (LoraConfig, active_adapters, add_lora, adapter_names, delete_adapter, load_adapter,
                     load_adapters, merge_and_unload, merge_lora, save_adapter, save_adapters, set_adapter)
from lorakit.layers.saved_modules import HeadCopies
from lorakit.layers.lora import lora_layers

# two adapters per family with different ranks and different targets
CONFIGS = {
    "bert": (LoraConfig(r=4, alpha=8, target_modules=["query", "value", "word_embeddings"]),
             LoraConfig(r=2, alpha=4, target_modules="all-linear")),
    "gpt2": (LoraConfig(r=4, alpha=8, target_modules=["c_attn"]),
             LoraConfig(r=3, alpha=3, target_modules=["c_attn", "c_fc"])),
    "llama": (LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
              LoraConfig(r=2, alpha=4, target_modules="all-linear")),
}
KINDS = list(CONFIGS)


def _saved_adapters(kind, tmp_path):
    """Two trained-looking adapters saved separately, each from its own fresh model."""
    paths = []
    for i, config in enumerate(CONFIGS[kind]):
        model = add_lora(tiny_model(kind), config)
        randomize_lora(model, seed=10 + i)
        with torch.no_grad():  # a head trained differently by each adapter
            for name in model.lorakit.config.modules_to_save:
                for p in model.get_submodule(name).parameters():
                    p.add_(0.3 * (i + 1))
        paths.append(save_adapter(model, tmp_path / f"ad{i}"))
    return paths


def _alone(kind, path):
    return load_adapter(tiny_model(kind), path).eval()


def _both(kind, a, b):
    """A fresh model holding adapter `a` (in use) and `b` beside it."""
    model = load_adapter(tiny_model(kind), a, name="a")
    return load_adapter(model, b, name="b")


@pytest.mark.parametrize("kind", KINDS)
def test_each_adapter_alone_equals_a_model_holding_only_it(kind, tmp_path):
    a, b = _saved_adapters(kind, tmp_path)
    batch = inputs()
    model = _both(kind, a, b)
    model.eval()
    assert adapter_names(model) == ["a", "b"] and active_adapters(model) == ("a",)  # the first stays in use
    assert torch.equal(logits(model, batch), logits(_alone(kind, a), batch))
    set_adapter(model, "b")
    assert torch.equal(logits(model, batch), logits(_alone(kind, b), batch))
    set_adapter(model, "a")
    assert torch.equal(logits(model, batch), logits(_alone(kind, a), batch))
    if kind == "bert":  # both adapters train the classifier: one copy each, PEFT's in-memory names
        assert isinstance(model.classifier, HeadCopies) and set(model.classifier.modules_to_save) == {"a", "b"}


@pytest.mark.parametrize("kind", KINDS)
def test_two_adapters_in_use_equal_their_merged_sum(kind, tmp_path):
    a, b = _saved_adapters(kind, tmp_path)
    batch = inputs()
    model = _both(kind, a, b)
    set_adapter(model, ["a", "b"]).eval()
    summed = logits(model, batch)
    merge_lora(model)  # W0 + ΔW_a + ΔW_b
    assert torch.allclose(logits(model, batch), summed, atol=1e-4)
    if kind != "bert":  # a chain of two single-adapter merges: the same weights (LMs: no heads to pick)
        chain = merge_and_unload(load_adapter(tiny_model(kind), a))
        chain = merge_and_unload(load_adapter(chain, b)).eval()
        assert torch.allclose(logits(chain, batch), summed, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_deleting_one_leaves_the_other_bit_identical(kind, tmp_path):
    a, b = _saved_adapters(kind, tmp_path)
    batch = inputs()
    model = _both(kind, a, b)
    delete_adapter(model, "a")
    assert adapter_names(model) == ["b"] and active_adapters(model) == ("b",)
    assert torch.equal(logits(model.eval(), batch), logits(_alone(kind, b), batch))
    assert not any(isinstance(m, HeadCopies) for m in model.modules())  # back to one adapter: no copies
    assert not any(".bank." in n or "modules_to_save" in n for n, _ in model.named_parameters())
    save_adapter(model, tmp_path / "again")  # and it saves exactly what it loaded
    assert _tensors(tmp_path / "again") == _tensors(b)
    delete_adapter(model, "b")
    assert not lora_layers(model) and adapter_names(model) == []


def _tensors(path):
    from safetensors.torch import load_file
    return {k: v.tolist() for k, v in load_file(path / "adapter_model.safetensors").items()}


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_both_adapters_round_trip(kind, tmp_path):
    a, b = _saved_adapters(kind, tmp_path)
    model = load_adapter(tiny_model(kind), a)  # "default"
    load_adapter(model, b, name="other")
    save_adapters(model, tmp_path / "both")
    assert (tmp_path / "both" / "adapter_config.json").is_file()
    assert (tmp_path / "both" / "other" / "adapter_config.json").is_file()
    assert _tensors(tmp_path / "both") == _tensors(a)
    assert _tensors(tmp_path / "both" / "other") == _tensors(b)
    again = load_adapters(tiny_model(kind), tmp_path / "both").eval()
    assert adapter_names(again) == ["default", "other"]
    batch = inputs()
    assert torch.equal(logits(again, batch), logits(_alone(kind, a), batch))
    set_adapter(again, "other")
    assert torch.equal(logits(again, batch), logits(_alone(kind, b), batch))


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_peft_multi_adapter_layout_both_ways(kind, tmp_path):
    peft = pytest.importorskip("peft")
    a, b = _saved_adapters(kind, tmp_path)
    ours = load_adapter(tiny_model(kind), a)
    load_adapter(ours, b, name="other")
    save_adapters(ours, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(tiny_model(kind), tmp_path / "ours")
    theirs.load_adapter(tmp_path / "ours" / "other", adapter_name="other")
    batch = inputs()
    for name in ("default", "other"):
        theirs.set_adapter(name)
        set_adapter(ours, name)
        assert torch.allclose(logits(theirs.eval(), batch), logits(ours.eval(), batch), atol=1e-5)
    theirs.save_pretrained(tmp_path / "theirs")  # PEFT's own layout: default at the root, "other" below
    back = load_adapters(tiny_model(kind), tmp_path / "theirs").eval()
    for name in ("default", "other"):
        theirs.set_adapter(name)
        set_adapter(back, name)
        assert torch.allclose(logits(theirs.eval(), batch), logits(back, batch), atol=1e-5)


def test_only_the_adapter_in_use_trains(tmp_path):
    model = add_lora(tiny_model("llama"), CONFIGS["llama"][0], name="a")
    add_lora(model, CONFIGS["llama"][1], name="b")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".bank." not in n for n in trainable)  # "b" is added, not in use
    set_adapter(model, "b")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    layers_b = [p for p, m in lora_layers(model) if "b" in m.adapter_names()]
    assert len(trainable) == 2 * len(layers_b) and all(".bank." not in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    loss = model(**inputs()).logits.square().mean()
    loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {n for n in trainable if "lora_B" in n}  # B = 0 at init, so only B has a gradient yet


def test_errors_name_the_fix():
    model = add_lora(tiny_model("llama"), CONFIGS["llama"][0], name="a")
    with pytest.raises(ValueError, match="already holds an adapter named 'a'"):
        add_lora(model, CONFIGS["llama"][1], name="a")
    with pytest.raises(ValueError, match="no adapter named 'zz' on this model; it holds \\['a'\\]"):
        set_adapter(model, "zz")
    with pytest.raises(ValueError, match="only a model's first adapter"):
        add_lora(model, LoraConfig(init="pissa", target_modules=["q_proj"]), name="p")
    add_lora(model, LoraConfig(use_dora=True, target_modules=["k_proj"]), name="d")
    with pytest.raises(ValueError, match="DoRA adapters are used one at a time"):
        set_adapter(model, ["a", "d"])
    with pytest.raises(ValueError, match="all be DoRA or all plain LoRA"):
        add_lora(model, LoraConfig(target_modules=["k_proj"]), name="plain")
    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge_lora"):
        set_adapter(model, "d")
    with pytest.raises(ValueError, match="several|together"):
        model2 = add_lora(tiny_model("llama"), CONFIGS["llama"][0], name="a")
        add_lora(model2, CONFIGS["llama"][1], name="b")
        save_adapter(set_adapter(model2, ["a", "b"]), "/tmp/never-written")
