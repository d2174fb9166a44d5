"""Mixed-adapter batches (adapters/api.py mixed_batch, layers/mixed.py): row i computes with its own adapter in one
batched forward, equal row by row to the per-adapter batches, to the base model for None rows, and to PEFT's
adapter_names=."""
from __future__ import annotations

import pytest
import torch

from helpers import inputs, logits, randomize_lora, tiny_model
from lorakit import LoraConfig, add_lora, disable_lora, mixed_batch, save_adapter, set_adapter

RANKS = (4, 2, 8, 3)  # four adapters of different ranks (padded to 8 in the batched matmuls)
TARGETS = {"bert": ["query", "value", "dense", "word_embeddings"], "gpt2": ["c_attn", "c_proj"],
           "llama": "all-linear"}
NAMES = ["a0", "a1", "a2", "a3"]


def _four_adapters(kind):
    model = tiny_model(kind)
    for i, (name, r) in enumerate(zip(NAMES, RANKS)):
        targets = TARGETS[kind] if i != 3 else (TARGETS[kind][:1] if kind != "llama" else ["q_proj"])
        add_lora(model, LoraConfig(r=r, alpha=2 * r, target_modules=targets), name=name)
    randomize_lora(model, scale=0.3)
    with torch.no_grad():  # each adapter's own copy of the task head (BERT)
        for name, p in model.named_parameters():
            if ".modules_to_save." in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_mixed_batch_equals_the_per_adapter_batches_row_by_row(kind):
    model = _four_adapters(kind)
    rows = ["a2", None, "a0", "a3", "a1", "a2", None, "a1"]
    batch = inputs(batch=len(rows), seed=4)
    expected = []
    for i, name in enumerate(rows):
        if name is None:
            with disable_lora(model):
                full = logits(model, batch)
        else:
            set_adapter(model, name)
            full = logits(model, batch)
        expected.append(full[i])
    set_adapter(model, "a0")
    with mixed_batch(model, rows):
        mixed = logits(model, batch)
    for i, name in enumerate(rows):
        if kind == "bert" and name is None:
            continue  # the base model's task head is not kept (the first adapter trained it in place)
        assert torch.allclose(mixed[i], expected[i], atol=1e-5), (i, name)
    assert torch.equal(logits(model, batch), logits(set_adapter(model, "a0"), batch))  # plan gone after the block


def test_generate_in_a_mixed_batch_equals_each_adapter_alone():
    model = _four_adapters("llama")
    prompts = torch.randint(3, 99, (4, 6), generator=torch.Generator().manual_seed(5))
    rows = ["a1", "a3", None, "a0"]
    with mixed_batch(model, rows):
        mixed = model.generate(input_ids=prompts, max_new_tokens=6, do_sample=False, pad_token_id=0)
    for i, name in enumerate(rows):
        if name is None:
            with disable_lora(model):
                alone = model.generate(input_ids=prompts[i:i + 1], max_new_tokens=6, do_sample=False, pad_token_id=0)
        else:
            set_adapter(model, name)
            alone = model.generate(input_ids=prompts[i:i + 1], max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(mixed[i], alone[0]), (i, name)


def test_peft_adapter_names_gives_the_same_rows(tmp_path):
    peft = pytest.importorskip("peft")
    model = _four_adapters("llama")
    theirs = None
    for name in NAMES:
        set_adapter(model, name)
        save_adapter(model, tmp_path / name)
        if theirs is None:
            theirs = peft.PeftModel.from_pretrained(tiny_model("llama"), tmp_path / name, adapter_name=name)
        else:
            theirs.load_adapter(tmp_path / name, adapter_name=name)
    rows = ["a3", "a0", "__base__", "a2", "a1", "a0"]
    batch = inputs(batch=len(rows), seed=6)
    with torch.no_grad():
        peft_logits = theirs.eval()(**batch, adapter_names=rows).logits
    with mixed_batch(model, [None if r == "__base__" else r for r in rows]):
        ours = logits(model, batch)
    assert torch.allclose(ours, peft_logits, atol=1e-5)


def test_mixed_batch_refuses_what_it_cannot_do():
    model = _four_adapters("llama")
    with pytest.raises(ValueError, match="no adapter named 'zz'"):
        with mixed_batch(model, ["a0", "zz"]):
            pass
    model.train()
    with pytest.raises(ValueError, match="model.eval"):
        with mixed_batch(model, ["a0", "a1"]):
            pass
    model.eval()
    with pytest.raises(ValueError, match="2 adapter names but the batch has 3 rows"):
        with mixed_batch(model, ["a0", "a1"]):
            model(**inputs(batch=3))
