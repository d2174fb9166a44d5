"""PEFT-format adapter files: save -> load bit-exact, PEFT parity both ways, errors, atomic writes."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import KINDS, inputs, logits, randomize_lora, tiny_model
from lorakit import LoraConfig, add_lora, load_adapter, save_adapter

peft = pytest.importorskip("peft")

TARGETS = {
    "bert": ["query", "value", "word_embeddings"],
    "distilbert": ["q_lin", "v_lin", "lin1"],
    "roberta": "all-linear",
    "gpt2": ["c_attn", "c_proj"],
    "llama": "all-linear",
}


def _adapted(kind, **extra):
    model = add_lora(tiny_model(kind), LoraConfig(r=4, alpha=8, target_modules=TARGETS[kind], **extra))
    randomize_lora(model)
    with torch.no_grad():  # a trained head, not the random init
        for name in model.lorakit.config.modules_to_save:
            for p in model.get_submodule(name).parameters():
                p.add_(0.3)
    return model.eval()


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_bit_exact(kind, tmp_path):
    model = _adapted(kind)
    batch = inputs()
    expected = logits(model, batch)
    save_adapter(model, tmp_path / "a")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    again = load_adapter(tiny_model(kind), tmp_path / "a").eval()
    assert torch.equal(logits(again, batch), expected)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, dict(again.named_parameters())[name])


@pytest.mark.parametrize("kind", KINDS)
def test_peft_loads_ours(kind, tmp_path):
    model = _adapted(kind)
    batch = inputs()
    ours = logits(model, batch)
    save_adapter(model, tmp_path)
    keys = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.") for k in keys)
    theirs = peft.PeftModel.from_pretrained(tiny_model(kind), tmp_path).eval()
    assert (logits(theirs, batch) - ours).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_we_load_peft(kind, tmp_path):
    task = "SEQ_CLS" if kind in ("bert", "distilbert", "roberta") else "CAUSAL_LM"
    cfg = peft.LoraConfig(task_type=task, r=4, lora_alpha=8, target_modules=TARGETS[kind], init_lora_weights=False)
    theirs = peft.get_peft_model(tiny_model(kind), cfg).eval()
    theirs.save_pretrained(tmp_path)
    batch = inputs()
    expected = logits(theirs, batch)
    ours = load_adapter(tiny_model(kind), tmp_path).eval()
    assert (logits(ours, batch) - expected).abs().max() <= 1e-5


def test_bias_and_rank_pattern_parity(tmp_path):
    model = _adapted("bert", bias="lora_only", rank_pattern={"value": 2}, alpha_pattern={"query": 4})
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.base_layer.bias.add_(1.0)
    batch = inputs()
    ours = logits(model, batch)
    save_adapter(model, tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_model("bert"), tmp_path).eval()
    assert (logits(theirs, batch) - ours).abs().max() <= 1e-5
    again = load_adapter(tiny_model("bert"), tmp_path).eval()
    assert torch.equal(logits(again, batch), ours)


def test_target_inside_the_head_loads_in_peft(tmp_path):
    """`dense` matches RoBERTa's classifier.dense too: the head is saved in full, without LoRA or base_layer keys,
    so PEFT reads the file (it raised KeyError on classifier.dense.base_layer.weight before) and both agree."""
    model = add_lora(tiny_model("roberta"), LoraConfig(r=2, alpha=4, target_modules=["dense"]))
    randomize_lora(model)
    with torch.no_grad():
        model.classifier.out_proj.weight.normal_()  # a trained head
    batch = inputs()
    expected = logits(model.eval(), batch)
    save_adapter(model, tmp_path)
    assert not [k for k in load_file(str(tmp_path / "adapter_model.safetensors")) if "base_layer" in k]
    theirs = peft.PeftModel.from_pretrained(tiny_model("roberta"), tmp_path).eval()
    assert (logits(theirs, batch) - expected).abs().max() <= 1e-5
    assert torch.equal(logits(load_adapter(tiny_model("roberta"), tmp_path).eval(), batch), expected)


def test_config_file_fields(tmp_path):
    model = _adapted("gpt2")
    save_adapter(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["fan_in_fan_out"] is True
    assert sorted(cfg["target_modules"]) == ["c_attn", "c_proj"]


def test_unknown_fields_warn_once(tmp_path, caplog):
    model = _adapted("bert")
    save_adapter(model, tmp_path)
    path = tmp_path / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg["some_future_field"] = 1
    cfg["another_one"] = "x"
    path.write_text(json.dumps(cfg))
    with caplog.at_level(logging.WARNING):
        load_adapter(tiny_model("bert"), tmp_path)
    warnings = [r for r in caplog.records if "some_future_field" in r.getMessage()]
    assert len(warnings) == 1 and "another_one" in warnings[0].getMessage()


def test_shape_mismatch_names_module_and_shapes(tmp_path):
    model = _adapted("bert")
    save_adapter(model, tmp_path)
    path = tmp_path / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg["base_model_name_or_path"] = "some/other-model"
    path.write_text(json.dumps(cfg))
    state = load_file(str(tmp_path / "adapter_model.safetensors"))
    key = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"
    state[key] = torch.zeros(4, 48)
    save_file(state, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match=r"layer\.0\.attention\.self\.query.*\(4, 48\).*\(4, 32\).*some/other-model"):
        load_adapter(tiny_model("bert"), tmp_path)


def test_refuses_empty_and_missing(tmp_path):
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_adapter(tiny_model("bert"), tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(tiny_model("bert"), tmp_path)
    assert not (tmp_path / "x").exists()


def test_save_is_atomic_and_replaces(tmp_path, monkeypatch):
    model = _adapted("bert")
    save_adapter(model, tmp_path / "a")
    first = (tmp_path / "a" / "adapter_model.safetensors").read_bytes()
    import lorakit.io.peft_format as adapter_mod

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(adapter_mod, "save_file", boom)
    with pytest.raises(OSError):
        save_adapter(model, tmp_path / "a")
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() == first  # the old adapter survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temporary left behind


@pytest.mark.parametrize("init, recorded", [("kaiming", True), ("gaussian", "gaussian"), ("normal_1_over_r", False)])
def test_init_recorded_as_peft_reads_it(tmp_path, init, recorded):
    """init_lora_weights says what PEFT would write for the init (false: lorakit's N(0, 1/r), no PEFT name); PEFT
    loads every one of them, and lorakit reads the init back."""
    model = add_lora(tiny_model("bert"), LoraConfig(r=2, alpha=4, target_modules=["query"], init=init))
    randomize_lora(model)
    batch = inputs()
    save_adapter(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["init_lora_weights"] == recorded
    theirs = peft.PeftModel.from_pretrained(tiny_model("bert"), tmp_path).eval()
    assert (logits(theirs, batch) - logits(model.eval(), batch)).abs().max() <= 1e-5
    assert load_adapter(tiny_model("bert"), tmp_path).lorakit.config.init == init
