"""Injection into tiny random models: the invariants of DESIGN.md, target matching, trainability, errors."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from helpers import KINDS, inputs, logits, randomize_lora, tiny_model
from lorakit import (LoraConfig, LoRALinear, add_lora, disable_lora, lora_layers, merge_and_unload, merge_lora,
                     parameter_report, unmerge_lora)
from lorakit.inject.targets import find_targets

ALL = {"target_modules": "all-linear"}


def with_lora(kind: str):
    """A tiny model of kind with fresh LoRA on every linear layer, a batch, and the base model's logits on it."""
    model = tiny_model(kind)
    batch = inputs()
    base = logits(model, batch)
    add_lora(model, LoraConfig(r=4, alpha=8, **ALL))
    return model, batch, base


@pytest.mark.parametrize("kind", KINDS)
def test_b_zero_is_base_model(kind):
    model, batch, base = with_lora(kind)
    assert torch.equal(logits(model, batch), base)


@pytest.mark.parametrize("kind", KINDS)
def test_merged_unmerged_unloaded_disabled(kind):
    model, batch, base = with_lora(kind)
    randomize_lora(model)
    adapted = logits(model, batch)
    assert (adapted - base).abs().max() > 1e-3  # the adapters do something
    with disable_lora(model):
        torch.testing.assert_close(logits(model, batch), base, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(model, batch), adapted, rtol=0, atol=0)
    merge_lora(model)
    torch.testing.assert_close(logits(model, batch), adapted, rtol=1e-5, atol=1e-5)
    merge_lora(model)  # twice: no change
    torch.testing.assert_close(logits(model, batch), adapted, rtol=1e-5, atol=1e-5)
    with disable_lora(model):  # disabling a merged model still gives the base
        torch.testing.assert_close(logits(model, batch), base, rtol=1e-5, atol=1e-5)
    unmerge_lora(model)
    torch.testing.assert_close(logits(model, batch), adapted, rtol=1e-5, atol=1e-5)
    plain = merge_and_unload(model)
    assert not lora_layers(plain) and not hasattr(plain, "lorakit")
    assert not any(isinstance(m, LoRALinear) for m in plain.modules())
    torch.testing.assert_close(logits(plain, batch), adapted, rtol=1e-5, atol=1e-5)


def test_merge_and_unload_save_pretrained_roundtrip(tmp_path):
    import transformers as tf
    model = tiny_model("bert")
    add_lora(model, LoraConfig(r=4, alpha=8, **ALL))
    randomize_lora(model)
    batch = inputs()
    adapted = logits(model, batch)
    merge_and_unload(model).save_pretrained(tmp_path)
    again = tf.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(again, batch), adapted, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_optimizer_step_moves_only_adapter(kind):
    model = tiny_model(kind)
    add_lora(model, LoraConfig(r=4, alpha=8, dropout=0.1, **ALL))
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    heads = set(model.lorakit.config.modules_to_save)
    for name in trainable:
        assert "lora_" in name or name.split(".")[0] in heads, name
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = inputs()
    out = model(**batch, labels=batch["input_ids"] if kind in ("gpt2", "llama") else torch.tensor([0, 1, 1]))
    out.loss.backward()
    opt.step()
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p)
        if name in trainable and "lora_A" not in name and "lora_embedding_A" not in name:
            assert changed, f"{name} should have moved"
        if name not in trainable:
            assert not changed, f"{name} is frozen but moved"


def test_toggles_resolve_per_architecture():
    expect = {
        "bert": {"query", "value", "attention.output.dense", "intermediate.dense", "output.dense"},
        "distilbert": {"q_lin", "v_lin", "out_lin", "lin1", "lin2"},
        "gpt2": {"c_attn", "c_proj", "c_fc"},
        "llama": {"q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    }
    for kind, names in expect.items():
        paths = find_targets(tiny_model(kind), ("query", "value", "projection", "mlp"))
        got = {p.split("layer.")[-1].split("layers.")[-1].split("h.")[-1].split(".", 1)[-1] for p in paths}
        leaves = {p.rsplit(".", 1)[-1] for p in paths}
        assert leaves <= {n.rsplit(".", 1)[-1] for n in names}, (kind, got)
    bert_paths = find_targets(tiny_model("bert"), ("mlp",))
    assert not any("attention.output" in p for p in bert_paths)  # MLP output only, not the attention projection
    assert len(bert_paths) == 4
    assert find_targets(tiny_model("roberta"), ("head",)) == ["classifier.dense", "classifier.out_proj"]
    assert find_targets(tiny_model("distilbert"), ("head",)) == ["pre_classifier", "classifier"]


def test_all_linear_excludes_heads():
    for kind, head in [("bert", "classifier"), ("gpt2", "lm_head"), ("llama", "lm_head")]:
        paths = find_targets(tiny_model(kind), "all-linear")
        assert paths and not any(p == head or p.startswith(head + ".") for p in paths)
    assert "bert.pooler.dense" in find_targets(tiny_model("bert"), "all-linear")
    # PEFT's rule leaves out the output layer itself; the layers inside RoBERTa's head, which trains in full, get
    # no LoRA from add_lora
    assert "classifier.dense" in find_targets(tiny_model("roberta"), "all-linear")
    model = add_lora(tiny_model("roberta"), LoraConfig(target_modules="all-linear"))
    assert not any(p.startswith("classifier") for p, _ in lora_layers(model))


def test_regex_exclude_layers_and_patterns():
    model = tiny_model("bert")
    regex = r"bert\.encoder\.layer\.\d+\.attention\.self\.(query|key)"
    assert len(find_targets(model, regex)) == 4
    assert find_targets(model, ("query",), layers=(1,)) == ["bert.encoder.layer.1.attention.self.query"]
    assert len(find_targets(model, "all-linear", exclude=("key", "value"))) == len(find_targets(model, "all-linear")) - 4
    add_lora(model, LoraConfig(r=4, alpha=8, target_modules=("query", "value"), rank_pattern={"value": 2},
                               alpha_pattern={r"layer\.1\.attention\.self\.query": 32}))
    layers = dict(lora_layers(model))
    assert layers["bert.encoder.layer.0.attention.self.value"].r == 2
    assert layers["bert.encoder.layer.0.attention.self.query"].scaling == 2.0
    assert layers["bert.encoder.layer.1.attention.self.query"].scaling == 8.0


def test_plain_torch_module():
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    add_lora(mlp, LoraConfig(r=2, alpha=4, target_modules=["0", "2"]))
    assert isinstance(mlp[0], LoRALinear) and isinstance(mlp[2], LoRALinear)
    assert mlp.lorakit.config.modules_to_save == ()
    trainable = [n for n, p in mlp.named_parameters() if p.requires_grad]
    assert trainable == ["0.lora_A.weight", "0.lora_B.weight", "2.lora_A.weight", "2.lora_B.weight"]


def test_heads_always_train_in_full_as_in_peft():
    """PEFT's rule: the task head trains in full whatever modules_to_save says (it is added to them); DistilBERT's
    pre_classifier too (PEFT matches head names as path suffixes without a dot)."""
    model = add_lora(tiny_model("distilbert"), LoraConfig(target_modules=["q_lin"]))
    assert set(model.lorakit.config.modules_to_save) == {"classifier", "pre_classifier"}
    assert model.classifier.weight.requires_grad and model.pre_classifier.weight.requires_grad
    model = add_lora(tiny_model("bert"), LoraConfig(target_modules=["query"], modules_to_save=("pooler",)))
    assert model.lorakit.config.modules_to_save == ("pooler", "classifier")
    assert model.classifier.weight.requires_grad and model.bert.pooler.dense.weight.requires_grad
    lm = add_lora(tiny_model("llama"), LoraConfig(target_modules="all-linear"))
    assert lm.lorakit.config.modules_to_save == ()


def test_target_inside_the_head_is_left_to_the_full_copy():
    """`dense` also names RoBERTa's classifier.dense: the head trains in full and gets no LoRA (PEFT's rule)."""
    model = add_lora(tiny_model("roberta"), LoraConfig(target_modules=["dense"]))
    adapted = [p for p, _ in lora_layers(model)]
    assert adapted and not any(p.startswith("classifier") for p in adapted)
    assert model.classifier.dense.weight.requires_grad and model.classifier.out_proj.weight.requires_grad
    with pytest.raises(ValueError, match="lies inside modules_to_save"):
        add_lora(tiny_model("bert"), LoraConfig(target_modules=["head"]))


def test_bias_options():
    model = add_lora(tiny_model("bert"), LoraConfig(target_modules=["query"], bias="lora_only"))
    biases = [n for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")]
    assert sorted(biases) == ["bert.encoder.layer.0.attention.self.query.base_layer.bias",
                              "bert.encoder.layer.1.attention.self.query.base_layer.bias", "classifier.bias"]
    model = add_lora(tiny_model("bert"), LoraConfig(target_modules=["query"], bias="all"))
    assert all(p.requires_grad for n, p in model.named_parameters() if n.endswith("bias"))


def test_errors():
    with pytest.raises(ValueError, match=r"matched no module.*attention\.self\.query"):
        add_lora(tiny_model("bert"), LoraConfig(target_modules=["nope"]))
    with pytest.raises(ValueError, match="r=0"):
        LoraConfig(r=0)
    with pytest.raises(ValueError, match="alpha=-1"):
        LoraConfig(alpha=-1)
    with pytest.raises(ValueError, match="dropout=1.0"):
        LoraConfig(dropout=1.0)
    with pytest.raises(ValueError, match="toggles"):
        add_lora(nn.Sequential(nn.Linear(2, 2)), LoraConfig(target_modules=["query"]))
    model = add_lora(tiny_model("bert"), LoraConfig())
    with pytest.raises(ValueError, match="already holds an adapter named .default."):
        add_lora(model, LoraConfig())


def test_config_json_roundtrip():
    cfg = LoraConfig(r=4, alpha=8, target_modules=["query", "value"], rank_pattern={"value": 2},
                     layers_to_transform=[0, 1], modules_to_save=["classifier"], use_rslora=True)
    again = LoraConfig.from_json(cfg.to_json())
    assert again == cfg and hash(again) == hash(cfg)
    assert LoraConfig.from_json(LoraConfig(target_modules="all-linear").to_json()).target_modules == "all-linear"
    with pytest.raises(ValueError, match="unknown field"):
        LoraConfig.from_dict({"rank": 4})


def test_parameter_report():
    model = add_lora(tiny_model("bert"), LoraConfig(r=4, target_modules=["query", "value"]))
    rep = parameter_report(model)
    lora = 2 * 2 * (4 * 32 + 32 * 4)  # 2 layers x (query, value) x (A + B)
    head = 32 * 3 + 3
    assert rep.trainable == lora + head
    assert rep.total == sum(p.numel() for p in model.parameters())
    assert "lora_A" in rep.table() and "trainable%" in rep.summary()


def test_default_targets_are_logged_as_lorakits_default(caplog):
    """No target_modules: the one default (config.DEFAULT_TARGETS) is used and a log line names it; targets given,
    or read back from a file, log nothing."""
    import logging

    from lorakit.config import DEFAULT_TARGETS

    with caplog.at_level(logging.INFO, logger="lorakit.config"):
        default = LoraConfig()
        assert default.target_modules == DEFAULT_TARGETS == ("query", "value")
        (line,) = [r.getMessage() for r in caplog.records]
        assert "('query', 'value')" in line and "lorakit's default" in line
        caplog.clear()
        LoraConfig(target_modules=["query", "value"])
        LoraConfig.from_json(default.to_json())
        assert not caplog.records


def test_parameter_report_prints_peft_line():
    """str(report) is PEFT's print_trainable_parameters line, what a PEFT user prints."""
    rep = parameter_report(add_lora(tiny_model("bert"), LoraConfig(r=4, target_modules=["query", "value"])))
    assert str(rep) == f"{rep}" == rep.summary()
    assert re.fullmatch(r"trainable params: [\d,]+ \|\| all params: [\d,]+ \|\| trainable%: \d+\.\d{4}", str(rep))


def test_one_set_of_lora_defaults():
    """TrainConfig's LoRA defaults are LoraConfig's (PEFT's: r 8, alpha 8, kaiming init of A)."""
    from lorakit.training.config import DEFAULT_LR, TrainConfig
    ours, train = LoraConfig(), TrainConfig().lora_config()
    assert (ours.r, ours.alpha, ours.init, ours.dropout) == (8, 8.0, "kaiming", 0.0)
    assert (train.r, train.alpha, train.init, train.dropout, train.use_rslora) == \
        (ours.r, ours.alpha, ours.init, ours.dropout, ours.use_rslora)
    assert DEFAULT_LR["lora"] == 1e-3  # re-tuned for the kaiming init (benchmarks/results/accuracy.md, SST-2)
