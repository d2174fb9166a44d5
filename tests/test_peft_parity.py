"""PEFT as the oracle on the silent differences (tracker issue 29): each test builds the same model in lorakit and in
PEFT and compares what PEFT's user would see: outputs (to 1e-5), trainable names and counts, merge exactness, the
mode and trainability a loaded adapter comes back in, what a disabled adapter computes."""
from __future__ import annotations

import logging
import re

import pytest
import torch
import transformers as tf

from helpers import inputs, logits, tiny_classifier
from lorakit import LoraConfig, add_lora, disable_lora, load_adapter, merge_and_unload, save_adapter

peft = pytest.importorskip("peft")


def normalized(name: str) -> str:
    """PEFT's parameter name as lorakit names it."""
    name = name.removeprefix("base_model.model.")
    name = name.replace(".modules_to_save.default.", ".").replace(".default.", ".")
    return re.sub(r"\.default$", "", name)


def trainable(model) -> dict[str, int]:
    return {normalized(n): p.numel() for n, p in model.named_parameters() if p.requires_grad}


def perturb(model, seed: int = 3) -> None:
    """Seeded noise on every trainable tensor (in name order, so lorakit and PEFT models get the same)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda item: normalized(item[0])):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


def bert_adapter(path, dropout: float = 0.1):
    """A saved lorakit adapter on the tiny BERT classifier (dropout live in training), trainable tensors perturbed."""
    model = add_lora(tiny_classifier("bert"), LoraConfig(r=4, alpha=8, dropout=dropout, target_modules=["query"]))
    perturb(model)
    save_adapter(model, path)
    return model


# --- 5: a loaded adapter is for inference unless is_trainable=True ------------------------------------------------

def test_load_adapter_is_eval_and_frozen_like_peft(tmp_path):
    bert_adapter(tmp_path / "a")
    theirs = peft.PeftModel.from_pretrained(tiny_classifier("bert").train(), tmp_path / "a")
    ours = load_adapter(tiny_classifier("bert").train(), tmp_path / "a")
    assert not theirs.training and not any(m.training for m in theirs.modules())
    assert not any(m.training for m in ours.modules())
    assert trainable(ours) == trainable(theirs) == {}
    batch = inputs()
    assert torch.equal(logits(ours, batch), logits(ours, batch))  # dropout off
    assert (logits(ours, batch) - logits(theirs, batch)).abs().max() <= 1e-5


def test_load_adapter_is_trainable_like_peft(tmp_path):
    bert_adapter(tmp_path / "a")
    theirs = peft.PeftModel.from_pretrained(tiny_classifier("bert"), tmp_path / "a", is_trainable=True)
    ours = load_adapter(tiny_classifier("bert"), tmp_path / "a", is_trainable=True)
    assert trainable(ours) == trainable(theirs) and trainable(ours)
    assert sum(trainable(ours).values()) == theirs.get_nb_trainable_parameters()[0]


# --- 6: disable_lora also puts the base model's head back --------------------------------------------------------

def test_disable_lora_computes_the_base_head_like_peft(tmp_path):
    ours = bert_adapter(tmp_path / "a", dropout=0.0).eval()
    theirs = peft.PeftModel.from_pretrained(tiny_classifier("bert").eval(), tmp_path / "a")
    batch = inputs()
    base = logits(tiny_classifier("bert").eval(), batch)
    with disable_lora(ours):
        disabled = logits(ours, batch)
    with theirs.disable_adapter():
        peft_disabled = logits(theirs, batch)
    assert (peft_disabled - base).abs().max() <= 1e-6
    assert (disabled - base).abs().max() <= 1e-6
    assert (logits(ours, batch) - logits(theirs, batch)).abs().max() <= 1e-5  # the trained head is back after


def test_disable_lora_with_two_adapters_computes_the_base_head(tmp_path):
    ours = bert_adapter(tmp_path / "a", dropout=0.0).eval()
    add_lora(ours, LoraConfig(r=2, target_modules=["value"]), name="b")
    batch = inputs()
    with disable_lora(ours):
        disabled = logits(ours, batch)
    assert (disabled - logits(tiny_classifier("bert").eval(), batch)).abs().max() <= 1e-6
