"""modules_to_save names as the file's PEFT release matched them: PEFT 0.22's rule (the path is the name or ends
with "." + name) for new files, the bare path end for files of PEFT < 0.22 and lorakit files without a peft_version."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import inputs, logits, randomize_lora, tiny_model
from lorakit import LoraConfig, add_lora, load_adapter, save_adapter
from lorakit.config import saves_by_bare_suffix

peft = pytest.importorskip("peft")

ALL_NORMS = ["model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm",
             "model.layers.1.input_layernorm", "model.layers.1.post_attention_layernorm", "model.norm"]


def _trained(to_save):
    model = add_lora(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                     modules_to_save=to_save))
    randomize_lora(model)
    with torch.no_grad():  # a trained copy of every saved module, not the base weights
        for name, p in model.named_parameters():
            if "norm" in name and p.requires_grad:
                p.add_(torch.linspace(0.1, 0.5, p.numel()).view_as(p))
    return model.eval()


def _saved_as(tmp_path, to_save, file_names, peft_version):
    """An adapter trained with `to_save` whose config says modules_to_save=file_names, written by `peft_version`."""
    model = _trained(to_save)
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["modules_to_save"] = file_names
    config.pop("peft_version")
    if peft_version is not None:
        config["peft_version"] = peft_version
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    return model


@pytest.mark.parametrize("version, bare", [(None, True), ("0.17.1", True), ("0.21.3", True), ("0.22.0", False),
                                           ("0.22.0.dev0@0123abc", False), ("0.23.1", False), ("1.0.0", False)])
def test_which_rule_a_version_follows(version, bare):
    assert saves_by_bare_suffix(version) is bare


def test_norm_saves_only_model_norm_as_peft_022_does():
    ours = add_lora(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["norm"]))
    theirs = peft.get_peft_model(tiny_model("llama"), peft.LoraConfig(r=4, target_modules=["q_proj"],
                                                                      modules_to_save=["norm"]))
    trained = sorted(n for n, p in ours.named_parameters() if p.requires_grad and "norm" in n)
    assert trained == ["model.norm.weight"]
    assert ours.num_parameters(only_trainable=True) == theirs.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("version", [None, "0.18.0"])
def test_an_older_file_loads_every_module_its_rule_saved(tmp_path, version):
    trained = _saved_as(tmp_path, ALL_NORMS, ["norm"], version)
    batch = inputs()
    again = load_adapter(tiny_model("llama"), tmp_path).eval()
    assert sorted(again.lorakit.config.modules_to_save) == ALL_NORMS
    assert torch.equal(logits(again, batch), logits(trained, batch))


def test_a_022_file_loads_only_model_norm(tmp_path):
    trained = _saved_as(tmp_path, ["norm"], ["norm"], "0.22.0")
    again = load_adapter(tiny_model("llama"), tmp_path).eval()
    assert again.lorakit.config.modules_to_save == ("norm",)
    assert torch.equal(logits(again, inputs()), logits(trained, inputs()))


def test_an_older_file_saved_again_means_the_same_to_peft_022(tmp_path):
    trained = _saved_as(tmp_path / "old", ALL_NORMS, ["norm"], None)
    save_adapter(load_adapter(tiny_model("llama"), tmp_path / "old"), tmp_path / "new")
    written = json.loads((tmp_path / "new" / "adapter_config.json").read_text())
    assert written["peft_version"] == "0.22.0" and sorted(written["modules_to_save"]) == ALL_NORMS
    theirs = peft.PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "new").eval()
    assert (logits(theirs, inputs()) - logits(trained, inputs())).abs().max() <= 1e-5
