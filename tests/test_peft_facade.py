"""lorakit.peft against peft itself, piece by piece, on the same tiny seeded models: the config's fields and
defaults, the classes get_peft_model picks, the printed counts, outputs to 1e-5, files both ways (PEFT's layout,
hub ids from the cache), from_pretrained's eval / frozen state, the state-dict helpers, prepare_model_for_kbit_training,
and that lorakit.peft imports without peft."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import lorakit.peft as lp
from helpers import SRC, inputs, logits, tiny_model
from lorakit.errors import UserError

peft = pytest.importorskip("peft")


def both(kind: str, **config):
    """The same tiny model under peft and under lorakit.peft, every LoRA B set alike by shape (so the adapters
    change the outputs)."""
    models = []
    for lib in (peft, lp):
        model = lib.get_peft_model(tiny_model(kind), lib.LoraConfig(**config))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.1 * torch.sin(torch.arange(p.numel(), dtype=torch.float)).reshape(p.shape))
        models.append(model.eval())
    return models


def test_the_config_has_peft_s_fields_and_defaults():
    ours = {f.name: f for f in dataclasses.fields(lp.LoraConfig)}
    theirs = {f.name: f for f in dataclasses.fields(peft.LoraConfig)}
    missing = sorted(set(theirs) - set(ours) - {"runtime_config"})
    assert not missing, missing
    mine, real = lp.LoraConfig(), peft.LoraConfig()
    for name in theirs:
        if name in ours and name not in ("peft_type", "loftq_config", "runtime_config"):
            assert getattr(mine, name) == getattr(real, name), name
    assert [t.value for t in lp.TaskType] == [t.value for t in peft.TaskType if t.value in {x.value for x in lp.TaskType}]
    assert lp.TaskType.SEQ_CLS == "SEQ_CLS" and isinstance(lp.TaskType.CAUSAL_LM, str)


@pytest.mark.parametrize("field, value", [("use_qalora", True), ("lora_bias", True), ("layer_replication", [[0, 1]]),
                                          ("init_lora_weights", False), ("init_lora_weights", "eva"),
                                          ("trainable_token_indices", [1, 2])])
def test_what_lorakit_does_not_implement_is_refused_in_one_line(field, value):
    with pytest.raises(UserError) as error:
        lp.get_peft_model(tiny_model("llama"), lp.LoraConfig(target_modules=["q_proj"], **{field: value}))
    assert field in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("task, kind", [("SEQ_CLS", "bert"), ("CAUSAL_LM", "llama"), (None, "gpt2")])
def test_the_class_the_count_line_and_the_outputs_are_peft_s(task, kind, capsys):
    theirs, ours = both(kind, task_type=task, r=4, lora_alpha=8)
    assert type(ours).__name__ == type(theirs).__name__
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()
    theirs.print_trainable_parameters()
    ours.print_trainable_parameters()
    first, second = capsys.readouterr().out.splitlines()
    assert first == second and first.startswith("trainable params: ")
    torch.testing.assert_close(logits(ours, inputs()), logits(theirs, inputs()), rtol=1e-5, atol=1e-5)
    assert ours.active_adapter == theirs.active_adapter == "default"
    assert isinstance(ours.peft_config["default"], lp.LoraConfig) and ours.get_base_model() is ours.base_model.model
    assert ours.config is ours.get_base_model().config  # other attributes come from the base model, as in PEFT


def test_every_task_type_has_its_class():
    for task in lp.TaskType:
        model = lp.get_peft_model(tiny_model("llama"), lp.LoraConfig(task_type=task, target_modules=["q_proj"]))
        assert type(model).__name__ == type(peft.get_peft_model(
            tiny_model("llama"), peft.LoraConfig(task_type=task.value, target_modules=["q_proj"]))).__name__


def test_files_both_ways_in_peft_s_layout(tmp_path):
    theirs, ours = both("bert", task_type="SEQ_CLS", r=4, lora_alpha=8)
    ours.add_adapter("other", lp.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["key"]))
    theirs.add_adapter("other", peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["key"]))
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "tokenizer.json").write_text("{}")  # files already there stay, as with PEFT
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    for sub in ("", "other"):
        keys = [sorted(load_file(tmp_path / d / sub / "adapter_model.safetensors")) for d in ("ours", "theirs")]
        assert keys[0] == keys[1]
    assert (tmp_path / "ours" / "tokenizer.json").is_file()
    reread = peft.PeftModel.from_pretrained(tiny_model("bert"), tmp_path / "ours").eval()
    torch.testing.assert_close(logits(reread, inputs()), logits(theirs, inputs()), rtol=1e-5, atol=1e-5)
    loaded = lp.PeftModel.from_pretrained(tiny_model("bert"), tmp_path / "theirs")
    assert type(loaded).__name__ == "PeftModelForSequenceClassification"
    torch.testing.assert_close(logits(loaded, inputs()), logits(theirs, inputs()), rtol=1e-5, atol=1e-5)
    ours.save_pretrained(tmp_path / "one", selected_adapters=["other"])
    assert sorted(os.listdir(tmp_path / "one")) == ["other"]


@pytest.mark.parametrize("is_trainable", [False, True])
def test_from_pretrained_is_eval_and_frozen_unless_trainable(tmp_path, is_trainable):
    theirs, _ = both("llama", r=4, target_modules=["q_proj", "v_proj"])
    theirs.save_pretrained(tmp_path)
    loaded = [lib.PeftModel.from_pretrained(tiny_model("llama").train(), tmp_path, is_trainable=is_trainable)
              for lib in (peft, lp)]
    assert [m.training for m in loaded] == [is_trainable] * 2
    assert loaded[1].get_nb_trainable_parameters() == loaded[0].get_nb_trainable_parameters()


def test_a_hub_id_is_read_from_the_cache_offline(tmp_path, monkeypatch):
    theirs, _ = both("llama", r=4, target_modules=["q_proj"])
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-adapter"
    theirs.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    # HF_HOME's hub cache, offline (huggingface_hub, transformers' own dependency, read these at its import)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = lp.PeftModel.from_pretrained(tiny_model("llama"), "someone/tiny-adapter", revision="main")
    torch.testing.assert_close(logits(loaded, inputs()), logits(theirs, inputs()), rtol=1e-5, atol=1e-5)


def test_auto_classes_load_the_base_named_in_the_adapter(tmp_path):
    base = tiny_model("bert")
    base.save_pretrained(tmp_path / "base")
    theirs = peft.get_peft_model(type(base).from_pretrained(tmp_path / "base"),
                                 peft.LoraConfig(task_type="SEQ_CLS", r=4, init_lora_weights=False)).eval()
    theirs.save_pretrained(tmp_path / "adapter")
    ours = lp.AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "adapter")
    real = peft.AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "adapter")
    assert type(ours).__name__ == type(real).__name__ and not ours.training
    torch.testing.assert_close(logits(ours, inputs()), logits(real, inputs()), rtol=1e-5, atol=1e-5)


def test_adapter_names_in_forward_mix_adapters_per_row_as_peft_does(tmp_path):
    models = []
    for lib in (peft, lp):
        model = lib.get_peft_model(tiny_model("llama"), lib.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
                                   adapter_name="a")
        model.add_adapter("b", lib.LoraConfig(r=2, target_modules=["v_proj"]))
        models.append(model)
    for name in ("a", "b"):
        for model in models:
            model.set_adapter(name)
        with torch.no_grad():
            for (_, p), (_, q) in zip(*[[(n, p) for n, p in m.named_parameters() if "lora_B" in n and p.requires_grad]
                                         for m in models]):
                p.copy_(0.1 * torch.sin(torch.arange(p.numel(), dtype=torch.float)).reshape(p.shape))
                q.copy_(p)
    rows = ["a", "__base__", "b"]
    out = [m.eval()(**inputs(), adapter_names=rows).logits.detach() for m in models]
    torch.testing.assert_close(out[1], out[0], rtol=1e-5, atol=1e-5)


def test_state_dict_helpers_give_peft_s_keys_and_values():
    theirs, ours = both("bert", task_type="SEQ_CLS", r=4, modules_to_save=["pooler.dense"])
    real, mine = peft.get_peft_model_state_dict(theirs), lp.get_peft_model_state_dict(ours)
    assert sorted(mine) == sorted(real)
    for key in real:
        torch.testing.assert_close(mine[key], real[key])
    fresh = lp.get_peft_model(tiny_model("bert"), lp.LoraConfig(task_type="SEQ_CLS", r=4, modules_to_save=["pooler.dense"]))
    result = lp.set_peft_model_state_dict(fresh, real)
    assert not result.unexpected_keys and not result.missing_keys
    torch.testing.assert_close(logits(fresh.eval(), inputs()), logits(theirs, inputs()), rtol=1e-5, atol=1e-5)


def test_prepare_model_for_kbit_training_as_peft_does():
    prepared = [lib.prepare_model_for_kbit_training(tiny_model("llama").to(torch.bfloat16)) for lib in (peft, lp)]
    described = [[(n, p.dtype, p.requires_grad) for n, p in m.named_parameters()] for m in prepared]
    assert described[0] == described[1]


def test_lorakit_peft_imports_without_peft():
    code = ("import sys; sys.modules['peft'] = None\n"
            "import torch, transformers, lorakit.peft as lp\n"
            "m = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=32, hidden_size=16, "
            "num_hidden_layers=1, num_attention_heads=2, intermediate_size=20))\n"
            "m = lp.get_peft_model(m, lp.LoraConfig(r=2, target_modules=['q_proj']))\n"
            "m.print_trainable_parameters()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trainable params: 64 ||" in proc.stdout


def test_a_trainer_checkpoint_is_the_adapter_and_peft_reads_it(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = lp.get_peft_model(tiny_model("bert"), lp.LoraConfig(task_type="SEQ_CLS", r=4))
    batch = inputs(batch=8)
    data = Dataset.from_dict({**{k: v.tolist() for k, v in batch.items()}, "labels": [0, 1, 2] * 2 + [0, 1]})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, save_steps=2,
                             report_to=[], use_cpu=True, disable_tqdm=True, learning_rate=1e-2)
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data)
    trainer.train()
    assert trainer.label_names == ["labels"] and "eval_loss" in trainer.evaluate()
    checkpoint = tmp_path / "checkpoint-2"
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(os.listdir(checkpoint))
    assert "model.safetensors" not in os.listdir(checkpoint)
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"adapter_model.safetensors"}
    reread = peft.PeftModel.from_pretrained(tiny_model("bert"), checkpoint).eval()
    torch.testing.assert_close(logits(reread, batch), logits(model.eval(), batch), rtol=1e-5, atol=1e-5)
